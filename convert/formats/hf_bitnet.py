"""`ternary convert SRC --to hf-bitnet --out DIR`: a Qwen3 directory for transformers' BitNet quantizer.

Layout (transformers 5, `transformers/integrations/bitnet.py`, linear_class "autobitlinear",
quantization_mode "offline"):
    config.json       hf_config(...) + "quantization_config": {"quant_method": "bitnet",
                      "linear_class": "autobitlinear", "quantization_mode": "offline",
                      "use_rms_norm": false, "modules_to_not_convert": [the float nn.Linear modules]}
    model.safetensors every ternary nn.Linear `X.weight` as uint8 (ceil(out/4), in), 4 codes + 1 per byte
                      along the output dim (shared.spec.ternary.pack_2bit == transformers' pack_weights), and
                      `X.weight_scale` float32 of shape (1,); everything else float32 as stored.
AutoBitLinear (offline) computes y = F.linear(ActQuant(x), codes) * weight_scale: the scale MULTIPLIES
and its buffer has shape (1,), so only one scale per tensor fits (ternary.group_size = 0). A per-row
scale of shape (out,) is refused by from_pretrained ("Reinit due to size mismatch - ckpt:
torch.Size([64]) vs model: torch.Size([1])"), and with ignore_mismatched_sizes it would silently
become 1: grouped scales are refused here, per-row ones included.
ActQuant is always on: 8-bit per-token absmax, round half to even, clamp [-128, 127], eps 1e-5 -- the
same as our ternary.activation_bits = 8 (shared.spec.ternary.quantize_activations). A checkpoint without
activation quantization is exported anyway (same weights), with a warning that the exported
model's outputs differ from ours by that activation rounding.
Ternary linears are AutoBitLinear (packed); a ternary embedding is stored dequantized (q * s) as a
float embedding, which is exact since the lookup has no activation quantization; with tied
embeddings the head reads that float matrix, so a ternary tied head with activation_bits is refused.
Written atomically (a temporary sibling folder renamed to DIR), with the marker ternary_export.json
(convert/formats/replace.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from convert.formats.hf_export import _read, _staged, _tokenizer_files, check_expressible, hf_config
from convert.formats.hf_tokenizer import write_files
from convert.formats.replace import check_dir_out
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import parameter_shapes, parameter_specs
from shared.spec.ternary import pack_2bit, quantize

QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                       "quantization_mode": "offline", "use_rms_norm": False}
ACT_WARNING = ("this checkpoint has no activation quantization (ternary.activation_bits unset) but transformers' "
               "AutoBitLinear always quantizes linear-layer inputs to 8 bits per token, so the exported model's "
               "outputs differ from this checkpoint's by that rounding (lossy); train with "
               "ternary.activation_bits=8 for an exact match")


def check_qwen3_shape(config: RunConfig, fmt: str) -> None:
    """check_expressible without the activation rule (the quantized formats handle activations themselves)."""
    t = dataclasses.replace(config.ternary, activation_bits=None)
    check_expressible(dataclasses.replace(config, ternary=t), fmt)


def _linear_modules(config: RunConfig) -> list[str]:
    """Module names of every nn.Linear in transformers' Qwen3ForCausalLM (lm_head included even when tied)."""
    names = [n[:-len(".weight")] for n, s in parameter_specs(config.model).items() if s.target in ("attn", "mlp")]
    return names + ["lm_head"]


def plan(config: RunConfig, tern: set[str]) -> tuple[set[str], list[str], list[str]]:
    """(weights stored as packed AutoBitLinear, modules_to_not_convert, warnings); refuses what cannot be expressed."""
    fmt = "hf-bitnet"
    check_qwen3_shape(config, fmt)
    t, m = config.ternary, config.model
    if not tern:
        raise ConfigError(f"--to {fmt}: this checkpoint has no ternary weights (ternary disabled); "
                          "use --to hf for a float export")
    if t.group_size != 0:
        raise ConfigError(
            f"--to {fmt}: ternary.group_size = {t.group_size} (one scale per {t.group_size} inputs) cannot be "
            "stored: transformers' AutoBitLinear has a single weight_scale of shape (1,) per linear layer, "
            "and from_pretrained rejects a per-row (out,) scale as a size mismatch. Only per-tensor scales "
            "(ternary.group_size = 0) are exportable; use --to hf (float) or --to gguf instead")
    tied_head_ternary = m.tie_word_embeddings and "model.embed_tokens.weight" in tern
    if tied_head_ternary and t.activation_bits:
        raise ConfigError(
            f"--to {fmt}: a ternary tied embedding/head with ternary.activation_bits = {t.activation_bits} cannot be "
            "expressed: the tied head would read the float embedding without activation quantization")
    packed = {n + ".weight" for n in _linear_modules(config) if n + ".weight" in tern}
    shapes = parameter_shapes(m)
    odd = [f"{n} (out {shapes[n][0]})" for n in sorted(packed) if shapes[n][0] % 4]
    if odd:
        raise ConfigError(f"--to {fmt}: packing puts 4 output rows in a byte and transformers only unpacks "
                          f"weights whose output size is a multiple of 4: {', '.join(odd)}")
    skip = [n for n in _linear_modules(config) if n + ".weight" not in packed]
    warnings = [] if t.activation_bits else [ACT_WARNING]
    return packed, skip, warnings


def to_hf_bitnet(src: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """The checkpoint `src` as a transformers BitNet (AutoBitLinear, offline, 2-bit packed) Qwen3 at `out`."""
    from shared.spec.checkpoint import save_safetensors
    check_dir_out(Path(out), src, "hf-bitnet", force)  # before the work
    config, weights, tern = _read(src)
    packed, skip, warnings = plan(config, tern)
    eps = config.ternary.eps
    tensors: dict[str, np.ndarray] = {}
    for name in parameter_shapes(config.model):
        w = weights[name]
        if name in packed:
            q, s = quantize(w, 0, eps)
            tensors[name] = pack_2bit(q)
            tensors[name[:-len("weight")] + "weight_scale"] = s.reshape(1).astype(np.float32)
        elif name in tern:  # ternary embedding: exact as floats (no activation quantization on a lookup)
            q, s = quantize(w, 0, eps)
            tensors[name] = (q.astype(np.float32) * s.reshape(())).astype(np.float32)
        else:
            tensors[name] = np.ascontiguousarray(w, np.float32)
    cfg = hf_config(config)
    cfg["quantization_config"] = dict(QUANTIZATION_CONFIG, modules_to_not_convert=skip)
    tok_files, tok_note = _tokenizer_files(config)
    out = Path(out)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({"do_sample": False}) + "\n")
        save_safetensors(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_files(tok_files, tmp)

    _staged(out, force, write, "hf-bitnet", src)
    return {"out": str(out), "tensors": len(tensors), "ternary": len(tern), "packed": len(packed),
            "tokenizer": tok_note, "warnings": warnings,
            "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}


def tensor_bytes(config: RunConfig) -> int | None:
    """Bytes of tensor data an hf-bitnet export would hold (None when it refuses this config)."""
    from shared.spec.params import ternary_parameters
    tern = set(ternary_parameters(config))
    try:
        packed, _, _ = plan(config, tern)
    except ConfigError:
        return None
    n = 0
    for name, shape in parameter_shapes(config.model).items():
        size = int(np.prod(shape))
        n += ((shape[0] + 3) // 4) * shape[1] + 4 if name in packed else 4 * size
    return n
