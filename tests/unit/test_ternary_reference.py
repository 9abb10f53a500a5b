"""The NumPy reference of the ternary projection and of code packing (shared/spec/ternary.py, DESIGN 3.2).

Expected values are derived by hand (cases built so every float32 operation is exact) or from an
independent float64 / pure-Python computation; nothing here is copied from running the code.
"""
from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from shared.spec import ternary as T

EPS32 = np.float32(1e-5)


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


# ---- quantize: hand-made groups ------------------------------------------------------------------
def test_eps_is_the_design_value():
    assert T.EPS == 1e-5


def test_all_zero_group_gets_eps_scale_and_zero_codes():
    # Two rows, two groups of 4: group (0, 1) is all zeros, the others are not.
    w = _f32([[1, -1, 1, -1, 0, 0, 0, 0],
              [2, 2, -2, 2, 4, -4, 4, 4]])
    codes, s = T.quantize(w, group_size=4)
    assert s.dtype == np.float32 and s.shape == (2, 2)
    assert s[0, 1] == EPS32  # exactly the float32 eps, not 0 and not a float64 1e-5
    assert np.all(codes[0, 4:] == 0)
    # The other groups are independent of the zero one: absmeans 1, 2, 4 (exact).
    assert s[0, 0] == 1.0 and s[1, 0] == 2.0 and s[1, 1] == 4.0
    np.testing.assert_array_equal(codes[0, :4], [1, -1, 1, -1])
    np.testing.assert_array_equal(codes[1], [1, 1, -1, 1, 1, -1, 1, 1])


def test_all_zero_tensor_per_tensor():
    codes, s = T.quantize(np.zeros((3, 5), np.float32), group_size=0)
    assert s.shape == (1, 1) and s[0, 0] == EPS32
    assert codes.dtype == np.int8 and not codes.any()


@pytest.mark.parametrize("scale", [1.0, 0.125, 2.0 ** -10, 8.0])
def test_ties_round_half_to_even(scale):
    # |values| sum to 8 over a group of 8, so the absmean is exactly 1 (times a power of two:
    # every value, the sum and the division stay exact in float32), and W / s is exact.
    base = [0.5, 1.5, -0.5, -1.5, 1.0, -1.0, 2.0, 0.0]
    assert sum(abs(v) for v in base) == 8
    w = _f32([base]) * np.float32(scale)
    codes, s = T.quantize(w, group_size=8)
    assert s[0, 0] == np.float32(scale)
    # 0.5 -> 0 (even), 1.5 -> 2 -> clipped to 1, -0.5 -> 0, -1.5 -> -2 -> -1, 2 -> clipped to 1.
    np.testing.assert_array_equal(codes[0], [0, 1, 0, -1, 1, -1, 1, 0])


def test_rounding_thresholds_around_half():
    # absmean exactly 1: 0.25 -> 0, 0.75 -> 1, 0.5 -> 0 (tie), 3.5 -> 4 -> clipped to 1.
    base = [0.25, 0.75, -0.25, -0.75, 0.5, -0.5, 1.5, 3.5]
    assert sum(abs(v) for v in base) == 8
    codes, s = T.quantize(_f32([base]), group_size=8)
    assert s[0, 0] == 1.0
    np.testing.assert_array_equal(codes[0], [0, 1, 0, -1, 0, 0, 1, 1])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_single_huge_outlier(sign):
    g = 16
    small = np.linspace(-0.01, 0.01, g - 1, dtype=np.float32)
    w = np.concatenate([small[:7], [np.float32(sign * 1000.0)], small[7:]]).reshape(1, g)
    codes, s = T.quantize(w, group_size=g)
    # s ~ 1000 / 16 = 62.5, so 1000 / s ~ 16 -> +/-1, and |0.01| / s ~ 1.6e-4 -> 0.
    assert s[0, 0] == pytest.approx(np.abs(w.astype(np.float64)).mean(), rel=1e-6)
    expected = np.zeros(g, np.int8)
    expected[7] = int(sign)
    np.testing.assert_array_equal(codes[0], expected)


