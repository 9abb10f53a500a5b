"""The parameter-golf ternary record's model options in the NumPy reference, against hand-checkable
facts: the ramped RoPE frequencies, the polynomial soft-cap, the factored embedding, the vocab bias
and the weightless norm before the output projections (shared/spec/options.py, issue #10).

Also the one fact an importer of the record's weights needs about RoPE: parameter-golf rotates each
pair the other way from Hugging Face (and from us). `pg_rotate` below writes its convention out; the
test shows that negating the second half of every q/k head before and after our RoPE gives it, so
the importer negates the second-half rows of each head of q_proj / k_proj (and of a q_norm / k_norm
gain nothing changes: a per-dimension gain and an RMS commute with the sign flip), and the scores
q . k are then the record's.
"""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.config import ConfigError
from shared.spec.init import init_weights
from shared.spec.reference_model import reference_logits, rope, rope_inv_freq, soft_cap
from tests.variants import tiny_config


# random 1-D tensors (0.5..1.5: a missing gain or bias shows) and token ids, as for the base model
from tests.unit.test_reference_model import _ids, _weights  # noqa: E402


FLOAT = dict(enabled=False)


# ---- rope_ramp_factor -----------------------------------------------------------------------------
def test_ramped_inv_freq_by_hand():
    # D = 8: 2i/D = 0, 0.25, 0.5, 0.75 -> ramp 0, 0, 1/3, 2/3; factor 4: divisors 1, 1, 2, 3.
    got = rope_inv_freq(8, 100.0, 4.0)
    want = [1.0, 100 ** -0.25, 100 ** -0.5 / 2, 100 ** -0.75 / 3]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    np.testing.assert_array_equal(rope_inv_freq(8, 100.0, None), 100.0 ** (-np.arange(0, 8, 2) / 8))
    np.testing.assert_allclose(rope_inv_freq(8, 100.0, 1.0), rope_inv_freq(8, 100.0, None), rtol=1e-15)


def test_ramped_inv_freq_is_the_records_yarn():
    """The record's Rotary(rope_type="yarn") in its own terms: scale = TRAIN_SEQ_LEN / YARN_MAX_LEN,
    inv_freq / (ramp * (1 / scale - 1) + 1), ramp over arange(0, dim, 2) / dim."""
    dim, base, train_len, max_len = 96, 5000.0, 1024, 2048  # the record's run: head_dim 768 / 8
    idx = np.arange(0, dim, 2, dtype=np.float64)
    ramp = np.clip((idx / dim - 0.25) / 0.75, 0.0, 1.0)
    theirs = (1.0 / base ** (idx / dim)) / (ramp * (1.0 / (train_len / max_len) - 1.0) + 1.0)
    np.testing.assert_allclose(rope_inv_freq(dim, base, max_len / train_len), theirs, rtol=1e-14)


def test_ramp_changes_only_the_slower_frequencies():
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 8))
    plain, ramped = rope(x, 100.0), rope(x, 100.0, 4.0)
    np.testing.assert_array_equal(plain[..., [0, 1, 4, 5]], ramped[..., [0, 1, 4, 5]])  # pairs 0, 1: ramp 0
    assert np.abs(plain[..., [2, 3, 6, 7]] - ramped[..., [2, 3, 6, 7]]).max() > 0.1


def pg_rotate(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Parameter-golf's rotation of (..., T, D): (x1 cos + x2 sin, -x1 sin + x2 cos), angle p * inv_freq."""
    T_, D = x.shape[-2], x.shape[-1]
    angle = np.arange(T_)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], axis=-1)


