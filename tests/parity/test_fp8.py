"""ternary.float_qat = "fp8": the e4m3 rounding of shared/spec (NumPy), torch's float8_e4m3fn cast and
MLX's own, bit for bit; and the straight-through gradient of the rounded weights."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.ternary import E4M3_MAX, round_e4m3


def e4m3_grid() -> np.ndarray:
    """Every finite float8_e4m3fn value (codes 0..126 and their negatives), decoded from the format."""
    vals = []
    for code in range(127):  # 127 = S.1111.111 is NaN
        e, m = code >> 3, code & 7
        vals.append(m * 2.0 ** -9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    v = np.array(vals, np.float32)
    return np.concatenate([v, -v])


def probe_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    grid = np.unique(np.abs(e4m3_grid()))
    ties = (grid[:-1] + grid[1:]) / 2  # exact in float32: halfway between neighbours
    nudged = np.concatenate([np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf))])
    normal = (rng.uniform(0.5, 1, 20000) * 2.0 ** rng.integers(-14, 12, 20000)).astype(np.float32)
    sub = rng.uniform(0, 2.0 ** -6, 5000).astype(np.float32)  # the subnormal range of e4m3
    bits = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    over = np.array([448, 449, 463.99, 464, 464.01, 479.9, 480, 500, 1e6, 3e38, np.inf], np.float32)
    pos = np.concatenate([grid, ties, nudged, normal, sub, over, [0.0, 2.0 ** -10, 2.0 ** -11 * 3]]).astype(np.float32)
    return np.concatenate([pos, -pos, bits, np.array([np.nan], np.float32)])


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def test_spec_rounding_lands_on_the_grid_and_saturates():
    grid = e4m3_grid()
    np.testing.assert_array_equal(round_e4m3(grid), grid)  # representable values are fixed points
    assert round_e4m3(np.float32(0.59375)) == 0.625 and round_e4m3(np.float32(0.53125)) == 0.5  # ties to even
    assert round_e4m3(np.float32(2.0 ** -10)) == 0 and round_e4m3(np.float32(3 * 2.0 ** -11)) == 2.0 ** -9
    assert (round_e4m3(np.array([1e6, np.inf, -np.inf], np.float32)) == [E4M3_MAX, E4M3_MAX, -E4M3_MAX]).all()
    assert np.isnan(round_e4m3(np.float32(np.nan))) and np.signbit(round_e4m3(np.float32(-1e-30)))
    x = probe_values()
    r = round_e4m3(x)
    finite = np.isfinite(x)
    assert np.isin(r[finite], np.concatenate([grid, [0.0]])).all()


def test_numpy_torch_mlx_agree_bit_for_bit():
    import mlx.core as mx
    import torch
    from ternary_cuda.layers import round_e4m3 as torch_round
    from ternary_mlx.layers import round_e4m3 as mlx_round
    x = probe_values()
    ref = round_e4m3(x)
    t = torch_round(torch.from_numpy(x.copy())).numpy()
    m = np.array(mlx_round(mx.array(x)))
    for name, got in (("torch", t), ("mlx", m)):
        bad = ~same_bits(ref, got)
        assert not bad.any(), f"{name}: {bad.sum()} of {x.size} differ, e.g. {x[bad][:5]} -> {got[bad][:5]} (spec {ref[bad][:5]})"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_fp8_weight_forward_rounds_and_gradient_passes_straight(backend):
    w = np.random.default_rng(1).normal(0, 0.05, (8, 16)).astype(np.float32)
    up = np.random.default_rng(2).normal(size=w.shape).astype(np.float32)
    if backend == "mlx":
        import mlx.core as mx
        from ternary_mlx.layers import fp8_weight
        out = np.array(fp8_weight(mx.array(w)))
        grad = np.array(mx.grad(lambda a: mx.sum(fp8_weight(a) * mx.array(up)))(mx.array(w)))
    else:
        import torch
        from ternary_cuda.layers import fp8_weight
        wt = torch.from_numpy(w.copy()).requires_grad_(True)
        y = fp8_weight(wt)
        (y * torch.from_numpy(up)).sum().backward()
        out, grad = y.detach().numpy(), wt.grad.numpy()
    np.testing.assert_array_equal(out, round_e4m3(w))
    assert not np.array_equal(out, w)  # it did round
    np.testing.assert_array_equal(grad, up)  # d(sum(round(W) * U))/dW = U under the straight-through rule