def test_per_tensor_scale_is_the_mean_over_the_whole_tensor():
    # Dyadic values: the sum of |W| is exact in float32, so the only rounding is the final division.
    rng = np.random.default_rng(1)
    w = (rng.integers(-32, 33, size=(3, 5)) / 8).astype(np.float32)
    codes, s = T.quantize(w, group_size=0)
    assert s.shape == (1, 1) and s.dtype == np.float32
    exact_sum = sum(abs(float(v)) for v in w.ravel())  # exact: multiples of 1/8 below 2**20
    assert s[0, 0] == np.float32(exact_sum) / np.float32(w.size)
    assert codes.shape == w.shape
    # Same scale for every element: codes are round(W / s) clipped.
    expected = np.clip(np.rint(w.astype(np.float64) / float(s[0, 0])), -1, 1)
    np.testing.assert_array_equal(codes, expected)


def test_per_tensor_scale_random_matches_float64_mean():
    w = np.random.default_rng(2).standard_normal((17, 33)).astype(np.float32)
    _, s = T.quantize(w, group_size=0)
    assert s.shape == (1, 1)
    assert float(s[0, 0]) == pytest.approx(np.abs(w.astype(np.float64)).mean(), rel=1e-6)


def test_grouped_shapes_and_per_group_scales():
    out, inp, g = 5, 24, 8
    w = np.random.default_rng(3).standard_normal((out, inp)).astype(np.float32)
    codes, s = T.quantize(w, group_size=g)
    assert codes.shape == (out, inp) and codes.dtype == np.int8
    assert s.shape == (out, inp // g) and s.dtype == np.float32
    s64 = np.abs(w.astype(np.float64)).reshape(out, inp // g, g).mean(-1)
    np.testing.assert_allclose(s, s64, rtol=1e-6)
    # The codes equal an independent float64 computation except (possibly) right at a tie.
    ratio = w.astype(np.float64) / np.repeat(s64, g, axis=1)
    near_tie = np.abs(np.abs(ratio) - 0.5) < 1e-4
    expected = np.clip(np.rint(ratio), -1, 1)
    np.testing.assert_array_equal(codes[~near_tie], expected[~near_tie])


@pytest.mark.parametrize("group_size", [5, 7, 16, 48])
def test_group_size_not_dividing_in_raises(group_size):
    with pytest.raises(ValueError, match=str(group_size)):
        T.quantize(np.ones((4, 24), np.float32), group_size)


def test_quantize_rejects_non_2d():
    with pytest.raises(ValueError):
        T.quantize(np.ones(8, np.float32), 4)


# ---- pairwise sum -------------------------------------------------------------------------------
def _pairwise_reference(values) -> np.float32:
    """The order documented in shared/spec/ternary.py, in plain Python with float32 scalars:
    pad with zeros to a power of two, then add the second half onto the first until one is left."""
    v = [np.float32(x) for x in values]
    p = 1
    while p < len(v):
        p *= 2
    v += [np.float32(0.0)] * (p - len(v))
    while len(v) > 1:
        h = len(v) // 2
        v = [np.float32(v[i] + v[i + h]) for i in range(h)]
    return v[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 100, 128, 129])
def test_pairwise_sum_matches_reference_order(n):
    rng = np.random.default_rng(n)
    # Mixed magnitudes make float32 addition order visible.
    x = (rng.standard_normal((3, n)) * 10.0 ** rng.integers(-3, 4, size=(3, n))).astype(np.float32)
    got = T.pairwise_sum_last(x)
    assert got.shape == (3,) and got.dtype == np.float32
    for r in range(3):
        assert got[r] == _pairwise_reference(x[r]), (n, r)
    np.testing.assert_allclose(got, x.astype(np.float64).sum(-1),
                               rtol=1e-5, atol=1e-6 * np.abs(x).astype(np.float64).sum(-1).max())


def test_pairwise_sum_order_by_hand():
    # float32: 1e8 + 1 == 1e8 (the spacing at 1e8 is 8), so the order of additions shows.
    # n = 3: pad to [1e8, -1e8, 1, 0] -> [1e8 + 1, -1e8 + 0] = [1e8, -1e8] -> 0.
    # (A left-to-right sum or adjacent pairing would give 1.)
    assert T.pairwise_sum_last(_f32([1e8, -1e8, 1.0]))[()] == 0.0
    # n = 4: [1e8 + -1e8, 1 + 1] = [0, 2] -> 2.  (Left to right: 1e8 + 1 = 1e8, - 1e8 = 0, + 1 = 1.)
    assert T.pairwise_sum_last(_f32([1e8, 1.0, -1e8, 1.0]))[()] == 2.0


def test_pairwise_sum_leading_axes():
    x = np.arange(2 * 3 * 7, dtype=np.float32).reshape(2, 3, 7)
    got = T.pairwise_sum_last(x)
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, x.astype(np.int64).sum(-1))  # small integers: exact


