"""Issue #11's attention helpers in each backend against the reference's, where the variant rows see
them only through a tiny model: XSA on grouped heads (and a zero value vector), partial RoPE at
widths and ramps the rows do not use, and a gate away from saturation."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.reference_model import exclusive_attention, reference_logits, rope
from tests.variants import variant_config


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 3), (4, 1), (4, 4)])
def test_exclusive_attention_is_the_reference(backend, heads, kv_heads):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    o = rng.standard_normal((2, heads, 7, 16)).astype(np.float32)
    v = rng.standard_normal((2, kv_heads, 7, 16)).astype(np.float32)
    v[0, 0, 3] = 0.0  # a zero value vector: nothing removed, no nan
    got = backend.numpy(backend.model.exclusive_attention(backend.tensor(o), backend.tensor(v)))
    want = exclusive_attention(o.astype(np.float64), v.astype(np.float64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("head_dim,dims,ramp", [(16, 8, None), (32, 8, 4.0), (64, 16, None), (16, 16, 2.0)])
def test_partial_rope_is_the_reference(backend, head_dim, dims, ramp):
    x = np.random.default_rng(head_dim + dims).standard_normal((2, 3, 40, head_dim)).astype(np.float32)
    got = backend.numpy(backend.model.rope(backend.tensor(x), 10000.0, ramp, dims))
    np.testing.assert_allclose(got, rope(x.astype(np.float64), 10000.0, ramp, dims), atol=3e-5)
    assert np.array_equal(got[..., dims:], x[..., dims:])


def test_gate_in_its_middle_range_is_the_reference(backend):
    """The variant rows draw control tensors from [0.5, 1.5], which drives most gates to 0 or 1;
    here the gate weights are small, so sigmoid's slope matters."""
    cfg = variant_config("attn-vres-xsa1-gate-lnscale-rope0.5-G32")
    model = backend.model.Model(cfg, seed=5)
    w = model.numpy_weights()
    rng = np.random.default_rng(7)
    for i in range(cfg.model.num_hidden_layers):
        p = f"model.layers.{i}.self_attn.attn_gate."
        w[p + "weight"] = (rng.standard_normal(w[p + "weight"].shape) * 0.1).astype(np.float32)
        w[p + "bias"] = rng.uniform(-1.0, 1.0, w[p + "bias"].shape).astype(np.float32)
    model.load_numpy(w)
    ids = np.random.default_rng(8).integers(0, cfg.model.vocab_size, (2, 33))
    want = reference_logits(cfg, w, ids)
    assert np.abs(backend.logits(model, ids) - want).max() < 1e-5
