"""The number codecs of the packed artifact (convert/formats/packed.py): per-row integer codes for
float matrices (--floats int8|int6|int5|mixed), and the payload compressors.

Row rule (per row, symmetric absmax, B bits, Q = 2^(B-1) - 1: 127 for int8, 31 for int6, 15 for
int5): s = fp16(max|row| / Q), rounded to nearest and then moved up one fp16 step where that
rounding went down, so that |w| / s <= Q and no value is ever clipped; q = round_half_to_even(w / s)
(computed in float64) in [-Q, Q]; a row of zeros has s = 0 and q = 0. The reader returns q * s in
float32 (exact: a <= 7-bit q times an 11-bit s), so every element is off by at most s / 2 (about
max|row| / (2Q)) from the checkpoint's float32 value. Non-finite values are refused. -Q - 1 is never
written (the reader refuses it as damage). Codes are stored one per byte (int8) whatever B is: the
unused high bits are constant, and the compressor (zstd or LZMA) removes them, as parameter-golf's
int5/int6 records rely on; parameter-golf's records clamp to [-Q - 1, Q] after rounding an fp16 scale
that may have gone down, which can clip the row's largest value by one step: ours moves s up instead.

--floats mixed: the int5/int6 rule of parameter-golf's mixed-quantization records. The 1.1558 record
(SEEDS: "int5/int6 mixed quantization + zstd-22") is not in our mirror of parameter-golf, so the rule
is read from the code those records share, records/track_10min_16mb/2026-03-20_10L_Int5MLP_MuonWD04_SWA50
(train_gpt.py: mixed_quantize_int6, quantize_intN_per_row): int5 for MLP matrices, int6 for attention matrices, the token embedding
fp16; here also int6 for float matrices outside the blocks (embed_proj, n-gram tables: the record's
bigram tables are int6) and int8 for an untied head (the record's int8 rule for the rest). Float
matrices of at most SMALL_MATRIX elements stay fp16, as in the record; 1-D and control tensors are
never quantized (fp16). Which is which comes from each parameter's spec (shared/spec/params.py:
its role and ternary target), never from its name. The record also keeps one key projection
(blocks.8.attn.c_k) in fp16 by name; that is not reproduced.

Compression: "lzma" (xz, preset 9 | EXTREME), "zstd" (the zstandard package), "zstd-22" (zstd at
level 22, as parameter-golf's int5/int6 records write: the slow maximum), "none", or "auto" (the
default of `convert --to packed`): lzma for a raw payload of at most LARGE_PAYLOAD bytes, zstd above.
The zstd level depends on the raw payload's size too (zstd_level): ZSTD_LEVEL (19) up to
LARGE_PAYLOAD, ZSTD_FAST_LEVEL (9) above it, compressed multi-threaded on `convert --threads` workers
(zstd's multi-threaded frames are the same bytes for any number of workers >= 1, checked with
zstandard 0.25 / libzstd 1.5.7 at 17-70 MiB, 1-8 workers; only single-threaded mode, 0 workers,
writes other bytes: so the file does not depend on the machine or the thread count). Why:
measured on this project's 2-core VM, lzma (any preset) and zstd 19 compress 1-3 MB/s, zstd 9
about 115 MB/s; Qwen3-0.6B's raw payload is about 400 MB (a 311 MB fp16 embedding), which took
minutes at those rates and takes seconds at level 9, for about 0.1% more bytes on random fp16
(ratio 0.9182 at 9, 0.9188 at 19; the base-3 codes do not compress at any level). Payloads up to
LARGE_PAYLOAD are written byte for byte as before this rule. On "zstd-22", level 22 measured
byte-identical to 19 on payloads up to 2 MB (zstd bounds its parameters by the input size). The
header records the codec ("zstd" for every level: the reader needs no level); a reader refuses one
it does not know, and a payload whose sha256 does not match the header is refused before it is
decompressed.
"""
from __future__ import annotations

import lzma
import math

import numpy as np

from shared.spec.checkpoint import CheckpointError
from shared.spec.config import ConfigError
from shared.spec.options import EMBEDDING, HEAD

COMPRESSIONS = ("lzma", "zstd", "none")  # what a header may name (the codec)
WRITE_COMPRESSIONS = ("auto", "lzma", "zstd", "zstd-22", "none")  # what --compress accepts
ZSTD_LEVEL = 19  # 22 (ultra) measured byte-identical on our models, with a 16x larger decoder window; see compress_payload
ZSTD_FAST_LEVEL = 9  # raw payloads over LARGE_PAYLOAD: ~115 MB/s against 19's ~3 MB/s (module docstring)
LARGE_PAYLOAD = 16 << 20  # raw payload bytes above which "auto" is zstd and "zstd" is ZSTD_FAST_LEVEL
FLOAT_MODES = ("fp16", "int8", "int6", "int5", "mixed")  # --floats
ROW_QMAX = {"int8": 127, "int6": 31, "int5": 15}  # Q = 2^(bits-1) - 1 of each row-code kind
ROW_SCALE_FP16_BELOW = 65472.0  # row scales are fp16 when max|w| / Q is below this (the fp16 step below max)
ROW_BLOCK = 1 << 22  # values per block of quantize_rows (32 MB of float64)
SMALL_MATRIX = 8192  # --floats mixed keeps float matrices of at most this many elements fp16 (the record's rule)
FP16_MAX = float(np.finfo(np.float16).max)
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2^-14


class PackedError(CheckpointError):
    """A packed file that is missing, damaged, truncated or inconsistent (a user error on the CLI)."""