# ---- dequantize / ternary_weight ---------------------------------------------------------------
@pytest.mark.parametrize("group_size", [0, 4, 16])
def test_ternary_weight_is_codes_times_scales(group_size):
    w = np.random.default_rng(4).standard_normal((6, 16)).astype(np.float32)
    codes, s = T.quantize(w, group_size)
    assert codes.dtype == np.int8
    assert set(np.unique(codes)).issubset({-1, 0, 1})
    wt = T.ternary_weight(w, group_size)
    assert wt.dtype == np.float32
    np.testing.assert_array_equal(T.dequantize(codes, s, group_size), wt)
    # Independent: broadcast each scale over its group and multiply (exact: codes are -1/0/1).
    per_elem = np.broadcast_to(s, (6, 16)) if group_size == 0 else np.repeat(s, group_size, axis=1)
    np.testing.assert_array_equal(wt, codes.astype(np.float32) * per_elem)
    np.testing.assert_array_equal(T.ternary_weight(w, group_size, lam=1.0), wt)


def test_ternary_weight_lambda_schedule():
    w = np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32)
    wt = T.ternary_weight(w, 4)
    np.testing.assert_array_equal(T.ternary_weight(w, 4, lam=0.0), w)
    mid = T.ternary_weight(w, 4, lam=0.5)
    np.testing.assert_allclose(mid, (w.astype(np.float64) + wt.astype(np.float64)) / 2,
                               rtol=1e-6, atol=1e-7)
    quarter = T.ternary_weight(w, 4, lam=0.25)
    np.testing.assert_allclose(quarter, 0.75 * w.astype(np.float64) + 0.25 * wt.astype(np.float64),
                               rtol=1e-6, atol=1e-7)


