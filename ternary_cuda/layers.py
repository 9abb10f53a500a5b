"""Ternary building blocks in PyTorch (mirrors ternary_mlx/layers.py; math in shared/spec/ternary.py)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.spec.ternary import EPS


# ---- the projection (DESIGN 3.2), step for step as the NumPy reference ----------------------
def pairwise_sum_last(x: torch.Tensor) -> torch.Tensor:
    """Fixed-order pairwise sum over the last axis (see shared/spec/ternary.py for why)."""
    n = x.shape[-1]
    p = 1 << max(0, (n - 1).bit_length())
    if p != n:
        x = F.pad(x, (0, p - n))
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, inp = w.shape
    if group_size == 0:
        return w.reshape(1, 1, out * inp)
    return w.reshape(out, inp // group_size, group_size)


def group_absmean(w: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    g = torch.abs(_grouped(w.float(), group_size))
    # A true division by a device tensor, as the reference (CUDA divides by a Python scalar as a multiply by
    # its reciprocal); made by torch.full, not torch.tensor: no blocking host-to-device copy per weight per step.
    mean = pairwise_sum_last(g) / torch.full((), g.shape[-1], dtype=torch.float32, device=g.device)
    return torch.clamp_min(mean, eps)


def ternarize(w: torch.Tensor, group_size: int, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 of w's shape, scales float32 (out, in // G) or (1, 1))."""
    s = group_absmean(w, group_size, eps)
    g = _grouped(w.float(), group_size)
    q = torch.clamp(torch.round(g / s[..., None]), -1, 1)  # torch.round rounds half to even
    return q.to(torch.int8).reshape(w.shape), s


def dequantized_ternary(w: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """codes * scales of ternarize(w), float32 of w's shape, bit for bit, without the int8 round trip:
    the codes stay float (-1, 0, 1) and are scaled in place (fewer passes over W, fewer temporaries).
    `+= 0.0` turns round's -0.0 (of g / s in (-0.5, 0)) into the +0.0 that an int8 code 0 gives."""
    s = group_absmean(w, group_size, eps)
    q = torch.round(_grouped(w.float(), group_size) / s[..., None]).clamp_(-1, 1)
    q += 0.0
    return q.mul_(s[..., None]).reshape(w.shape)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_used):
        return x_used

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, x_used: torch.Tensor) -> torch.Tensor:
    """Forward: exactly x_used. Backward: the gradient goes to x unchanged (STE)."""
    return _StraightThrough.apply(x, x_used)