def test_parameter_golf_rope_is_ours_between_two_second_half_sign_flips():
    D = 8
    flip = np.concatenate([np.ones(D // 2), -np.ones(D // 2)])  # negate the second half of a head
    x = np.random.default_rng(1).standard_normal((2, 3, 10, D))
    theirs = pg_rotate(x, rope_inv_freq(D, 50.0, 2.0))
    assert np.abs(theirs - rope(x, 50.0, 2.0)).max() > 0.1  # the two conventions do differ
    np.testing.assert_allclose(flip * rope(flip * x, 50.0, 2.0), theirs, rtol=1e-12, atol=1e-12)
    # so q and k with flipped second halves (flipped rows of q_proj / k_proj) score as the record's
    q, k = x[:, :1], x[:, 1:2]
    ours = rope(flip * q, 50.0, 2.0) @ np.swapaxes(rope(flip * k, 50.0, 2.0), -1, -2)
    want = pg_rotate(q, rope_inv_freq(D, 50.0, 2.0)) @ np.swapaxes(pg_rotate(k, rope_inv_freq(D, 50.0, 2.0)), -1, -2)
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-12)


# ---- final_logit_softcapping_type -----------------------------------------------------------------
def test_poly_soft_cap_by_hand():
    c = 2.0
    z = np.array([0.0, 1.0, -1.0, 3.3, 3.6, 4.0, 5.0, -1e300])
    got = soft_cap(z, c, "poly")
    np.testing.assert_allclose(got[:3], [0.0, c * (0.5 - 0.125 / 3 + 0.03125 / 15), -c * (0.5 - 0.125 / 3 + 0.03125 / 15)],
                               rtol=1e-15)
    assert got[3] == pytest.approx(c * (1.65 - 1.65 ** 3 / 3 + 1.65 ** 5 / 15)) and got[3] < c  # under the clamp
    np.testing.assert_array_equal(got[4:], [c, c, c, -c])  # u^5/15 term past 1: clamped (and no overflow)
    assert np.all(np.diff(soft_cap(np.linspace(-10, 10, 2001), c, "poly")) >= 0)  # monotone
    np.testing.assert_allclose(soft_cap(z, c, "tanh"), c * np.tanh(z / c), rtol=1e-15)


def test_poly_type_caps_the_uncapped_logits():
    plain = tiny_config(ternary=FLOAT)
    capped = tiny_config(ternary=FLOAT, final_logit_softcapping=1.5, final_logit_softcapping_type="poly")
    w, ids = _weights(plain), _ids(plain)
    raw = reference_logits(plain, w, ids)
    assert np.abs(raw).max() > 1.7 * 1.5  # the clamp is reached
    u = np.clip(raw / 1.5, -2, 2)
    np.testing.assert_allclose(reference_logits(capped, w, ids), 1.5 * np.clip(u - u ** 3 / 3 + u ** 5 / 15, -1, 1),
                               rtol=1e-14)


def test_poly_needs_a_cap_and_only_two_types_exist():
    with pytest.raises(ConfigError, match="final_logit_softcapping_type.*final_logit_softcapping"):
        tiny_config(final_logit_softcapping_type="poly")
    with pytest.raises(ConfigError, match="model.final_logit_softcapping_type: 'polynomial' .*tanh, poly"):
        tiny_config(final_logit_softcapping=3.0, final_logit_softcapping_type="polynomial")


# ---- vocab_bias -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [None, 2.0])
def test_vocab_bias_is_added_before_the_cap(cap):
    plain = tiny_config(ternary=FLOAT)
    biased = tiny_config(ternary=FLOAT, vocab_bias=True, final_logit_softcapping=cap)
    w, ids = _weights(biased), _ids(plain)
    raw = reference_logits(plain, {k: v for k, v in w.items() if k != "model.vocab_bias"}, ids)
    z = raw + w["model.vocab_bias"]
    np.testing.assert_allclose(reference_logits(biased, w, ids), z if cap is None else cap * np.tanh(z / cap),
                               rtol=1e-14)
    assert init_weights(biased.model)["model.vocab_bias"].tolist() == [0.0] * 256  # starts at zero


# ---- embed_dim ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_identity_projections_are_the_unfactored_model(tied):
    """embed_dim = hidden with embed_proj = I (and embed_proj_rev = I when tied) is the plain model."""
    plain = tiny_config(ternary=FLOAT, tie_word_embeddings=tied)
    factored = tiny_config(ternary=FLOAT, tie_word_embeddings=tied, embed_dim=64)
    w, ids = _weights(plain), _ids(plain)
    eye = np.eye(64, dtype=np.float32)
    fw = {**w, "model.embed_proj.weight": eye, **({"model.embed_proj_rev.weight": eye} if tied else {})}
    np.testing.assert_allclose(reference_logits(factored, fw, ids), reference_logits(plain, w, ids), rtol=1e-13,
                               atol=1e-13)
    other = reference_logits(factored, {**fw, "model.embed_proj.weight": 2 * eye}, ids)
    assert np.abs(other - reference_logits(plain, w, ids)).max() > 1e-3  # embed_proj is read


def test_factored_tied_head_projects_down_then_reads_the_embedding():
    """Logits of a factored tied model = those of an untied one whose head is E @ R (R = embed_proj_rev)."""
    cfg = tiny_config(ternary=FLOAT, embed_dim=16)
    untied = tiny_config(ternary=FLOAT, embed_dim=16, tie_word_embeddings=False)
    w, ids = _weights(cfg), _ids(cfg)
    head = w["model.embed_tokens.weight"].astype(np.float64) @ w["model.embed_proj_rev.weight"]
    uw = {**{k: v for k, v in w.items() if k != "model.embed_proj_rev.weight"}, "lm_head.weight": head}
    np.testing.assert_allclose(reference_logits(untied, uw, ids), reference_logits(cfg, w, ids), rtol=1e-12,
                               atol=1e-12)


def test_embed_dim_shapes_and_roles():
    from shared.spec.params import parameter_specs
    tied = parameter_specs(tiny_config(embed_dim=16).model)
    untied = parameter_specs(tiny_config(embed_dim=16, tie_word_embeddings=False).model)
    assert tied["model.embed_tokens.weight"].shape == (256, 16)
    assert (tied["model.embed_proj.weight"].shape, tied["model.embed_proj_rev.weight"].shape) == ((64, 16), (16, 64))
    assert "model.embed_proj_rev.weight" not in untied and untied["lm_head.weight"].shape == (256, 64)
    for n in ("model.embed_proj.weight", "model.embed_proj_rev.weight"):
        assert (tied[n].role, tied[n].target, tied[n].init) == ("matrix", None, "normal"), n
    with pytest.raises(ConfigError, match="model.embed_dim"):
        tiny_config(embed_dim=0)
    with pytest.raises(ConfigError, match="group_size=32 does not divide the input dimension 16 of model.embed_tokens"):
        tiny_config(embed_dim=16, ternary=dict(targets=["attn", "mlp", "embed", "lm_head"]))


def test_new_model_tensors_follow_the_layers_and_leave_their_streams():
    """embed_proj, embed_proj_rev and vocab_bias come after the layers in canonical order, so every
    tensor the base model has keeps its initial values."""
    from shared.spec.params import parameter_specs
    cfg = tiny_config(embed_dim=64, vocab_bias=True)
    assert list(parameter_specs(cfg.model))[-4:] == ["model.embed_proj.weight", "model.norm.weight",
                                                     "model.embed_proj_rev.weight", "model.vocab_bias"]
    base, new = init_weights(tiny_config().model, 3), init_weights(cfg.model, 3)
    for k in base:
        np.testing.assert_array_equal(base[k], new[k], err_msg=k)


# ---- out_proj_norm --------------------------------------------------------------------------------
def test_out_proj_norm_is_subln_with_unit_gains_at_lambda_one():
    normed = tiny_config(ternary=FLOAT, out_proj_norm=True)
    subln = tiny_config(ternary=FLOAT, subln=True)
    w, ids = _weights(normed), _ids(normed)
    sw = dict(init_weights(subln.model))  # unit sub-norm gains
    sw.update(w)
    got = reference_logits(normed, w, ids)
    np.testing.assert_allclose(got, reference_logits(subln, sw, ids), rtol=1e-12, atol=1e-12)
    assert np.abs(got - reference_logits(tiny_config(ternary=FLOAT), w, ids)).max() > 1e-2  # the norm acts
    # and, unlike SubLN, it is not blended in by the ternary warm-up: at lambda 0 the ternary model is
    # the float one with the norm still in place
    t_normed = tiny_config(out_proj_norm=True)
    np.testing.assert_allclose(reference_logits(t_normed, w, ids, 0.0), got, rtol=1e-12, atol=1e-12)


def test_out_proj_norm_and_subln_are_exclusive():
    with pytest.raises(ConfigError, match="out_proj_norm and model.subln"):
        tiny_config(out_proj_norm=True, subln=True)
