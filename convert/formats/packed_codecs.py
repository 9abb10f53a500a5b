"""The number codecs of the packed artifact (convert/formats/packed.py): per-row int8 for float matrices,
and the payload compressors.

int8 rule (per row, symmetric absmax): s = fp16(max|row| / 127), rounded to nearest and then moved
up one fp16 step where that rounding went down, so that |w| / s <= 127 and no value is ever
clipped; q = round_half_to_even(w / s) (computed in float64) in [-127, 127]; a row of zeros has
s = 0 and q = 0. The reader returns q * s in float32 (exact: 7-bit q times an 11-bit s), so every
element is off by at most s / 2 (~ max|row| / 254) from the checkpoint's float32 value. Non-finite
values are refused. -128 is never written (the reader refuses it as damage).

Compression: "lzma" (xz, preset 9 | EXTREME), "zstd" (the zstandard package, level ZSTD_LEVEL) or
"none". The header records which; a reader refuses one it does not know, and a payload whose sha256
does not match the header is refused before it is decompressed.
"""
from __future__ import annotations

import lzma

import numpy as np

from shared.spec.checkpoint import CheckpointError
from shared.spec.config import ConfigError

COMPRESSIONS = ("lzma", "zstd", "none")
ZSTD_LEVEL = 19  # 22 (ultra) measured byte-identical on our models, with a 16x larger decoder window; see compress_payload
FP16_MAX = float(np.finfo(np.float16).max)
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2^-14


class PackedError(CheckpointError):
    """A packed file that is missing, damaged, truncated or inconsistent (a user error on the CLI)."""


def quantize_rows_int8(w: np.ndarray, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes shaped like w, row scales [w.shape[0]] float16 or float32): the module docstring's
    int8 rule. Every element of codes * scales[:, None] is within scales / 2 of w."""
    rows = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    if not np.isfinite(rows).all():
        raise CheckpointError(f"{name}: non-finite values cannot be stored as int8 (--floats int8)")
    amax = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0])
    # fp16 unless a row's scale could reach the top fp16 step and be bumped past 65504: then float32
    dt = np.float16 if (amax.size == 0 or amax.max() / 127 < 65472.0) else np.float32  # 65472: fp16 below max
    s = (amax / 127).astype(dt)
    low = s.astype(np.float64) * 127 < amax  # rounded down: the largest |w| / s would exceed 127
    s[low] = np.nextafter(s[low], dt(np.inf))
    s64 = s.astype(np.float64)[:, None]
    q = np.divide(rows, s64, out=np.zeros_like(rows), where=s64 > 0)
    q = np.rint(q)  # round half to even
    if q.size and np.abs(q).max() > 127:  # cannot happen by construction of s; never clip silently
        raise AssertionError(f"{name}: int8 code outside [-127, 127]")
    return q.astype(np.int8).reshape(w.shape), s


def compress_payload(raw: bytes, how: str) -> bytes:
    """Measured (2-core VM, loaded): the trained 4 x 128 relu^2 model (the former smoke preset), int8
    floats, raw payload 236,096 B: lzma 9e 223,916 B in 0.4 s (decompress 39 ms); zstd 19 and 22 both
    226,475 B in 0.1 s (decompress 0.2 ms).
    Random 9 x 512 model, raw 5.1 MB: lzma 4,935,364 B in 3.5 s; zstd 19 and 22 both 4,948,813 B in
    2.4-3.7 s. Level 22 never came out smaller, and its window (128 MB, --ultra) sets the decoder's
    memory; so ZSTD_LEVEL = 19 (8 MB window)."""
    if how == "lzma":
        return lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    if how == "zstd":
        return zstd_module().ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    if how == "none":
        return raw
    raise ConfigError(f"--compress {how!r}: expected one of {', '.join(COMPRESSIONS)}")


def zstd_module():
    try:
        import zstandard
    except ImportError:
        raise ConfigError("zstd compression needs the zstandard package: pip install zstandard") from None
    return zstandard


def decompress_payload(payload: bytes, how: str, raw_bytes: int, path) -> bytes:
    if how == "none":
        return payload
    try:
        if how == "lzma":
            return lzma.decompress(payload)
        zstd = zstd_module()
        try:
            return zstd.ZstdDecompressor().decompress(payload, max_output_size=raw_bytes)
        except zstd.ZstdError as e:
            raise PackedError(f"{path}: cannot decompress the zstd payload ({e})") from None
    except lzma.LZMAError as e:
        raise PackedError(f"{path}: cannot decompress the lzma payload ({e})") from None
    except ConfigError as e:
        raise PackedError(f"{path}: {e}") from None
