"""shared/spec/fp8.py: float32 -> e4m3 codes and back, bit for bit as torch's float8_e4m3fn cast."""
import numpy as np
import pytest

from shared.spec.fp8 import E4M3_MAX, decode_e4m3, encode_e4m3, round_e4m3


def _all_values() -> np.ndarray:
    v = decode_e4m3(np.arange(256, dtype=np.uint8))
    return np.unique(v[np.isfinite(v)].astype(np.float64))


def test_known_codes():
    x = np.array([0.0, -0.0, 1.0, -1.0, 448.0, 2.0 ** -9, 2.0 ** -6, 1.125, 0.5], np.float32)
    assert encode_e4m3(x).tolist() == [0x00, 0x80, 0x38, 0xB8, 0x7E, 0x01, 0x08, 0x39, 0x30]
    assert np.array_equal(decode_e4m3(encode_e4m3(x)), x)
    assert len(_all_values()) == 253  # 126 positive, 126 negative, zero


def test_ties_go_to_the_even_code_and_overflow_saturates():
    # 1.0625 is halfway between 1.0 (0x38, even) and 1.125 (0x39); 1.1875 between 0x39 and 1.25 (0x3A)
    x = np.array([1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 464.0, 1e30, np.inf, -np.inf], np.float32)
    assert encode_e4m3(x).tolist() == [0x38, 0x3A, 0x00, 0x02, 0x7E, 0x7E, 0x7E, 0xFE]
    assert round_e4m3(np.float32(-500.0)) == -E4M3_MAX
    assert encode_e4m3(np.array([np.nan], np.float32))[0] == 0x7F


def test_bit_for_bit_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    vals = _all_values()
    mids = (vals[:-1] + vals[1:]) / 2
    mids32 = mids.astype(np.float32)
    probes = [
        rng.integers(0, 2 ** 32, size=400_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        (rng.standard_normal(400_000) * 10.0 ** rng.integers(-4, 4, 400_000)).astype(np.float32),
        np.concatenate([vals, mids, np.nextafter(mids32, np.float32(np.inf)),
                        np.nextafter(mids32, np.float32(-np.inf))]).astype(np.float32),
        np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 448, -448, 464, -464, 480], np.float32),
    ]
    for x in probes:
        want = torch.from_numpy(x.copy()).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        assert np.array_equal(encode_e4m3(x), want)
    codes = np.arange(256, dtype=np.uint8)
    back = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()
    assert np.array_equal(decode_e4m3(codes).view(np.uint32), back.view(np.uint32))