def test_bf16_representable_inputs():
    # float32 values whose low 16 mantissa bits are zero (what a bfloat16 checkpoint holds).
    raw = np.random.default_rng(6).standard_normal((8, 32)).astype(np.float32)
    w = (raw.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert not np.array_equal(w, raw)  # the truncation did something
    codes, s = T.quantize(w, 16)
    assert codes.dtype == np.int8 and s.shape == (8, 2)
    s64 = np.abs(w.astype(np.float64)).reshape(8, 2, 16).mean(-1)
    np.testing.assert_allclose(s, s64, rtol=1e-6)
    ratio = w.astype(np.float64) / np.repeat(s64, 16, axis=1)
    ok = np.abs(np.abs(ratio) - 0.5) > 1e-4
    np.testing.assert_array_equal(codes[ok], np.clip(np.rint(ratio), -1, 1)[ok])
    np.testing.assert_array_equal(T.ternary_weight(w, 16), codes * np.repeat(s, 16, axis=1))


def test_float64_input_is_computed_in_float32():
    w = np.random.default_rng(7).standard_normal((2, 8))
    c64, s64 = T.quantize(w, 4)
    c32, s32 = T.quantize(w.astype(np.float32), 4)
    assert s64.dtype == np.float32
    np.testing.assert_array_equal(c64, c32)
    np.testing.assert_array_equal(s64, s32)


# ---- activations ---------------------------------------------------------------------------------
def test_quantize_activations_per_token_absmax():
    rng = np.random.default_rng(8)
    row_scales = np.array([1e-3, 1.0, 1e3, 7.0], np.float32)[:, None]
    x = (rng.standard_normal((4, 300)).astype(np.float32) * row_scales)
    y = T.quantize_activations(x, bits=8)
    assert y.shape == x.shape and y.dtype == np.float32
    x64 = x.astype(np.float64)
    amax = np.abs(x64).max(-1, keepdims=True)
    for r in range(4):
        assert len(np.unique(y[r])) <= 255
        # The largest magnitude survives (up to float32 rounding of x * 127 / m * m / 127).
        assert np.abs(y[r]).max() == pytest.approx(amax[r, 0], rel=1e-6)
    # Round to nearest on a grid of step m / 127: error at most half a step (plus float slack).
    assert np.all(np.abs(y.astype(np.float64) - x64) <= amax / 127 / 2 * (1 + 1e-5))
    # Values sit on that grid.
    k = y.astype(np.float64) * 127 / amax
    np.testing.assert_allclose(k, np.rint(k), atol=1e-3)
    assert np.all(np.abs(np.rint(k)) <= 127)


def test_quantize_activations_rows_are_independent_and_last_axis():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    y = T.quantize_activations(x)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(y[i, j], T.quantize_activations(x[i, j][None])[0])
    x2 = x.copy()
    x2[0, 0] *= 1000  # a huge token must not change the others
    y2 = T.quantize_activations(x2)
    np.testing.assert_array_equal(y2[0, 1:], y[0, 1:])
    np.testing.assert_array_equal(y2[1], y[1])


def test_quantize_activations_hand_case_and_zero_row():
    # max |x| = 127: the grid step is exactly 1, so the result is round-half-even of x.
    x = _f32([[127.0, 0.5, 1.5, -2.5, 3.25, -127.0], [0, 0, 0, 0, 0, 0]])
    y = T.quantize_activations(x)
    np.testing.assert_array_equal(y[0], [127.0, 0.0, 2.0, -2.0, 3.0, -127.0])
    np.testing.assert_array_equal(y[1], np.zeros(6))


# ---- lambda schedule -----------------------------------------------------------------------------
def test_quant_lambda():
    assert T.quant_lambda(0, 0) == 1.0
    assert T.quant_lambda(123, 0) == 1.0
    assert T.quant_lambda(0, 10) == 0.0
    assert T.quant_lambda(5, 10) == pytest.approx(0.5)
    assert T.quant_lambda(3, 4) == pytest.approx(0.75)
    assert T.quant_lambda(10, 10) == 1.0
    assert T.quant_lambda(25, 10) == 1.0
    vals = [T.quant_lambda(s, 100) for s in range(0, 150, 10)]
    assert vals == sorted(vals)


# ---- 2-bit packing (Hugging Face BitNet layout) --------------------------------------------------
def _random_codes(shape, seed):
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


def test_pack_2bit_by_hand():
    # out = 5 -> R = 2 packed rows; row r holds original rows r, r + 2, r + 4 in bits 0-1, 2-3, 4-5.
    codes = np.array([-1, 0, 1, 1, 0], np.int8)[:, None]  # digits 0, 1, 2, 2, 1
    packed = T.pack_2bit(codes)
    assert packed.dtype == np.uint8 and packed.shape == (2, 1)
    # row 0: rows 0, 2, 4 -> 0 | 2 << 2 | 1 << 4 = 24; row 1: rows 1, 3 -> 1 | 2 << 2 = 9
    np.testing.assert_array_equal(packed[:, 0], [24, 9])
    # out = 4: one byte, all four rows: 0 | 1 << 2 | 2 << 4 | 2 << 6 = 4 + 32 + 128 = 164
    assert T.pack_2bit(np.array([-1, 0, 1, 1], np.int8))[0] == 164


@pytest.mark.parametrize("out", [1, 3, 4, 5, 7, 9, 13])
@pytest.mark.parametrize("inp", [1, 3, 17])
def test_pack_2bit_round_trip(out, inp):
    codes = _random_codes((out, inp), seed=out * 100 + inp)
    packed = T.pack_2bit(codes)
    assert packed.shape == ((out + 3) // 4, inp) and packed.dtype == np.uint8
    back = T.unpack_2bit(packed, out)
    assert back.dtype == np.int8
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("n", [1, 2, 6, 11])
def test_pack_2bit_round_trip_1d(n):
    codes = _random_codes((n,), seed=n)
    packed = T.pack_2bit(codes)
    assert packed.shape == ((n + 3) // 4,)
    np.testing.assert_array_equal(T.unpack_2bit(packed, n), codes)


def _transformers_pack_weights():
    """transformers' reference `integrations.bitnet.pack_weights`, unmodified.

    Importing `transformers.integrations.bitnet` pulls in its model-loading machinery (torch.distributed
    and friends: 5-10 s on a 2-core machine), so the function and the one constant it uses are compiled
    from the installed module's own source instead; the code that runs is transformers' code.
    """
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        pytest.skip("transformers is not installed")
    src = Path(spec.origin).parent / "integrations" / "bitnet.py"
    if not src.exists():
        pytest.skip(f"{src} not found")
    tree = ast.parse(src.read_text(), filename=str(src))
    wanted = [n for n in tree.body
              if (isinstance(n, ast.FunctionDef) and n.name == "pack_weights")
              or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "VALUES_PER_ITEM"
                                                    for t in n.targets))]
    assert len(wanted) == 2, "transformers' bitnet.py no longer defines pack_weights / VALUES_PER_ITEM"
    ns = {"torch": torch}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(src), "exec"), ns)
    return torch, ns["pack_weights"]