def quantize_rows_int8(w: np.ndarray, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """quantize_rows(w, "int8", name)."""
    return quantize_rows(w, "int8", name)


def quantize_rows(w: np.ndarray, kind: str, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes shaped like w, in [-Q, Q], row scales [w.shape[0]] float16 or float32): the module
    docstring's row rule for `kind` ("int8", "int6" or "int5"). Every element of
    codes * scales[:, None] is within scales / 2 of w. Computed in blocks of rows, so that the float64
    working copies stay near ROW_BLOCK values (a 151,936 x 1024 embedding is 1.2 GB in float64)."""
    qmax = ROW_QMAX[kind]
    w = np.asarray(w)
    rows = w.reshape(w.shape[0], -1)
    if not np.isfinite(rows).all():
        raise CheckpointError(f"{name}: non-finite values cannot be stored as {kind} (--floats)")
    # max|row| of float32 values is one of them: exact in float32, as it was in float64
    amax = np.abs(rows).max(axis=1).astype(np.float64) if rows.shape[1] else np.zeros(rows.shape[0])
    # fp16 unless a row's scale could reach the top fp16 step and be bumped past 65504: then float32
    dt = np.float16 if (amax.size == 0 or amax.max() / qmax < ROW_SCALE_FP16_BELOW) else np.float32
    s = (amax / qmax).astype(dt)
    low = s.astype(np.float64) * qmax < amax  # rounded down: the largest |w| / s would exceed Q
    s[low] = np.nextafter(s[low], dt(np.inf))
    q = np.empty(rows.shape, np.int8)
    step = max(1, ROW_BLOCK // max(1, rows.shape[1]))
    for r0 in range(0, rows.shape[0], step):
        block = rows[r0:r0 + step].astype(np.float64)
        s64 = s[r0:r0 + step].astype(np.float64)[:, None]
        qb = np.rint(np.divide(block, s64, out=np.zeros_like(block), where=s64 > 0))  # round half to even
        if qb.size and np.abs(qb).max() > qmax:  # cannot happen by construction of s; never clip silently
            raise AssertionError(f"{name}: {kind} code outside [-{qmax}, {qmax}]")
        q[r0:r0 + step] = qb
    return q.reshape(w.shape), s


def float_matrix_storage(mode: str, spec) -> str:
    """How a float matrix (a shared.spec.params.ParamSpec of role matrix, embedding or head) is stored
    under --floats `mode`: "fp16" (plain; float32 where it would overflow) or a row-code kind."""
    if mode in ("fp16", "int8", "int6", "int5"):
        return mode
    if mode != "mixed":
        raise ConfigError(f"--floats {mode!r}: expected one of {', '.join(FLOAT_MODES)}")
    if math.prod(spec.shape) <= SMALL_MATRIX or spec.role == EMBEDDING:
        return "fp16"
    if spec.role == HEAD:
        return "int8"
    return "int5" if spec.target == "mlp" else "int6"


def codec_for(how: str, raw_bytes: int) -> str:
    """The codec --compress `how` writes for a raw payload of `raw_bytes`: "auto" resolved by size."""
    if how == "auto":
        return "lzma" if raw_bytes <= LARGE_PAYLOAD else "zstd"
    return how


def zstd_level(how: str, raw_bytes: int) -> int:
    """The zstd level of --compress `how` ("zstd", "zstd-22" or "auto") for `raw_bytes` of raw payload."""
    if how == "zstd-22":
        return 22
    return ZSTD_LEVEL if raw_bytes <= LARGE_PAYLOAD else ZSTD_FAST_LEVEL


def describe_compression(how: str, raw_bytes: int) -> str:
    """What --compress `how` does to `raw_bytes`, for the CLI's lines ("zstd level 9, multi-threaded")."""
    codec = codec_for(how, raw_bytes)
    if codec == "lzma":
        return "lzma (xz 9e)"
    if codec != "zstd":
        return codec
    return f"zstd level {zstd_level(how, raw_bytes)}" + (", multi-threaded" if raw_bytes > LARGE_PAYLOAD else "")


def compress_payload(raw: bytes, how: str, size_rule_bytes: int | None = None, threads: int | None = None) -> bytes:
    """`raw` compressed as --compress `how` writes it (codec_for, zstd_level). `size_rule_bytes`: the
    raw payload size that picks codec and level, when `raw` is only a part of the payload (the codes
    alone, an estimate's sample); default len(raw). `threads`: zstd's workers above LARGE_PAYLOAD
    (`convert --threads`; None: every CPU); the bytes are the same for any count (module docstring).
    Measured (2-core VM, loaded): the trained 4 x 128 relu^2 model (the former smoke preset), int8
    floats, raw payload 236,096 B: lzma 9e 223,916 B in 0.4 s (decompress 39 ms); zstd 19 and 22 both
    226,475 B in 0.1 s (decompress 0.2 ms).
    Random 9 x 512 model, raw 5.1 MB: lzma 4,935,364 B in 3.5 s; zstd 19 and 22 both 4,948,813 B in
    2.4-3.7 s. Level 22 never came out smaller, and its window (128 MB, --ultra) sets the decoder's
    memory; so ZSTD_LEVEL = 19 (8 MB window)."""
    n = len(raw) if size_rule_bytes is None else size_rule_bytes
    codec = codec_for(how, n)
    if codec == "lzma":
        return lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    if codec in ("zstd", "zstd-22"):
        workers = (threads or -1) if n > LARGE_PAYLOAD else 0  # -1: every CPU; 0: single-threaded, the old bytes
        return zstd_module().ZstdCompressor(level=zstd_level(how, n), threads=workers).compress(raw)
    if codec == "none":
        return raw
    raise ConfigError(f"--compress {how!r}: expected one of {', '.join(WRITE_COMPRESSIONS)}")


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