def ternary_weight(w: torch.Tensor, group_size: int, eps: float = EPS,
                   lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """W_used = W + lam * (q * s - W) (exactly q * s at lam = 1), gradient straight through to W."""
    w32 = w.float()
    with torch.no_grad():
        wt = dequantized_ternary(w32, group_size, eps)
        if isinstance(lam, torch.Tensor):  # lambda as a tensor (warm-up under torch.compile): exact q * s at 1
            wt = torch.where(lam >= 1.0, wt, w32 + lam * (wt - w32))
        elif lam < 1.0:
            wt = w32 + lam * (wt - w32)
    return straight_through(w32, wt).to(w.dtype)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest float8 e4m3fn value, float32 (shared.spec.ternary.round_e4m3): torch's cast."""
    return x.float().to(torch.float8_e4m3fn).to(torch.float32)


def fp8_weight(w: torch.Tensor) -> torch.Tensor:
    """ternary.float_qat = "fp8": the forward uses round_e4m3(W), the gradient goes straight to W."""
    w32 = w.float()
    with torch.no_grad():
        used = round_e4m3(w32)
    return straight_through(w32, used).to(w.dtype)


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


def quantize_activations(x: torch.Tensor, bits: int = 8, eps: float = EPS) -> torch.Tensor:
    """Per-token absmax fake quantization with a straight-through gradient."""
    qmax = float(2 ** (bits - 1) - 1)
    x32 = x.float()
    with torch.no_grad():
        m = torch.clamp_min(x32.abs().amax(dim=-1, keepdim=True), eps)
        scale = torch.full_like(m, qmax) / m  # not `qmax / m`: torch computes that as reciprocal * qmax
        xq = torch.clamp(torch.round(x32 * scale), -qmax - 1, qmax) / scale
    return straight_through(x32, xq).to(x.dtype)


# ---- modules ----------------------------------------------------------------------------------
class TernaryLinear(nn.Module):
    """y = x @ W_used.T with W (out, in) latent; plain linear when `ternary` is False."""

    def __init__(self, in_features: int, out_features: int, ternary: bool = True,
                 group_size: int = 128, eps: float = EPS, activation_bits: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((out_features, in_features)))
        self.ternary, self.group_size, self.eps = ternary, group_size, eps
        self.activation_bits = activation_bits
        self._quant_lambda = 1.0  # set through Model.set_quant_lambda; '_' keeps it out of the parameters
        self.float_qat: str | None = None  # "fp8" (layers.mark_float_qat): a float weight rounded to e4m3
        self._frozen = None  # the effective weight while `frozen_weights` holds it (inference)

    def effective_weight(self) -> torch.Tensor:
        if self._frozen is not None:
            return self._frozen
        if not self.ternary:
            return fp8_weight(self.weight) if self.float_qat == "fp8" else self.weight
        return ternary_weight(self.weight, self.group_size, self.eps, self._quant_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ternary and self.activation_bits:
            x = quantize_activations(x, self.activation_bits, self.eps)
        return F.linear(x, self.effective_weight())


class TernaryEmbedding(TernaryLinear):
    """Token embedding (vocab, hidden); `as_linear` is the tied LM head on the same effective weight."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.effective_weight())

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        return TernaryLinear.forward(self, x)


@contextlib.contextmanager
def frozen_weights(model):
    """Inside: every TernaryLinear (and embedding) of `model` uses its effective weight computed once
    on entry, not re-ternarized per call (generation, evaluation: the weights do not change). The
    values are those of effective_weight(), so the logits are the same bit for bit."""
    mods = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    with torch.no_grad():
        for m in mods:
            m._frozen = m.effective_weight().detach()  # a plain attribute: not a parameter or buffer
    try:
        yield model
    finally:
        for m in mods:
            m._frozen = None


def fused_linear(x: torch.Tensor, parts: list[TernaryLinear]) -> list[torch.Tensor]:
    """[part(x) for part in parts] as one matmul over the concatenated effective weights (speed
    only: each part is projected with its own scales, so the math is that of the parts)."""
    first = parts[0]
    if any((p.ternary, p.activation_bits) != (first.ternary, first.activation_bits) for p in parts):
        raise ValueError("fused projections must agree on ternary and activation_bits")
    if first.ternary and first.activation_bits:  # the parts would quantize the same x the same way
        x = quantize_activations(x, first.activation_bits, first.eps)
    y = F.linear(x, torch.cat([p.effective_weight() for p in parts], dim=0))
    return list(torch.split(y, [p.weight.shape[0] for p in parts], dim=-1))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; `weighted=False`: no weight (no parameter at all)."""

    def __init__(self, dims: int, eps: float = 1e-6, weighted: bool = True):
        super().__init__()
        if weighted:
            self.weight = nn.Parameter(torch.ones((dims,)))
        self.weighted, self.eps = weighted, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype) if self.weighted else x32.to(x.dtype)


class SubLN(RMSNorm):
    """BitNet's sub-norm (before o_proj / down_proj), blended in by the quantization warm-up:
    x + lam * (rms_norm(x) - x). lam = 1 is the plain RMSNorm; lam = 0 leaves the model unchanged."""

    def __init__(self, dims: int, eps: float = 1e-6, weighted: bool = True):
        super().__init__(dims, eps, weighted)
        self._quant_lambda = 1.0  # set through Model.set_quant_lambda, with the ternary weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        lam = self._quant_lambda
        return y if isinstance(lam, float) and lam == 1.0 else x + lam * (y - x)
