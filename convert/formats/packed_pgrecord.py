"""`--artifact pg-record`: the packed file stores what parameter-golf's ternary record stores
(records/track_10min_16mb/2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon, run with
FP_STORAGE=FP8), and the file's size is counted against parameter-golf's 16,000,000-byte budget.

What is stored how (the record's q_sd / deq_sd):
  ternary weights  per group of G along the input dim (G = 0: the whole tensor), s = fp16(max(mean|w|,
                   1e-8)) stored as float16; codes q = clip(round_half_even(w / s), -1, 1) from that
                   fp16 scale (a group whose s rounds to 0 gets q = 0), packed 5 per byte in base 3
                   (shared.spec.ternary.pack_base3: the record's pack_ternary byte for byte).
  float 2-D        every other 2-D tensor (embedding, embed_proj, an untied head, and the 2-D control
                   tensors resid_mix and skip_weights, as the record's `ndim == 2` rule does): float8
                   e4m3, round to nearest even and saturating at +-448 (shared/spec/fp8.py, torch's cast).
  float 1-D        norm gains, attn/mlp scales, vocab_bias: float16 (refused if it would overflow).
The raw payload (codes, scales, fp8, fp16, in that order) is LZMA-compressed (preset 9 | EXTREME;
the record uses preset 9, which came out 712 bytes larger on the full-size pg-ternary preset:
17,869,192 against 17,868,480 bytes of payload).

The record's "shrinkage fix" (deq_sd: W' = q * s / max(mean|q|, 1e-8) per group) rebuilds latent
weights for a model that ternarizes them again: mean|W'| = s and round(W' / s) = q, so its forward
pass uses exactly q * s, as training did. Our reader hands the codes and s to the model directly
(the forward weights are q * s, as for every packed file), and load_packed(form="latent") gives the
record's W' through effective_scales below. The record then casts every tensor to bfloat16 for its
bf16 model; we keep float32.
"""
from __future__ import annotations

import numpy as np

from convert.formats.packed_codecs import FP16_MAX, PackedError
from shared.spec.checkpoint import CheckpointError
from shared.spec.fp8 import decode_e4m3, encode_e4m3
from shared.spec.ternary import group_absmean, pack_base3

ARTIFACT = "pg-record"
BUDGET_BYTES = 16_000_000  # parameter-golf's limit: artifact + code bytes, decimal
RECORD_CODE_BYTES = 70_853  # the record's train_gpt_cuda_ternary.py (its log's "code:" figure)
SCALE_FLOOR = 1e-8  # the record's clamp(min=1e-8), before the fp16 cast
FP8 = "float8_e4m3"


def _groups(w: np.ndarray, G: int) -> np.ndarray:
    return w.reshape(1, 1, -1) if G == 0 else w.reshape(w.shape[0], w.shape[1] // G, G)


def quantize_record(w: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes shaped like w, float16 scales (out, in/G) or (1, 1)): the record's q_sd."""
    s16 = group_absmean(w, G, eps=SCALE_FLOOR).astype(np.float16)
    if not np.isfinite(s16).all():
        raise CheckpointError("ternary scale above the fp16 range (65504): --artifact pg-record stores float16 scales")
    s = s16.astype(np.float32)[..., None]
    g = _groups(np.asarray(w, np.float32), G)
    q = np.divide(g, s, out=np.zeros_like(g), where=s > 0)
    q = np.clip(np.rint(q), -1, 1).astype(np.int8)
    return q.reshape(w.shape), s16


def effective_scales(codes: np.ndarray, scales: np.ndarray, G: int) -> np.ndarray:
    """The shrinkage fix: s / max(mean|q|, 1e-8) per group, float32 (the record's deq_sd)."""
    g = _groups(codes, G)
    q_absmean = np.abs(g).astype(np.float32).sum(axis=-1) / np.float32(g.shape[-1])
    return (scales.astype(np.float32) / np.maximum(q_absmean, np.float32(SCALE_FLOOR))).astype(np.float32)


def pack_tensors(config, shapes: dict, weights: dict, tern: set[str]) -> tuple[dict[str, list], list[dict]]:
    """The sections (codes, scales, fp8, fp16) and the tensor table of a pg-record file."""
    G = config.ternary.group_size
    parts: dict[str, list] = {k: [] for k in ("codes", "scales", "fp8", "fp16")}
    table: list[dict] = []
    for name, shape in shapes.items():
        w = np.asarray(weights[name], np.float32)
        if name in tern:
            try:
                q, s16 = quantize_record(w, G)
            except CheckpointError as e:
                raise CheckpointError(f"{name}: {e}") from None
            table.append({"name": name, "kind": "ternary", "shape": list(shape), "group_size": G,
                          "count": int(q.size), "scale_shape": list(s16.shape), "scale_dtype": "float16",
                          "dequantize": "shrinkage-fix"})
            parts["codes"].append((table[-1], "codes", pack_base3(q).tobytes()))
            parts["scales"].append((table[-1], "scales", s16.astype("<f2").tobytes()))
        elif w.ndim == 2:
            table.append({"name": name, "kind": "float", "shape": list(shape), "dtype": FP8})
            parts["fp8"].append((table[-1], "data", encode_e4m3(w).tobytes()))
        else:
            if w.size and float(np.abs(w).max()) > FP16_MAX:
                raise CheckpointError(f"{name}: values beyond the fp16 range (65504) cannot be stored as "
                                      "--artifact pg-record stores 1-D tensors (float16)")
            table.append({"name": name, "kind": "float", "shape": list(shape), "dtype": "float16"})
            parts["fp16"].append((table[-1], "data", w.astype("<f2").tobytes()))
    return parts, table


def read_fp8(raw: bytes, span, count: int, name: str, path) -> np.ndarray:
    """`count` e4m3 codes at `span` of the raw payload, decoded to float32."""
    off, n = int(span[0]), int(span[1])
    if off < 0 or n != count or off + n > len(raw):
        raise PackedError(f"{path}: {name}: fp8 data lies outside the payload or has the wrong size")
    codes = np.frombuffer(raw[off:off + n], np.uint8)
    if (codes & 0x7F == 0x7F).any():  # the writer saturates and never stores NaN
        raise PackedError(f"{path}: {name}: fp8 NaN code (damaged data)")
    return decode_e4m3(codes)


def budget_lines(file_bytes: int, header_bytes: int, payload_bytes: int) -> list[str]:
    """What `ternary convert --artifact pg-record` prints about the 16,000,000-byte budget."""
    left = BUDGET_BYTES - file_bytes
    verdict = "fits" if left >= 0 else "OVER"
    return [f"  pg-record budget: {file_bytes:,d} of {BUDGET_BYTES:,d} bytes ({verdict}; {left:+,d}): the whole "
            f"file, header {header_bytes:,d} (config, tensor table) + LZMA payload {payload_bytes:,d}",
            f"  parameter-golf also counts the code that trains and loads the model (the record's script: "
            f"{RECORD_CODE_BYTES:,d} bytes); this tool's code is not counted here"]
