"""Float8 e4m3 ("e4m3fn": 4 exponent bits, bias 7, 3 mantissa bits, no infinities) in NumPy.

Code layout: sign bit, then exponent, then mantissa. Exponent 0 is subnormal (m / 8 * 2^-6, the
smallest step 2^-9); S.1111.111 is NaN; the largest finite value is 448 (0x7E). There is no
infinity.

`encode_e4m3(x)` rounds each value to the nearest e4m3 value, ties to the even code (the code's
last bit is the mantissa's), and saturates what lies beyond 448, infinities included, to +-448, as
torch's `tensor.to(torch.float8_e4m3fn)` does (tests/unit/test_fp8.py checks it against torch bit
for bit); NaN becomes 0x7F (0xFF with its sign bit set). `decode_e4m3(codes)` is the exact inverse
for every code (NaN codes give the NaN bits torch gives). `round_e4m3(x) = decode_e4m3(encode_e4m3(x))` is the value an e4m3 store keeps.
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
NAN_CODE = 0x7F


def _magnitudes() -> np.ndarray:
    """The values of codes 0..126 (sign bit clear, NaN excluded), ascending, float64."""
    codes = np.arange(127)
    exp, man = codes >> 3, codes & 7
    sub = man / 8.0 * 2.0 ** -6
    norm = (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return np.where(exp == 0, sub, norm)


_VALUES = _magnitudes()
_MIDPOINTS = (_VALUES[:-1] + _VALUES[1:]) / 2  # exact in float64
_DECODE = np.concatenate([_VALUES, [0.0], -_VALUES, [0.0]]).astype(np.float32)
_DECODE.view(np.uint32)[[NAN_CODE, 0x80 | NAN_CODE]] = (0x7FF00000, 0xFFF00000)  # torch's NaN bits


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float values -> uint8 e4m3 codes (round to nearest even, saturating; see the module doc)."""
    x = np.asarray(x, np.float32)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore"):  # a signalling NaN's widening warns; NaNs are replaced below
        a = np.abs(x).astype(np.float64)
    a = np.where(nan, 0.0, np.minimum(a, E4M3_MAX))
    # a is nearest to value lo (the count of midpoints below a) unless it sits exactly on midpoint lo
    lo = np.searchsorted(_MIDPOINTS, a, side="left")  # first midpoint >= a
    hi = np.searchsorted(_MIDPOINTS, a, side="right")  # first midpoint > a
    tie = hi > lo  # a equals midpoint lo, between codes lo and lo + 1: take the even one
    code = np.where(tie, lo + (lo & 1), lo).astype(np.uint8)
    code = np.where(nan, NAN_CODE, code).astype(np.uint8)
    return code | (np.signbit(x).astype(np.uint8) << 7)


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    """uint8 e4m3 codes -> float32 values (exact)."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"decode_e4m3: codes must be uint8, got {codes.dtype}")
    return _DECODE[codes]


def round_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to e4m3 (what a float8 e4m3 store keeps), as float32."""
    return decode_e4m3(encode_e4m3(x))
