"""ternary_mlx/cpu_math.py against MLX's own functions: values, gradients, edge cases."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
cpu_math = pytest.importorskip("ternary_mlx.cpu_math")


def _rand(shape, seed, scale=1.0):
    return mx.array(np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale)


def test_exp_within_one_ulp_over_the_float32_range():
    x = mx.array(np.linspace(-87.0, 88.0, 200_001, dtype=np.float32))
    ours, ref = np.array(cpu_math.exp(x)), np.exp(np.array(x).astype(np.float64))
    ulps = np.abs(ours - ref) / np.spacing(ref.astype(np.float32))
    assert ulps.max() <= 1.0  # measured 0.98; MLX's own CPU exp: 64


def _close(a, b, tol):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol)


def test_softmax_and_its_gradient():
    x, r = _rand((6, 37), 0, 4.0), _rand((6, 37), 1)
    _close(cpu_math.softmax(x), mx.softmax(x, axis=-1, precise=True), 1e-6)
    g_ref = mx.grad(lambda v: mx.sum(mx.softmax(v, axis=-1) * r))(x)
    _close(mx.grad(lambda v: mx.sum(cpu_math.softmax(v) * r))(x), g_ref, 1e-6)


def test_mean_cross_entropy_and_its_gradient():
    logits, y = _rand((40, 97), 2, 3.0), mx.array(np.random.default_rng(3).integers(0, 97, 40).astype(np.int32))
    ref = nn.losses.cross_entropy(logits, y, reduction="mean")
    _close(cpu_math.mean_cross_entropy(logits, y), ref, 1e-6)
    g_ref = mx.grad(lambda v: 3.0 * nn.losses.cross_entropy(v, y, reduction="mean"))(logits)  # cotangent 3
    _close(mx.grad(lambda v: 3.0 * cpu_math.mean_cross_entropy(v, y))(logits), g_ref, 1e-6)


def test_swiglu_and_its_gradients():
    gate, up, r = _rand((5, 64), 5, 4.0), _rand((5, 64), 6), _rand((5, 64), 7)
    _close(cpu_math.swiglu(gate, up), nn.silu(gate) * up, 1e-6)
    g_ref = mx.grad(lambda g, u: mx.sum(nn.silu(g) * u * r * g), argnums=(0, 1))(gate, up)
    g_ours = mx.grad(lambda g, u: mx.sum(cpu_math.swiglu(g, u) * r * g), argnums=(0, 1))(gate, up)
    for a, b in zip(g_ours, g_ref):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("T,blocks", [(1, 4), (7, 4), (16, 1), (16, 3), (33, 4)])
def test_causal_attention_matches_sdpa_with_gradients(T, blocks):
    B, H, Hk, D = 2, 4, 2, 8
    q, k, v, r = _rand((B, H, T, D), 7), _rand((B, Hk, T, D), 8), _rand((B, Hk, T, D), 9), _rand((B, H, T, D), 10)

    def ref(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=D ** -0.5, mask="causal")

    def ours(q, k, v):
        return cpu_math.causal_attention(q, k, v, D ** -0.5, blocks)

    _close(ours(q, k, v), ref(q, k, v), 1e-5)
    g_ref = mx.grad(lambda *a: mx.sum(ref(*a) * r), argnums=(0, 1, 2))(q, k, v)
    g_ours = mx.grad(lambda *a: mx.sum(ours(*a) * r), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        _close(a, b, 1e-5)


def test_cpu_rope_within_float32_rounding_of_float64():
    """On the CPU the model's RoPE rotates by tables computed in float64 (measured 5.7e-7 off here,
    |x| <= 7.4; MLX's CPU mx.fast.rope: 3.1e-6), plain and ramped, at an offset (decoding) too."""
    from shared.spec.reference_model import rope as reference_rope
    from ternary_mlx.model import rope
    x = _rand((1, 2, 64, 16), 12, 2.0)
    for ramp, offset in [(None, 0), (2.0, 0), (None, 5)]:
        got = np.array(rope(x[:, :, offset:], 10000.0, ramp, offset=offset))
        want = reference_rope(np.array(x).astype(np.float64), 10000.0, ramp)[:, :, offset:]
        assert np.abs(got - want).max() < 1e-6, (ramp, offset)
