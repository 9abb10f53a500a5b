"""`ternary inspect PATH [--json]`: what a checkpoint holds and what each export of it would weigh.

Reports: the manifest check (OK or the exact error), a config summary (with every model option off its
default), parameter counts, for every ternary weight the code distribution (fractions of -1 / 0 / +1
from shared.spec.ternary.quantize on the latent weights) and its scale statistics, the overall code
entropy (bits per ternary weight), and sizes: float32 and bf16 tensor data, 2-bit packing
(shared.spec.ternary.pack_2bit layout: ceil(out/4) rows) + fp16 scales + bf16 other parameters, the
tensor data of the hf-bitnet and gguf TQ2_0 / TQ1_0 exports (convert/formats/hf_bitnet.py,
convert/formats/gguf_export.py; n/a where they refuse the model), and the packed artifact of
convert/formats/packed.py (base-3 + fp16 + LZMA, and with --floats int8 when the model has float
matrices), built in memory to measure it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared.spec.checkpoint import (MODEL_FILE, CheckpointError, check_finite, check_tensor_set, read_config,
                                   read_safetensors, verify_manifest)
from shared.spec.options import non_default
from shared.spec.params import float_matrices, parameter_shapes, parameter_specs, ternary_parameters
from shared.spec.ternary import quantize


def _entropy(fracs) -> float:
    return float(-sum(p * math.log2(p) for p in fracs if p > 0))


def inspect(path: str | Path, measure_packed: bool = True) -> dict[str, Any]:
    from convert.common import checkpoint_dir
    path = checkpoint_dir(path)
    report: dict[str, Any] = {"path": str(path)}
    try:
        verify_manifest(path)
        report["manifest"] = "OK"
    except CheckpointError as e:
        report["manifest"] = f"ERROR: {e}"
        return report
    config = read_config(path)
    weights = read_safetensors(path / MODEL_FILE)
    check_tensor_set(parameter_shapes(config.model), {k: v.shape for k, v in weights.items()}, str(path / MODEL_FILE))
    check_finite(weights, str(path / MODEL_FILE))  # the code statistics of NaN are noise: refused like everywhere
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
    sizes = {k: int(v.size) for k, v in weights.items()}
    n_total, n_tern = sum(sizes.values()), sum(sizes[n] for n in tern)
    by_role: dict[str, int] = {}
    for name, spec in parameter_specs(config.model).items():
        by_role[spec.role] = by_role.get(spec.role, 0) + sizes[name]
    report["parameters"] = {"total": n_total, "ternary": n_tern, "float": n_total - n_tern, "by_role": by_role}
    report["ternary_weights"], report["codes"], n_scales, two_bit = _code_statistics(weights, tern, t)
    report["sizes_bytes"] = _sizes(config, weights, tern, n_total, n_total - n_tern, n_scales, two_bit,
                                   measure_packed)
    return report


def _code_statistics(weights: dict[str, np.ndarray], tern: list[str], t) -> tuple[list, dict, int, int]:
    """(per ternary weight: code fractions and scale statistics, overall code fractions and
    entropy, number of scales, bytes of 2-bit codes)."""
    per, counts, n_scales, two_bit = [], np.zeros(3, np.int64), 0, 0
    for name in tern:
        q, s = quantize(weights[name], t.group_size, t.eps)
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


def _sizes(config, weights: dict[str, np.ndarray], tern: list[str], n_total: int, n_float: int, n_scales: int,
           two_bit: int, measure_packed: bool) -> dict[str, Any]:
    """Bytes of the model in each format and export (None where an export refuses it)."""
    from convert.formats.packed import pack
    sz: dict[str, Any] = {"float32": 4 * n_total, "bf16": 2 * n_total,
                          "packed_2bit": two_bit + 2 * n_scales + 2 * n_float}
    # tensor data of the stock-tool exports; None where that export refuses this model
    from convert.formats import hf_bitnet as export_bitnet
    from convert.formats import gguf_export as export_gguf
    sz["hf_bitnet"] = export_bitnet.tensor_bytes(config)
    sz["gguf_tq2_0"] = export_gguf.tensor_bytes(config, "TQ2_0")
    sz["gguf_tq1_0"] = export_gguf.tensor_bytes(config, "TQ1_0")
    if measure_packed:
        blob, st = pack(config, weights, "lzma")
        sz["packed_base3_lzma"] = st.bytes
        sz["packed_bits_per_ternary_weight"] = st.bits_per_ternary_weight
        sz["packed_code_bits_per_weight_compressed"] = st.code_bits_per_weight_compressed
        if float_matrices(config):  # float matrices: int8 changes them
            _, st8 = pack(config, weights, "lzma", measure_codes=False, floats="int8")
            sz["packed_base3_int8_lzma"] = st8.bytes
            sz["packed_int8_bits_per_ternary_weight"] = st8.bits_per_ternary_weight
    return sz


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
    if "packed_base3_lzma" in s:
        extra = f"  ({s['packed_bits_per_ternary_weight']:.3f} bits/ternary weight"
        if s.get("packed_code_bits_per_weight_compressed") is not None:
            extra += f"; codes alone {s['packed_code_bits_per_weight_compressed']:.3f}"
        lines.append(f"    base-3 + fp16 + LZMA (convert packed)  {s['packed_base3_lzma']:>14,d} B"
                     + (extra + ")" if p["ternary"] else ""))
    if "packed_base3_int8_lzma" in s:
        lines.append(f"    same, --floats int8 (float matrices)   {s['packed_base3_int8_lzma']:>14,d} B"
                     + (f"  ({s['packed_int8_bits_per_ternary_weight']:.3f} bits/ternary weight)"
                        if p["ternary"] else ""))
    return "\n".join(lines)


def to_json(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)
