"""DESIGN 3.2: both backends' ternary codes and scales are bit-identical to the NumPy reference.

Also the effective weight (`ternary_weight`) and the 8-bit activation fake-quantization.
"""
from __future__ import annotations

import mlx.core as mx
import zlib

import numpy as np
import pytest
import torch

from shared.spec import ternary as ref
from tests.variants import VARIANTS, variant_config
from ternary_cuda import layers as TL
from ternary_cuda.model import Model as TorchModel
from ternary_mlx import layers as ML
from ternary_mlx.model import Model as MLXModel

from .helpers import to_bf16_exact

# (shape, group_size): powers of two, non-power-of-two input dims and numbers of groups, per tensor.
SHAPES = [
    ((64, 256), 128),
    ((7, 384), 128),     # 3 groups per row, odd number of rows
    ((96, 128), 64),
    ((48, 96), 32),      # 3 groups per row
    ((5, 160), 32),      # 5 groups per row
    ((128, 64), 0),      # per tensor, power-of-two element count
    ((33, 50), 0),       # per tensor, 1650 elements: zero padding inside the pairwise sum
    ((3, 7), 0),         # per tensor, tiny and odd
]
DISTS = ["normal", "student_t", "ties", "zero_groups"]
TIE_SCALES = np.array([2.0 ** -4, 3 * 2.0 ** -6, 5 * 2.0 ** -7, 1.0], np.float32)


def _ties_group(rng, n: int, s: np.float32) -> np.ndarray:
    """n values with mean |w| exactly s, half of them (about) at |w| = 0.5 s or 1.5 s exactly.

    Magnitudes come in pairs summing to 2 (0.5/1.5, 0.25/1.75, 1/1), so every partial sum is a
    multiple of 0.25 s and exact in float32; the mean is n s / n = s exactly, so w / s hits 0.5 and
    1.5 exactly: round-half-to-even must give 0 and 2 -> clipped to 1.
    """
    pairs = np.array([[0.5, 1.5], [0.5, 1.5], [0.25, 1.75], [1.0, 1.0]], np.float32)
    mags = pairs[rng.integers(0, len(pairs), n // 2)].reshape(-1)
    if n % 2:
        mags = np.append(mags, np.float32(1.0))
    mags = rng.permutation(mags)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), n)
    return (mags * signs * s).astype(np.float32)


