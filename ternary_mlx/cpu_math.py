"""exp-based functions for MLX on the CPU: softmax, cross-entropy, SwiGLU through a polynomial exp.

Why: MLX's CPU `exp` (and `sigmoid`, `softmax`, `logsumexp`, which use it) is not vectorised on
x86: about 35 ns per element, 4-5x the time of the same exp written as a polynomial in fused
element-wise ops, and so the largest cost of a small model's training step after the matmuls
(bench/profile_mlx_step.py: the attention softmax, the cross-entropy and SiLU, forward and
backward). These are the same functions with exp as Cephes' expf (range reduction by ln 2, a
degree-5 polynomial, 2^n from the exponent bits): within 1 ulp of exp over float32's range
(tests/mlx/test_cpu_math.py; MLX's own CPU exp errs by up to 64 ulp), exactly 0 below it (a -inf
mask gives 0) and inf above it; NaN stays NaN. Each function carries its
closed-form gradient (custom vjp), so backward costs what torch's fused kernels do.
`use_cpu_math()` says whether the caller should take this path: on the CPU only (on a GPU MLX's
own kernels, and mx.fast.scaled_dot_product_attention's fused one, are the fast path).
MLX only, deliberately: torch's CPU exp, softmax, cross-entropy and SiLU kernels are vectorised and
its CPU flash-attention kernel already stops each query block at the diagonal (bench/profile_step.py
times them), so ternary_cuda needs no counterpart; these functions follow torch's CPU formulas, so
the parity suites compare like with like.
"""
from __future__ import annotations

import mlx.core as mx

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = HI + LO, HI with few bits: n * HI is exact
_LO, _HI = -87.33654475, 88.37626266  # float32's exp range (Cephes' MINLOGF, MAXLOGF)
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def use_cpu_math() -> bool:
    return mx.default_device() == mx.cpu


def exp(x: mx.array) -> mx.array:
    """exp(x) for float32 x (no gradient of its own: the functions below carry theirs)."""
    xc = mx.clip(x, _LO, _HI)
    n = mx.clip(mx.floor(xc * _LOG2E + 0.5), -126.0, 127.0)
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = _POLY[0]
    for c in _POLY[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    two_n = ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    y = p * two_n
    return mx.where(x < _LO, 0.0, mx.where(x > _HI, mx.inf, y))


def _softmax(x: mx.array) -> mx.array:
    e = exp(x - mx.stop_gradient(mx.max(x, axis=-1, keepdims=True)))
    return e / mx.sum(e, axis=-1, keepdims=True)


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis, float32."""
    return _softmax(x)


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    return output * (cotangent - mx.sum(cotangent * output, axis=-1, keepdims=True))


# The cross-entropy and SwiGLU below follow torch's CPU formulas operation for operation
# (log_softmax + nll_loss and their backward; silu = x / (1 + exp(-x))): rounding then matches the
# torch backend closely enough for tests/parity/test_training.py's five ternary steps at rtol 1e-4,
# which MLX-style forms (x * sigmoid(x), softmax as e / sum e) missed through one flipped code.
@mx.custom_function
def _cross_entropy_and_lse(logits: mx.array, targets: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """(mean over rows of log(sum exp(logits - m)) - (logits[target] - m), m, log sum): the row max
    m and the log-sum are outputs so that the backward needs one exp pass, not two."""
    m = mx.max(logits, axis=-1, keepdims=True)
    log_total = mx.log(mx.sum(exp(logits - m), axis=-1, keepdims=True))
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1)
    return mx.mean(log_total - (picked - m)), m, log_total


@_cross_entropy_and_lse.vjp
def _cross_entropy_and_lse_vjp(primals, cotangents, outputs):
    logits, targets = primals
    _, m, log_total = outputs
    scale = cotangents[0] / logits.shape[0]  # a scalar: no broadcast (n,) cotangent to multiply by
    p = exp((logits - m) - log_total)
    onehot = mx.arange(logits.shape[-1])[None, :] == targets[:, None]
    return p * scale - mx.where(onehot, scale, 0.0), mx.zeros_like(targets)


def mean_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean over rows of lse(logits) - logits[target], float32; logits (n, V), targets (n,)."""
    return _cross_entropy_and_lse(logits, targets)[0]


@mx.custom_function
def _swiglu_and_denominator(gate: mx.array, up: mx.array) -> tuple[mx.array, mx.array]:
    """(silu(gate) * up, 1 + exp(-gate)): the denominator is an output so that the backward reads
    it instead of running exp over the gate a second time."""
    d = 1.0 + exp(-gate)
    return gate / d * up, d


@_swiglu_and_denominator.vjp
def _swiglu_and_denominator_vjp(primals, cotangents, outputs):
    gate, up = primals
    c, d = cotangents[0], outputs[1]
    s = 1.0 / d  # sigmoid(gate)
    return c * up * s * (1.0 + gate * (1.0 - s)), c * (gate / d)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up, silu(x) = x * sigmoid(x)."""
    return _swiglu_and_denominator(gate, up)[0]


QUERY_BLOCKS = 4  # measured at T = 256: 4 blocks 1.6x faster than 1, 16 slower again


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, blocks: int = QUERY_BLOCKS) -> mx.array:
    """softmax(q k^T * scale + causal mask) v; q (B, H, T, D), k and v (B, H_kv, T, D), grouped
    query heads (head h reads kv head h // (H / H_kv)) as one matmul per kv head, never repeated.
    The queries go in `blocks` row blocks of near-equal size, block i against the keys up to its end
    only: the masked upper triangle is mostly never computed (10/16 of the scores at 4 blocks). The
    count is fixed, not grown with T, so a forward's Python work does not depend on the sequence
    length (tests/unit/test_block_plugins.py); T < blocks gives T blocks of one query."""
    B, H, T, D = q.shape
    Hk = k.shape[1]
    g = H // Hk
    q = (q * scale).reshape(B, Hk, g, T, D)
    bounds = sorted({T * i // max(1, blocks) for i in range(max(1, blocks) + 1)})
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        s = q[:, :, :, start:end].reshape(B, Hk, g * (end - start), D) @ k[:, :, :end].swapaxes(-1, -2)
        keep = mx.arange(start, end)[:, None] >= mx.arange(end)[None, :]
        s = mx.where(keep, s.reshape(B, Hk, g, end - start, end), -mx.inf)
        p = softmax(s).reshape(B, Hk, g * (end - start), end)
        outs.append((p @ v[:, :, :end]).reshape(B, Hk, g, end - start, D))
    return (outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=3)).reshape(B, H, T, D)
