"""`ternary inspect PATH [--json]`: what a checkpoint holds and what each export of it would weigh.

Reports: the manifest check (OK or the exact error), a config summary (with every model option off its
default), parameter counts, for every ternary weight the code distribution (fractions of -1 / 0 / +1
from shared.spec.ternary.quantize on the latent weights) and its scale statistics, the overall code
entropy (bits per ternary weight), and sizes: float32 and bf16 tensor data, 2-bit packing
(shared.spec.ternary.pack_2bit layout: ceil(out/4) rows) + fp16 scales + bf16 other parameters, the
tensor data of the hf-bitnet and gguf TQ2_0 / TQ1_0 exports (convert/formats/hf_bitnet.py,
convert/formats/gguf_export.py; n/a where they refuse the model), and the packed artifact of
convert/formats/packed.py (base-3 + fp16, compressed as `convert --to packed` compresses by default,
and with --floats int8 when the model has float matrices): estimated by default (packed_estimate.py:
exact raw sizes and header, the compression ratio from a sample of each section; seconds at
Qwen3-0.6B's size), built in memory and measured with packed="measure" (`inspect --measure`).
The tensors are read one at a time (lazy_weights.py), each once.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared.spec.checkpoint import CheckpointError, verify_manifest
from shared.spec.options import non_default
from shared.spec.params import float_matrices, parameter_specs, ternary_parameters
from shared.spec.ternary import quantize


def _entropy(fracs) -> float:
    return float(-sum(p * math.log2(p) for p in fracs if p > 0))


PACKED_MODES = ("estimate", "measure", "skip")  # how inspect sizes the packed file (module docstring)


def inspect(path: str | Path, packed: str = "estimate") -> dict[str, Any]:
    """The report (module docstring). `packed`: "estimate" (packed_estimate.py), "measure" (build
    the files in memory) or "skip" (no packed sizes)."""
    from convert.common import checkpoint_dir
    from convert.formats.lazy_weights import open_weights
    if packed not in PACKED_MODES:
        raise ValueError(f"packed={packed!r}: expected one of {', '.join(PACKED_MODES)}")
    path = checkpoint_dir(path)
    report: dict[str, Any] = {"path": str(path)}
    try:
        verify_manifest(path)
        report["manifest"] = "OK"
    except CheckpointError as e:
        report["manifest"] = f"ERROR: {e}"
        return report
    config, weights = open_weights(path, verify=False)  # verified above; the tensors are read one at a time, each checked for NaN/inf
    m, t = config.model, config.ternary
    report["config"] = {
        "architecture": m.model_type,
        "layers": m.num_hidden_layers, "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size, "hidden_act": m.hidden_act,
        "heads": m.num_attention_heads, "kv_heads": m.num_key_value_heads, "vocab_size": m.vocab_size,
        "tie_word_embeddings": m.tie_word_embeddings, "qk_norm": m.qk_norm,
        "ternary": t.enabled, "group_size": t.group_size, "targets": list(t.targets),
        "activation_bits": t.activation_bits,
        "options": {o.key: getattr(m, o.key) for o in non_default(m)},  # every model option off its default
    }
    tern = ternary_parameters(config)
    sizes = {k: math.prod(v) for k, v in weights.shapes.items()}
    n_total, n_tern = sum(sizes.values()), sum(sizes[n] for n in tern)
    by_role: dict[str, int] = {}
    for name, spec in parameter_specs(config.model).items():
        by_role[spec.role] = by_role.get(spec.role, 0) + sizes[name]
    report["parameters"] = {"total": n_total, "ternary": n_tern, "float": n_total - n_tern, "by_role": by_role}
    estimates = _estimators(config) if packed == "estimate" else []
    report["ternary_weights"], report["codes"], n_scales, two_bit = _code_statistics(config, weights, tern, estimates)
    report["sizes_bytes"] = _sizes(config, weights, n_total, n_total - n_tern, n_scales, two_bit, packed,
                                   [e.result() for e in estimates])
    return report


def _estimators(config) -> list:
    from convert.formats.packed_estimate import PackedEstimate
    return [PackedEstimate(config, "fp16")] + ([PackedEstimate(config, "int8")] if float_matrices(config) else [])


def _code_statistics(config, weights, tern: list[str], estimates: list) -> tuple[list, dict, int, int]:
    """(per ternary weight: code fractions and scale statistics, overall code fractions and
    entropy, number of scales, bytes of 2-bit codes). One pass over the tensors, each read once and
    also handed to the packed-size estimates."""
    from convert.formats.packed import pack_tensor
    t, tern_set, matrices = config.ternary, set(tern), set(float_matrices(config))
    per, counts, n_scales, two_bit = [], np.zeros(3, np.int64), 0, 0
    for name, spec in parameter_specs(config.model).items():
        w = weights[name]
        if name not in tern_set:
            for e in estimates:
                e.add(name, w)
            continue
        q, s = quantize(w, t.group_size, t.eps)
        if estimates:  # packed once, with these codes, for both estimates
            packed = pack_tensor(config, name, spec, w, tern_set, matrices, "fp16", None, len(per), (q, s))
            for e in estimates:
                e.add(name, w, packed)
        c = np.bincount((q.reshape(-1) + 1).astype(np.int64), minlength=3)
        counts += c
        n_scales += s.size
        two_bit += ((q.shape[0] + 3) // 4) * q.shape[1]
        per.append({"name": name, "shape": list(q.shape),
                    "codes": {"-1": float(c[0] / q.size), "0": float(c[1] / q.size), "+1": float(c[2] / q.size)},
                    "scale": {"count": int(s.size), "min": float(s.min()), "mean": float(s.mean()),
                              "max": float(s.max())}})
    total_codes = int(counts.sum())
    fr = counts / total_codes if total_codes else np.zeros(3)
    codes = {"-1": float(fr[0]), "0": float(fr[1]), "+1": float(fr[2]),
             "entropy_bits_per_weight": _entropy(fr) if total_codes else None}
    return per, codes, n_scales, two_bit


def _sizes(config, weights, n_total: int, n_float: int, n_scales: int, two_bit: int, packed: str,
           estimates: list[dict]) -> dict[str, Any]:
    """Bytes of the model in each format and export (None where an export refuses it)."""
    sz: dict[str, Any] = {"float32": 4 * n_total, "bf16": 2 * n_total,
                          "packed_2bit": two_bit + 2 * n_scales + 2 * n_float}
    # tensor data of the stock-tool exports; None where that export refuses this model
    from convert.formats import hf_bitnet as export_bitnet
    from convert.formats import gguf_export as export_gguf
    sz["hf_bitnet"] = export_bitnet.tensor_bytes(config)
    sz["gguf_tq2_0"] = export_gguf.tensor_bytes(config, "TQ2_0")
    sz["gguf_tq1_0"] = export_gguf.tensor_bytes(config, "TQ1_0")
    if packed == "measure":
        estimates = _measure(config, weights)
    for key, e in zip(("packed_base3", "packed_base3_int8"), estimates):
        sz[key] = e["bytes"]
        sz[key + "_detail"] = {"measured": packed == "measure", **{k: v for k, v in e.items() if k != "bytes"}}
    return sz


def _measure(config, weights) -> list[dict]:
    """The packed files of `convert --to packed` (and with --floats int8), built in memory."""
    from convert.formats.packed import pack
    out = []
    for floats in ("fp16", "int8") if float_matrices(config) else ("fp16",):
        _, st = pack(config, weights, "auto", measure_codes=floats == "fp16", floats=floats)
        out.append({"bytes": st.bytes, "header_bytes": st.header_bytes, "payload_bytes": st.payload_bytes,
                    "raw_payload_bytes": st.raw_payload, "compression": st.compression,
                    "bits_per_ternary_weight": st.bits_per_ternary_weight if st.ternary_weights else None,
                    "code_bits_per_weight_compressed": st.code_bits_per_weight_compressed})
    return out


def format_report(r: dict[str, Any]) -> str:
    from convert.common import human
    lines = [f"checkpoint {r['path']}", f"  manifest:   {r['manifest']}"]
    if "config" not in r:
        return "\n".join(lines)
    c, p = r["config"], r["parameters"]
    tern = (f"ternary {', '.join(c['targets'])} (group {c['group_size'] or 'per tensor'}"
            + (f", {c['activation_bits']}-bit activations" if c["activation_bits"] else "") + ")"
            if c["ternary"] else "ternary off")
    lines += [
        f"  model:      {c['architecture']}, {c['layers']} layers x {c['hidden_size']}, "
        f"{c['heads']}/{c['kv_heads']} heads, MLP {c['intermediate_size']} {c['hidden_act']}, "
        f"vocab {c['vocab_size']}, {'tied' if c['tie_word_embeddings'] else 'untied'} head; {tern}",
        f"  parameters: {human(p['total'])} total, {human(p['ternary'])} ternary, {human(p['float'])} float; "
        + ", ".join(f"{role} {human(n)}" for role, n in p["by_role"].items()),
    ]
    if c["options"]:  # a factored embedding, a vocab bias, ...: the model line alone would hide them
        lines.insert(-1, "  options:    " + ", ".join(f"{k}={v!r}" for k, v in c["options"].items()))
    if r["ternary_weights"]:
        lines.append(f"  {'ternary weight':<40} {'shape':>12} {'-1':>6} {'0':>6} {'+1':>6}   "
                     f"{'scale min':>9} {'mean':>9} {'max':>9}")
        for w in r["ternary_weights"]:
            cd, s = w["codes"], w["scale"]
            lines.append(f"  {w['name']:<40} {'x'.join(map(str, w['shape'])):>12} {cd['-1']:6.3f} {cd['0']:6.3f} "
                         f"{cd['+1']:6.3f}   {s['min']:9.3g} {s['mean']:9.3g} {s['max']:9.3g}")
        cd = r["codes"]
        lines.append(f"  codes:      -1 {cd['-1']:.3f}, 0 {cd['0']:.3f}, +1 {cd['+1']:.3f}; entropy "
                     f"{cd['entropy_bits_per_weight']:.4f} bits/weight (log2 3 = {math.log2(3):.4f})")
    s = r["sizes_bytes"]
    lines.append("  sizes:")
    lines.append(f"    float32 checkpoint (tensor data)       {s['float32']:>14,d} B")
    lines.append(f"    bf16 checkpoint (tensor data)          {s['bf16']:>14,d} B")
    lines.append(f"    2-bit ternary + fp16 scales + bf16     {s['packed_2bit']:>14,d} B")
    for key, label in (("hf_bitnet", "hf-bitnet: 2-bit packed + float32      "),
                       ("gguf_tq2_0", "gguf TQ2_0 + f16 floats + f32 norms    "),
                       ("gguf_tq1_0", "gguf TQ1_0 + f16 floats + f32 norms    ")):
        if key in s:
            lines.append(f"    {label} " + (f"{s[key]:>14,d} B" if s[key] is not None
                                            else f"{'n/a':>14}   (this model cannot be exported so; see convert --help)"))
    for key, label in (("packed_base3", "base-3 + fp16 (convert packed)"),
                       ("packed_base3_int8", "same, --floats int8 (float matrices)")):
        if key not in s:
            continue
        d = s[key + "_detail"]
        how = "measured" if d["measured"] else "estimated"
        extra = ""
        if p["ternary"] and d["bits_per_ternary_weight"] is not None:
            extra = f"; {d['bits_per_ternary_weight']:.3f} bits/ternary weight"
            if d.get("code_bits_per_weight_compressed") is not None:
                extra += f", codes alone {d['code_bits_per_weight_compressed']:.3f}"
        lines.append(f"    {label:<38} {s[key]:>14,d} B  ({how}, {d['compression']}{extra})")
    return "\n".join(lines)


def to_json(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)