def make_weight(shape, group_size: int, dist: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, inp = shape
    if dist == "normal":
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if dist == "student_t":  # heavy tails: a few huge values dominate the group mean
        return (rng.standard_t(2.0, shape) * 0.02).astype(np.float32)
    if dist == "zero_groups":  # some groups all zero: the scale is eps, the codes 0
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if group_size == 0:
            return np.zeros(shape, np.float32)
        w[0, :group_size] = 0.0
        w[-1, -group_size:] = 0.0
        return w
    if dist == "ties":
        if group_size == 0:
            return _ties_group(rng, out * inp, TIE_SCALES[seed % len(TIE_SCALES)]).reshape(shape)
        groups = [_ties_group(rng, group_size, TIE_SCALES[rng.integers(len(TIE_SCALES))])
                  for _ in range(out * (inp // group_size))]
        return np.concatenate(groups).reshape(shape)
    raise ValueError(dist)


def mlx_ternarize(w32: np.ndarray, group_size: int, bf16: bool):
    x = mx.array(w32)
    if bf16:
        x = x.astype(mx.bfloat16)
    codes, scales = ML.ternarize(x, group_size)
    mx.eval(codes, scales)
    return np.array(codes), np.array(scales)


def torch_ternarize(w32: np.ndarray, group_size: int, bf16: bool):
    x = torch.from_numpy(w32.copy())
    if bf16:
        x = x.bfloat16()
    codes, scales = TL.ternarize(x, group_size)
    return codes.numpy(), scales.numpy()


BACKENDS = {"mlx": mlx_ternarize, "torch": torch_ternarize}


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if want.dtype == np.float32:
        same = got.view(np.uint32) == want.view(np.uint32)
    else:
        same = got == want
    if not same.all():
        idx = tuple(np.argwhere(~same)[0])
        raise AssertionError(f"{what}: {(~same).sum()} of {same.size} differ, first at {idx}: "
                             f"got {got[idx]!r}, want {want[idx]!r}")


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("shape,group_size", SHAPES, ids=[f"{s[0]}x{s[1]}-G{g}" for s, g in SHAPES])
def test_codes_and_scales_bit_identical(backend, dtype, dist, shape, group_size):
    seed = zlib.crc32(repr((shape, group_size, dist)).encode())
    w = make_weight(shape, group_size, dist, seed)
    if dtype == "bfloat16":
        w = to_bf16_exact(w)  # the reference gets exactly the values the bf16 tensor holds
    want_codes, want_scales = ref.quantize(w, group_size)
    if dist == "ties" and dtype == "float32":  # the construction really produces ties
        g = w.reshape(want_codes.shape[0] if group_size else 1, -1, group_size or w.size)
        ratio = np.abs(g) / want_scales[..., None]
        assert (ratio == 0.5).any() and (ratio == 1.5).any()
        assert (want_codes.reshape(g.shape)[ratio == 0.5] == 0).all()  # half to even: 0.5 -> 0
    got_codes, got_scales = BACKENDS[backend](w, group_size, dtype == "bfloat16")
    assert_bits_equal(got_codes, want_codes, f"{backend} codes")
    assert_bits_equal(got_scales, want_scales, f"{backend} scales")
    assert set(np.unique(got_codes)) <= {-1, 0, 1}


def test_native_sums_differ_from_the_pairwise_order():
    """Each library's own reduction (mx.sum, torch.sum, np.sum) differs from the fixed pairwise
    order in the last bit for many groups, so a backend that used its native mean would be caught
    by the bit-exact tests above (the test data is of the same kind)."""
    rng = np.random.default_rng(0)
    g = np.abs(rng.standard_normal((256, 128)).astype(np.float32))
    want = ref.pairwise_sum_last(g)
    assert (np.array(mx.sum(mx.array(g), axis=-1)) != want).sum() > 10
    assert (torch.from_numpy(g).sum(-1).numpy() != want).sum() > 10
    assert (g.sum(-1) != want).sum() > 10


# ---- in a model: every ternary weight of every variant ---------------------------------------------
MODELS = {"mlx": MLXModel, "torch": TorchModel}
TERNARY_VARIANTS = [v for v, (_, tern) in VARIANTS.items() if tern.get("enabled", True)]


@pytest.mark.parametrize("backend", list(MODELS))
@pytest.mark.parametrize("variant", TERNARY_VARIANTS)
def test_model_ternary_weights_are_the_reference(backend, variant):
    """Each ternary module of a model has the configured group size, eps and activation bits; its
    codes and scales, and the effective weight its forward uses, are bit for bit the reference's on
    the model's own shapes (embedding and head included where they are targets)."""
    cfg = variant_config(variant)
    t = cfg.ternary
    model = MODELS[backend](cfg, seed=9)
    weights = model.numpy_weights()
    modules = model.ternary_modules()
    assert modules
    for name, mod in modules.items():
        assert (mod.group_size, mod.eps, mod.activation_bits) == (t.group_size, t.eps, t.activation_bits), name
        want_codes, want_scales = ref.quantize(weights[name], t.group_size, t.eps)
        got_codes, got_scales = BACKENDS[backend](weights[name], t.group_size, False)
        assert_bits_equal(got_codes, want_codes, f"{backend} {name} codes")
        assert_bits_equal(got_scales, want_scales, f"{backend} {name} scales")
        eff = mod.effective_weight()
        eff = np.array(eff) if backend == "mlx" else eff.detach().numpy()
        assert_bits_equal(eff, ref.dequantize(want_codes, want_scales, t.group_size), f"{backend} {name} weight")


# ---- effective weight -------------------------------------------------------------------------
def mlx_tw(w, g, lam):
    out = ML.ternary_weight(mx.array(w), g, lam=lam)
    mx.eval(out)
    return np.array(out)


def torch_tw(w, g, lam):
    return TL.ternary_weight(torch.from_numpy(w.copy()), g, lam=lam).detach().numpy()


TW = {"mlx": mlx_tw, "torch": torch_tw}


@pytest.mark.parametrize("backend", list(TW))
@pytest.mark.parametrize("shape,group_size", [((48, 96), 32), ((7, 384), 128), ((33, 50), 0)])
@pytest.mark.parametrize("dist", ["normal", "ties"])
def test_ternary_weight(backend, shape, group_size, dist):
    w = make_weight(shape, group_size, dist, 7)
    want = ref.dequantize(*ref.quantize(w, group_size), group_size)
    assert_bits_equal(TW[backend](w, group_size, 1.0), want, f"{backend} ternary_weight lam=1")
    want_lam = ref.ternary_weight(w, group_size, lam=0.3)
    got_lam = TW[backend](w, group_size, 0.3)
    assert got_lam.dtype == np.float32
    np.testing.assert_allclose(got_lam, want_lam, rtol=0, atol=1e-7)
    # lam really interpolates: halfway between latent and ternary, not either end
    assert np.abs(want_lam - w).max() > 1e-3 and np.abs(want_lam - want).max() > 1e-3


# ---- activation quantization -------------------------------------------------------------------
def _activations(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 9, 96)) * rng.uniform(0.01, 5.0, (2, 9, 1))).astype(np.float32)
    x[0, 0] = 0.0  # all-zero token: the eps branch
    x[0, 1] = rng.integers(-253, 254, 96).astype(np.float32) / 4  # with max |x| = 63.5 the scale
    x[0, 1, 0] = 63.5  # is 127 / 63.5 = 2, so x * scale = k / 2 hits .5 exactly for odd k
    x[1, 0] = rng.standard_t(1.5, 96).astype(np.float32)  # heavy tails
    return x


def test_activation_ties_present():
    x = _activations(0)
    prod = x[0, 1] * (np.float32(127) / np.abs(x[0, 1]).max())
    assert (prod - np.floor(prod) == 0.5).sum() > 10  # exact ties: rint must round them to even




@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_activations_bit_identical(backend, seed):
    x = _activations(seed)
    want = ref.quantize_activations(x, 8)
    if backend == "mlx":
        out = ML.quantize_activations(mx.array(x), 8)
        mx.eval(out)
        got = np.array(out)
    else:
        got = TL.quantize_activations(torch.from_numpy(x.copy()), 8).numpy()
    assert_bits_equal(got, want, f"{backend} quantize_activations")
    # at most 256 distinct levels per token
    assert all(len(np.unique(row)) <= 256 for row in got.reshape(-1, got.shape[-1]))