def test_pack_2bit_matches_transformers_bitnet():
    torch, pack_weights = _transformers_pack_weights()
    shapes = [(o, i) for o in (1, 3, 5, 7, 9, 13) for i in (1, 3, 17)] + [(1,), (5,), (13,), (64, 8)]
    for k, shape in enumerate(shapes):
        codes = _random_codes(shape, seed=1000 + k)
        ours = T.pack_2bit(codes)
        theirs = pack_weights(torch.from_numpy(codes.copy()).clone()).numpy()
        assert theirs.dtype == np.uint8
        assert ours.shape == theirs.shape, shape
        assert ours.tobytes() == theirs.tobytes(), shape


@pytest.mark.parametrize("rows,bad_out", [(2, 4), (2, 9), (1, 0), (1, 5), (3, 8)])
def test_unpack_2bit_rejects_out_features_that_do_not_fit(rows, bad_out):
    with pytest.raises(ValueError):
        T.unpack_2bit(np.zeros((rows, 3), np.uint8), bad_out)


@pytest.mark.parametrize("packer", [T.pack_2bit, T.pack_base3])
@pytest.mark.parametrize("bad", [2, -2, 127])
def test_packers_reject_out_of_range_codes(packer, bad):
    codes = np.zeros((4, 3), np.int8)
    codes[2, 1] = bad
    with pytest.raises(ValueError):
        packer(codes)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("packer", [T.pack_2bit, T.pack_base3])
@pytest.mark.parametrize("bad", [0.5, float("nan")])
def test_packers_reject_non_integer_codes(packer, bad):
    codes = np.zeros((4, 3), np.float32)
    codes[1, 1] = bad
    with pytest.raises(ValueError):
        packer(codes)


def test_unpack_2bit_rejects_the_unused_field_value():
    with pytest.raises(ValueError):
        T.unpack_2bit(np.array([[0b00000011]], np.uint8), 4)


# ---- base-3 packing ------------------------------------------------------------------------------
def test_pack_base3_by_hand():
    # codes [-1, 0, 1, 1, 0] -> digits [0, 1, 2, 2, 1] -> 0*1 + 1*3 + 2*9 + 2*27 + 1*81 = 156
    np.testing.assert_array_equal(T.pack_base3(np.array([-1, 0, 1, 1, 0], np.int8)), [156])
    # six zeros-codes: digits all 1 -> 1 + 3 + 9 + 27 + 81 = 121, then a byte holding one digit 1
    # followed by zero padding -> 1
    np.testing.assert_array_equal(T.pack_base3(np.zeros(6, np.int8)), [121, 1])
    # all +1: 2 * 121 = 242, the largest valid byte
    np.testing.assert_array_equal(T.pack_base3(np.ones(5, np.int8)), [242])
    np.testing.assert_array_equal(T.unpack_base3(np.array([156], np.uint8), 5), [-1, 0, 1, 1, 0])


@pytest.mark.parametrize("n", [0, 1, 4, 5, 6, 11, 1000])
def test_pack_base3_round_trip(n):
    codes = _random_codes((n,), seed=n + 7)
    packed = T.pack_base3(codes)
    assert packed.dtype == np.uint8
    assert len(packed) == math.ceil(n / 5)
    assert n == 0 or packed.max() <= 242
    back = T.unpack_base3(packed, n)
    assert back.dtype == np.int8 and back.shape == (n,)
    np.testing.assert_array_equal(back, codes)


def test_pack_base3_flattens_2d_in_c_order():
    codes = _random_codes((3, 7), seed=11)
    np.testing.assert_array_equal(T.pack_base3(codes), T.pack_base3(codes.reshape(-1)))
    np.testing.assert_array_equal(T.unpack_base3(T.pack_base3(codes), 21).reshape(3, 7), codes)


@pytest.mark.parametrize("byte", [243, 250, 255])
def test_unpack_base3_rejects_bytes_above_242(byte):
    with pytest.raises(ValueError):
        T.unpack_base3(np.array([0, byte], np.uint8), 10)


@pytest.mark.parametrize("nbytes,count", [(2, 11), (3, 10), (1, 0), (0, 1)])
def test_unpack_base3_rejects_wrong_count(nbytes, count):
    with pytest.raises(ValueError):
        T.unpack_base3(np.zeros(nbytes, np.uint8), count)
