"""NumPy reference of the ternary projection (DESIGN 3.2) and of code packing.

For a latent weight W of shape (out, in), groups of G values along `in` (G = 0: the whole tensor):

    s   = max(mean(|W_group|), eps)              float32
    q   = clip(round_half_to_even(W / s), -1, 1)  int8 codes
    W_t = q * s

Bit-exact parity between NumPy, MLX and torch needs every backend to add the |W| values of a group
in the same order: float32 addition is not associative and each library reduces in its own order.
So the mean is defined here as a fixed-order pairwise sum (pad the group with zeros to a power of
two, then repeatedly add the second half onto the first), divided by the group's true length.
Each step is an element-wise IEEE addition, identical in every framework. Both backends implement
`group_absmean` with exactly these steps.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-5


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def pairwise_sum_last(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in the fixed pairwise order shared by all backends (float32)."""
    n = x.shape[-1]
    p = _next_pow2(n)
    if p != n:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (p - n,), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def _grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    """(out, in) -> (out, n_groups, G); per tensor: (1, 1, out*in)."""
    if w.ndim != 2:
        raise ValueError(f"ternary weights must be 2-D (out, in), got shape {w.shape}")
    out, inp = w.shape
    if group_size == 0:
        return w.reshape(1, 1, out * inp)
    if inp % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input dimension {inp}")
    return w.reshape(out, inp // group_size, group_size)


def group_absmean(w: np.ndarray, group_size: int, eps: float = EPS) -> np.ndarray:
    """Scales s: (out, in // G) for grouped, (1, 1) for per tensor; float32."""
    g = np.abs(_grouped(np.asarray(w, np.float32), group_size))
    mean = pairwise_sum_last(g) / np.float32(g.shape[-1])
    return np.maximum(mean, np.float32(eps)).astype(np.float32)


def quantize(w: np.ndarray, group_size: int, eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """Ternary codes (int8, same shape as w) and scales (see group_absmean)."""
    w32 = np.asarray(w, np.float32)
    s = group_absmean(w32, group_size, eps)
    g = _grouped(w32, group_size)
    q = np.clip(np.rint(g / s[..., None]), -1, 1).astype(np.int8)  # rint rounds half to even
    return q.reshape(w32.shape), s


def dequantize(codes: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """W_t = q * s, float32, shape of codes."""
    g = _grouped(codes.astype(np.float32), group_size)
    return (g * scales[..., None].astype(np.float32)).reshape(codes.shape)


def ternary_weight(w: np.ndarray, group_size: int, eps: float = EPS, lam: float = 1.0) -> np.ndarray:
    """The effective weight used in the forward pass: W + lam * (W_t - W); exactly W_t at lam = 1."""
    w32 = np.asarray(w, np.float32)
    wt = dequantize(*quantize(w32, group_size, eps), group_size)
    if lam >= 1.0:
        return wt
    return w32 + np.float32(lam) * (wt - w32)


def quantize_activations(x: np.ndarray, bits: int = 8, eps: float = EPS) -> np.ndarray:
    """Per-token absmax fake quantization to `bits` (BitNet): round(x * Q / max|x|) * max|x| / Q."""
    qmax = np.float32(2 ** (bits - 1) - 1)
    x32 = np.asarray(x, np.float32)
    scale = qmax / np.maximum(np.abs(x32).max(axis=-1, keepdims=True), np.float32(eps))
    return np.clip(np.rint(x32 * scale), -qmax - 1, qmax) / scale


# ---- float8 e4m3 rounding (ternary.float_qat = "fp8") ------------------------------------------
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value (S.1111.110); the format has no infinity


def round_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest float8 e4m3fn value, still float32, as torch's x.to(torch.float8_e4m3fn):
    round half to even onto 3 mantissa bits (exponent bias 7, subnormals below 2^-6 in steps of
    2^-9), saturating: everything beyond +-448, infinities included, becomes +-448; NaN stays NaN;
    the sign of zero is kept. Each step is exact in float32 (scaling by powers of two)."""
    x = np.asarray(x, np.float32)
    a = np.minimum(np.abs(x), np.float32(E4M3_MAX))  # NaN propagates through minimum
    with np.errstate(invalid="ignore"):  # NaN in, NaN out
        _, e = np.frexp(a)  # a = m * 2^e, m in [0.5, 1): the binade of a is 2^(e - 1)
        step = np.ldexp(np.float32(1.0), np.maximum(e - 1, -6) - 3).astype(np.float32)  # spacing there
        rounded = (np.round(a / step) * step).astype(np.float32)  # np.round: half to even
    return np.copysign(rounded, x).astype(np.float32)


def quant_lambda(step: int, warmup_steps: int) -> float:
    """Gradual quantization weight: 0 -> 1 linearly over warmup_steps (1 when there is no warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


# ---- packing ----------------------------------------------------------------------------------
def _check_codes(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes)
    if c.dtype.kind in "iub":  # integers: only the range to check (the float checks cost seconds at 0.6B codes)
        if c.size and not (c.min() >= -1 and c.max() <= 1):
            raise ValueError("ternary codes must be integers in {-1, 0, +1}")
        return c.astype(np.int8)
    if c.size and not (np.all(np.isfinite(c)) and np.all(c == np.round(c)) and c.min() >= -1 and c.max() <= 1):
        raise ValueError("ternary codes must be integers in {-1, 0, +1}")
    return c.astype(np.int8)


def pack_2bit(codes: np.ndarray) -> np.ndarray:
    """Hugging Face BitNet layout: 4 codes per byte along the output dimension (dim 0), code + 1.

    Packed row r holds, in bits 2i..2i+1, original row i * R + r where R = ceil(out / 4).
    """
    c = _check_codes(codes)
    out = c.shape[0]
    rows = (out + 3) // 4
    padded = np.zeros((rows * 4,) + c.shape[1:], np.uint8)
    padded[:out] = (c + 1).astype(np.uint8)
    packed = np.zeros((rows,) + c.shape[1:], np.uint8)
    for i in range(4):
        packed |= padded[i * rows:(i + 1) * rows] << np.uint8(2 * i)
    return packed


def unpack_2bit(packed: np.ndarray, out_features: int) -> np.ndarray:
    """Inverse of pack_2bit; `out_features` drops the padding rows."""
    p = np.asarray(packed, np.uint8)
    if not (4 * p.shape[0] - 3 <= out_features <= 4 * p.shape[0]):
        raise ValueError(f"{p.shape[0]} packed rows cannot hold {out_features} output rows")
    parts = [((p >> np.uint8(2 * i)) & np.uint8(3)) for i in range(4)]
    if any((part == 3).any() for part in parts):
        raise ValueError("not a 2-bit ternary packing: a field holds 3 (codes + 1 are 0, 1 or 2)")
    return (np.concatenate(parts, axis=0)[:out_features].astype(np.int8) - 1).astype(np.int8)


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)
# byte value -> its 5 codes (-1, 0, +1), for unpack_base3: one gather instead of 5 divisions per byte
_BASE3_DIGITS = ((np.arange(243)[:, None] // _POW3.astype(np.int64)) % 3 - 1).astype(np.int8)


def pack_base3(codes: np.ndarray) -> np.ndarray:
    """Flattened codes, 5 per byte: byte = sum_k (c_k + 1) * 3**k (k = 0..4); zero-padded at the end."""
    c = _check_codes(codes).reshape(-1)
    n = c.size
    digits = np.zeros(((n + 4) // 5) * 5, np.uint8)
    np.add(c, 1, out=digits[:n], casting="unsafe")  # c + 1 in {0, 1, 2}
    d = digits.reshape(-1, 5)
    # Horner's rule on the columns, in uint8: every partial sum is at most 242, so nothing wraps
    out = d[:, 4] * np.uint8(3)
    for k in (3, 2, 1):
        out += d[:, k]
        out *= np.uint8(3)
    out += d[:, 0]
    return out


def unpack_base3(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of pack_base3: the first `count` codes (flat int8)."""
    p = np.asarray(packed, np.uint8)
    if p.size != (count + 4) // 5 or (p.size and p.max() > 242):
        raise ValueError(f"not a base-3 packing of {count} codes")
    return np.take(_BASE3_DIGITS, p, axis=0).reshape(-1)[:count]  # take: ~3x faster than [p] here
