"""The ternary record's option helpers in each backend against the reference's, where the variant
rows cannot look: logits far beyond the soft-cap, and the ramped RoPE frequencies themselves (the
rows see them only through 64 positions of a tiny head)."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.reference_model import rope_inv_freq, soft_cap


@pytest.mark.parametrize("kind", ["tanh", "poly"])
def test_soft_cap_of_huge_logits_is_the_cap(backend, kind):
    """Without the inner clamp, u^5 overflows float32 (inf - inf = nan) for |z / c| past ~5e7."""
    z = np.array([-3e38, -1e9, -7.0, -1.0, 0.0, 0.5, 3.3, 3.5, 1e9, 3e38], np.float32)
    got = backend.numpy(backend.model.soft_cap(backend.tensor(z), 2.0, kind))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, soft_cap(z.astype(np.float64), 2.0, kind), rtol=2e-6, atol=2e-6)
    assert got[0] == -2.0 and got[-1] == 2.0


@pytest.mark.parametrize("head_dim,theta,factor", [(16, 10000.0, 4.0), (96, 5000.0, 2.0), (64, 1e6, 0.5)])
def test_ramped_inv_freq_is_the_reference(backend, head_dim, theta, factor):
    args = (head_dim, theta, factor)
    got = backend.numpy(backend.model.rope_inv_freq(*args))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, rope_inv_freq(*args), rtol=2e-6)
    plain = backend.numpy(backend.model.rope_inv_freq(head_dim, theta, None))
    np.testing.assert_allclose(plain, rope_inv_freq(head_dim, theta, None), rtol=2e-6)
    assert np.abs(got / plain - 1).max() > 0.1  # the ramp acts
