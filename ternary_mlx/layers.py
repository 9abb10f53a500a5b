"""Ternary building blocks in MLX (mirrors ternary_cuda/layers.py; math in shared/spec/ternary.py)."""
from __future__ import annotations

import contextlib
import itertools

import mlx.core as mx
import mlx.nn as nn

from shared.spec.ternary import EPS


# ---- the projection (DESIGN 3.2), step for step as the NumPy reference ----------------------
def pairwise_sum_last(x: mx.array) -> mx.array:
    """Fixed-order pairwise sum over the last axis (see shared/spec/ternary.py for why)."""
    n = x.shape[-1]
    p = 1 << max(0, (n - 1).bit_length())
    if p != n:
        x = mx.concatenate([x, mx.zeros(x.shape[:-1] + (p - n,), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def _grouped(w: mx.array, group_size: int) -> mx.array:
    out, inp = w.shape
    if group_size == 0:
        return w.reshape(1, 1, out * inp)
    return w.reshape(out, inp // group_size, group_size)


def group_absmean(w: mx.array, group_size: int, eps: float = EPS) -> mx.array:
    g = mx.abs(_grouped(w.astype(mx.float32), group_size))
    mean = pairwise_sum_last(g) / mx.array(g.shape[-1], mx.float32)
    return mx.maximum(mean, mx.array(eps, mx.float32))


def ternarize(w: mx.array, group_size: int, eps: float = EPS) -> tuple[mx.array, mx.array]:
    """(codes int8 of w's shape, scales float32 (out, in // G) or (1, 1))."""
    s = group_absmean(w, group_size, eps)
    g = _grouped(w.astype(mx.float32), group_size)
    q = mx.clip(mx.round(g / s[..., None]), -1, 1)  # mx.round rounds half to even
    return q.astype(mx.int8).reshape(w.shape), s


@mx.custom_function
def straight_through(x: mx.array, x_used: mx.array) -> mx.array:
    """Forward: exactly x_used. Backward: the gradient goes to x unchanged (STE)."""
    return x_used


@straight_through.vjp
def _straight_through_vjp(primals, cotangent, output):
    return cotangent, mx.zeros_like(primals[1])


def ternary_weight(w: mx.array, group_size: int, eps: float = EPS, lam: float | mx.array = 1.0) -> mx.array:
    """W_used = W + lam * (q * s - W) (exactly q * s at lam = 1), gradient straight through to W."""
    w32 = w.astype(mx.float32)
    s = group_absmean(w32, group_size, eps)[..., None]
    x = _grouped(w32, group_size) / s
    # == clip(round_half_even(x), -1, 1) * s bit for bit (a tie at exactly 0.5 rounds to 0), but
    # mx.compile on CPU runs the fused clip(round(.)) 5-10x slower than this select.
    wt = mx.where(x > 0.5, s, mx.where(x < -0.5, -s, mx.zeros_like(s))).reshape(w.shape)
    if isinstance(lam, mx.array):  # traced lambda (warm-up under mx.compile): exact q * s at 1
        wt = mx.where(lam >= 1.0, wt, w32 + lam * (wt - w32))
    elif lam < 1.0:
        wt = w32 + lam * (wt - w32)
    return straight_through(w32, mx.stop_gradient(wt)).astype(w.dtype)


def round_e4m3(x: mx.array) -> mx.array:
    """float32 -> nearest float8 e4m3fn value, float32 (shared.spec.ternary.round_e4m3): MLX's own
    fp8 conversion, except that it turns NaN into 448 where torch (and the spec) keep NaN."""
    x32 = x.astype(mx.float32)
    r = mx.from_fp8(mx.to_fp8(x32), dtype=mx.float32)
    return mx.where(mx.isnan(x32), x32, r)


def fp8_weight(w: mx.array) -> mx.array:
    """ternary.float_qat = "fp8": the forward uses round_e4m3(W), the gradient goes straight to W."""
    w32 = w.astype(mx.float32)
    return straight_through(w32, mx.stop_gradient(round_e4m3(w32))).astype(w.dtype)


def spec_projections(model, names: list[str], why: str) -> list["TernaryLinear"]:
    """The TernaryLinear module of each weight in `names` (canonical names from the parameter specs,
    shared/spec/params.py); `why` says in the error what asked for it."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        mod = modules.get(name.removesuffix(".weight"))
        if not isinstance(mod, TernaryLinear):
            raise ValueError(f"{name}: {why} but the model has no TernaryLinear for it")
        out.append(mod)
    return out


def mark_ternary(model, names: list[str]) -> None:
    """Make the weights the config's parameter specs call ternary (ternary_parameters) ternary."""
    for mod in spec_projections(model, names, "the spec makes it ternary"):
        mod.ternary = True


def mark_float_qat(model, names: list[str], fmt: str | None) -> None:
    """Give the weights `names` (shared.spec.params.float_qat_parameters) the float QAT `fmt`."""
    for mod in spec_projections(model, names, "ternary.float_qat covers it"):
        mod.float_qat = fmt


def quantize_activations(x: mx.array, bits: int = 8, eps: float = EPS) -> mx.array:
    """Per-token absmax fake quantization with a straight-through gradient."""
    qmax = float(2 ** (bits - 1) - 1)
    x32 = x.astype(mx.float32)
    scale = qmax / mx.maximum(mx.abs(x32).max(axis=-1, keepdims=True), mx.array(eps, mx.float32))
    xq = mx.clip(mx.round(x32 * scale), -qmax - 1, qmax) / scale
    return straight_through(x32, mx.stop_gradient(xq)).astype(x.dtype)


# ---- modules ----------------------------------------------------------------------------------
class TernaryLinear(nn.Module):
    """y = x @ W_used.T with W (out, in) latent; plain linear when `ternary` is False."""

    def __init__(self, in_features: int, out_features: int, ternary: bool = True,
                 group_size: int = 128, eps: float = EPS, activation_bits: int | None = None):
        super().__init__()
        self.weight = mx.zeros((out_features, in_features))
        self.ternary, self.group_size, self.eps = ternary, group_size, eps
        self.activation_bits = activation_bits
        self._quant_lambda = 1.0  # set through Model.set_quant_lambda; '_' keeps it out of the parameters
        self.float_qat: str | None = None  # "fp8" (layers.mark_float_qat): a float weight rounded to e4m3
        self._frozen = None  # the effective weight while `frozen_weights` holds it (inference)

    def effective_weight(self) -> mx.array:
        if self._frozen is not None:
            return self._frozen
        if not self.ternary:
            return fp8_weight(self.weight) if self.float_qat == "fp8" else self.weight
        return ternary_weight(self.weight, self.group_size, self.eps, self._quant_lambda)

    def __call__(self, x: mx.array) -> mx.array:
        if self.ternary and self.activation_bits:
            x = quantize_activations(x, self.activation_bits, self.eps)
        return x @ self.effective_weight().T


class TernaryEmbedding(TernaryLinear):
    """Token embedding (vocab, hidden); `as_linear` is the tied LM head on the same effective weight."""

    def __call__(self, ids: mx.array) -> mx.array:
        return self.effective_weight()[ids]

    def as_linear(self, x: mx.array) -> mx.array:
        return TernaryLinear.__call__(self, x)


@contextlib.contextmanager
def frozen_weights(model):
    """Inside: every TernaryLinear (and embedding) of `model` uses its effective weight computed once
    on entry, not re-ternarized per call (generation, evaluation: the weights do not change). The
    values are those of effective_weight(), so the logits are the same bit for bit."""
    mods = [m for _, m in model.named_modules() if isinstance(m, TernaryLinear)]
    for m in mods:
        # object.__setattr__: an array stored the Module way would join the model's parameters
        object.__setattr__(m, "_frozen", mx.stop_gradient(m.effective_weight()))
    mx.eval([m._frozen for m in mods])
    try:
        yield model
    finally:
        for m in mods:
            object.__setattr__(m, "_frozen", None)


def fused_linear(x: mx.array, parts: list[TernaryLinear]) -> list[mx.array]:
    """[part(x) for part in parts] as one matmul over the concatenated effective weights (speed
    only: each part is projected with its own scales, so the math is that of the parts)."""
    first = parts[0]
    if any((p.ternary, p.activation_bits) != (first.ternary, first.activation_bits) for p in parts):
        raise ValueError("fused projections must agree on ternary and activation_bits")
    if first.ternary and first.activation_bits:  # the parts would quantize the same x the same way
        x = quantize_activations(x, first.activation_bits, first.eps)
    y = x @ mx.concatenate([p.effective_weight() for p in parts], axis=0).T
    ends = list(itertools.accumulate(p.weight.shape[0] for p in parts))
    return mx.split(y, ends[:-1], axis=-1)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; `weighted=False`: no weight (no parameter at all)."""

    def __init__(self, dims: int, eps: float = 1e-6, weighted: bool = True):
        super().__init__()
        if weighted:
            self.weight = mx.ones((dims,))
        self.weighted, self.eps = weighted, eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight if self.weighted else None, self.eps)


class SubLN(RMSNorm):
    """BitNet's sub-norm (before o_proj / down_proj), blended in by the quantization warm-up:
    x + lam * (rms_norm(x) - x). lam = 1 is the plain RMSNorm; lam = 0 leaves the model unchanged."""

    def __init__(self, dims: int, eps: float = 1e-6, weighted: bool = True):
        super().__init__(dims, eps, weighted)
        self._quant_lambda = 1.0  # set through Model.set_quant_lambda, with the ternary weights

    def __call__(self, x: mx.array) -> mx.array:
        y = super().__call__(x)
        lam = self._quant_lambda
        return y if isinstance(lam, float) and lam == 1.0 else x + lam * (y - x)
