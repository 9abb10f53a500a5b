"""The NumPy float64 reference model (shared/spec/reference_model.py) against hand-checkable facts.

NumPy only. The parity suite compares the backends with this reference; these tests make sure the
reference itself is right, from cases whose answer is known without running it: RoPE on unit
vectors, attention with equal scores, a model whose blocks add nothing, and identities between
configs (lambda 0 is the float model, GQA is MHA with repeated key/value heads, ...).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.spec import ternary as T
from shared.spec.checkpoint import CheckpointError
from shared.data.checks import TokenIdError
from shared.spec.init import init_weights
from shared.spec.reference_model import (causal_attention, effective_weight, reference_forward, reference_logits,
                                    rms_norm, rope, ternary_names)
from tests.variants import tiny_config


def _weights(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """Shared init with random norm gains (0.5..1.5), so swapped or missing norms show."""
    rng = np.random.default_rng(seed + 100)
    return {k: (rng.uniform(0.5, 1.5, v.shape).astype(np.float32) if v.ndim == 1 else v)
            for k, v in init_weights(cfg.model, seed).items()}


def _ids(cfg, shape=(2, 9), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.model.vocab_size, shape)


# ---- the equations on hand-made inputs -----------------------------------------------------------
def test_rms_norm_by_hand():
    x = np.array([[3.0, 4.0]])  # mean of squares 12.5
    got = rms_norm(x, np.array([1.0, 2.0]), eps=0.5)  # sqrt(12.5 + 0.5) = sqrt(13)
    np.testing.assert_allclose(got, [[3 / math.sqrt(13), 8 / math.sqrt(13)]], rtol=1e-15)


def test_rope_rotates_halves_by_position_times_inv_freq():
    # D = 4, theta = 100: inv_freq = 100^(-0/4), 100^(-2/4) = 1, 0.1. Dimension i pairs with i + 2.
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, :, 0] = 1.0  # e0 at every position: pair (0, 2), angle p * 1
    got = rope(x, theta=100.0)[0, 0]
    for p in range(3):
        np.testing.assert_allclose(got[p], [math.cos(p), 0, math.sin(p), 0], atol=1e-15)
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, :, 3] = 1.0  # e3: the second half of pair (1, 3), angle p * 0.1
    got = rope(x, theta=100.0)[0, 0]
    for p in range(3):
        np.testing.assert_allclose(got[p], [0, -math.sin(0.1 * p), 0, math.cos(0.1 * p)], atol=1e-15)


def test_rope_scores_depend_only_on_the_offset():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    x = np.zeros((1, 2, 12, 8))
    x[0, 0], x[0, 1] = q, k  # the same q and k at every position
    r = rope(x, theta=10000.0)[0]
    assert np.allclose(r[0, 5] @ r[1, 2], r[0, 11] @ r[1, 8], atol=1e-12)  # offset 3 both times
    assert not np.isclose(r[0, 5] @ r[1, 2], r[0, 5] @ r[1, 4])
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(x[0], axis=-1), rtol=1e-12)


def test_causal_attention_equal_scores_average_the_past_and_gqa_groups_heads():
    # q = 0: every allowed score is equal, so position t outputs the mean of v[0..t].
    B, H, H_kv, T_, D = 1, 4, 2, 5, 3
    v = np.random.default_rng(1).standard_normal((B, H_kv, T_, D))
    out = causal_attention(np.zeros((B, H, T_, D)), np.zeros((B, H_kv, T_, D)), v)
    running_mean = np.cumsum(v, axis=2) / np.arange(1, T_ + 1)[:, None]
    for h in range(H):  # query heads 0, 1 read key/value head 0; heads 2, 3 read head 1 (repeat_kv)
        np.testing.assert_allclose(out[0, h], running_mean[0, h // 2], rtol=1e-12)


def test_attention_scale_is_head_dim_to_the_minus_half():
    # Two keys; the query matches key 1 with score q.k = 8 (D = 4): weights softmax([0, 8 / 2]).
    q = np.array([0.0, 0, 0, 0, 2, 2, 2, 2]).reshape(1, 1, 2, 4)
    k = np.array([0.0, 0, 0, 0, 1, 1, 1, 1]).reshape(1, 1, 2, 4)
    v = np.array([1.0, 0, 0, 0, 0, 1, 0, 0]).reshape(1, 1, 2, 4)
    out = causal_attention(q, k, v)[0, 0, 1]
    p1 = math.exp(4) / (1 + math.exp(4))
    np.testing.assert_allclose(out, [1 - p1, p1, 0, 0], rtol=1e-12)


# ---- the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_kw", [dict(), dict(tie_word_embeddings=False, hidden_act="relu2", qk_norm=False)])
def test_a_later_token_never_changes_earlier_logits(model_kw):
    cfg = tiny_config(ternary=dict(group_size=64), **model_kw)
    w, ids = _weights(cfg), _ids(cfg)
    a = reference_logits(cfg, w, ids)
    ids2 = ids.copy()
    ids2[:, 5] = (ids2[:, 5] + 1) % cfg.model.vocab_size
    b = reference_logits(cfg, w, ids2)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # bit for bit: no path from the future
    assert np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1).min() > 1e-6  # and it does change every later position


@pytest.mark.parametrize("tied", [True, False])
def test_blocks_that_add_nothing_leave_the_residual_stream_untouched(tied):
    # o_proj = down_proj = 0: with pre-norm residual blocks every layer is the identity, so the
    # logits are the final norm of the embedding times the head. A post-norm block or a missing
    # residual would renormalize or drop the stream (the gains are not 1).
    cfg = tiny_config(ternary=dict(enabled=False), tie_word_embeddings=tied)
    w = _weights(cfg)
    for name in w:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            w[name] = np.zeros_like(w[name])
    ids = _ids(cfg)
    e = w["model.embed_tokens.weight"].astype(np.float64)[ids]
    g = w["model.norm.weight"].astype(np.float64)
    h = e / np.sqrt((e ** 2).mean(-1, keepdims=True) + cfg.model.rms_norm_eps) * g
    head = w["model.embed_tokens.weight" if tied else "lm_head.weight"].astype(np.float64)
    np.testing.assert_allclose(reference_logits(cfg, w, ids), h @ head.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["silu", "relu2"])
def test_block_outputs_are_added_to_the_stream(act):
    # A layer with o_proj = 0 contributes only its MLP, n = RMSNorm(x):
    # down(silu(gate n) * up n) (SwiGLU) or down(relu(up n)^2).
    cfg = tiny_config(ternary=dict(enabled=False), num_hidden_layers=1, qk_norm=False, hidden_act=act)
    w = _weights(cfg)
    w["model.layers.0.self_attn.o_proj.weight"] = np.zeros_like(w["model.layers.0.self_attn.o_proj.weight"])
    ids = _ids(cfg, (1, 4))
    f = {k: v.astype(np.float64) for k, v in w.items()}
    eps, p = cfg.model.rms_norm_eps, "model.layers.0."

    def norm(x, g):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * g
    x = f["model.embed_tokens.weight"][ids]
    n = norm(x, f[p + "post_attention_layernorm.weight"])
    up = n @ f[p + "mlp.up_proj.weight"].T
    if act == "silu":
        gate = n @ f[p + "mlp.gate_proj.weight"].T
        h = gate * (1 + np.tanh(gate / 2)) / 2 * up  # silu = gate * sigmoid(gate), written another way
    else:
        h = np.where(up > 0, up * up, 0.0)
    x = x + h @ f[p + "mlp.down_proj.weight"].T
    want = norm(x, f["model.norm.weight"]) @ f["model.embed_tokens.weight"].T
    np.testing.assert_allclose(reference_logits(cfg, w, ids), want, rtol=1e-10, atol=1e-12)


def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group():
    gqa = tiny_config(ternary=dict(enabled=False))  # 4 query heads, 2 key/value heads
    mha = tiny_config(ternary=dict(enabled=False), num_key_value_heads=4)
    w, ids, D = _weights(gqa), _ids(gqa), gqa.model.head_dim
    w_mha = dict(w)
    for i in range(gqa.model.num_hidden_layers):
        for proj in ("k_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            heads = w[name].reshape(2, D, -1)
            w_mha[name] = np.repeat(heads, 2, axis=0).reshape(4 * D, -1)  # kv heads 0, 0, 1, 1
    np.testing.assert_allclose(reference_logits(mha, w_mha, ids), reference_logits(gqa, w, ids),
                               rtol=1e-12, atol=1e-12)


def test_untied_head_equal_to_the_embedding_is_the_tied_model():
    tied = tiny_config(ternary=dict(enabled=False))
    untied = tiny_config(ternary=dict(enabled=False), tie_word_embeddings=False)
    w, ids = _weights(tied), _ids(tied)
    got = reference_logits(untied, {**w, "lm_head.weight": w["model.embed_tokens.weight"]}, ids)
    np.testing.assert_array_equal(got, reference_logits(tied, w, ids))
    other = reference_logits(untied, {**w, "lm_head.weight": _weights(untied, 1)["lm_head.weight"]}, ids)
    assert np.abs(other - got).max() > 0.1  # the untied model does read lm_head


def test_softcap_is_c_tanh_of_the_uncapped_logits():
    plain = tiny_config(ternary=dict(enabled=False))
    capped = tiny_config(ternary=dict(enabled=False), final_logit_softcapping=2.0)
    w, ids = _weights(plain), _ids(plain)
    raw = reference_logits(plain, w, ids)
    assert np.abs(raw).max() > 2.0  # the cap is active
    np.testing.assert_allclose(reference_logits(capped, w, ids), 2.0 * np.tanh(raw / 2.0), rtol=1e-14)


def test_no_qk_norm_differs():
    w_cfg = tiny_config(ternary=dict(enabled=False))
    no = tiny_config(ternary=dict(enabled=False), qk_norm=False)
    w, ids = _weights(w_cfg), _ids(w_cfg)
    w_no = {k: v for k, v in w.items() if not k.endswith(("q_norm.weight", "k_norm.weight"))}
    assert np.abs(reference_logits(w_cfg, w, ids) - reference_logits(no, w_no, ids)).max() > 1e-2


# ---- ternary, lambda, SubLN, activation quantization ---------------------------------------------
def test_effective_weight_is_the_spec_projection():
    cfg = tiny_config(ternary=dict(group_size=32))
    w = init_weights(cfg.model, 0)["model.layers.0.mlp.up_proj.weight"]
    got = effective_weight(w, cfg, 1.0)
    assert got.dtype == np.float64
    want = T.ternary_weight(w, 32, cfg.ternary.eps)  # q * s: float32 values exactly representable
    assert np.array_equal(got.astype(np.float32).view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(got, want.astype(np.float64))
    half = effective_weight(w, cfg, 0.5)
    np.testing.assert_allclose(half, (w.astype(np.float64) + want) / 2, rtol=1e-15)


def test_ternary_on_and_off_differ_and_lambda_zero_is_the_float_model():
    on = tiny_config(ternary=dict(group_size=64))
    off = tiny_config(ternary=dict(enabled=False))
    w, ids = _weights(on), _ids(on)
    assert ternary_names(on) and not ternary_names(off)
    float_logits = reference_logits(off, w, ids)
    assert np.abs(reference_logits(on, w, ids) - float_logits).max() > 0.1
    np.testing.assert_allclose(reference_logits(on, w, ids, quant_lambda=0.0), float_logits, rtol=1e-13, atol=1e-13)


def test_which_weights_are_ternary_follows_the_targets():
    # Ternary MLP only = the float model with the MLP weights replaced by their projections q * s.
    cfg = tiny_config(ternary=dict(group_size=64, targets=["mlp"]))
    names = ternary_names(cfg)
    assert names and all(".mlp." in n for n in names)
    w, ids = _weights(cfg), _ids(cfg)
    projected = {k: (T.ternary_weight(v, 64) if k in names else v) for k, v in w.items()}
    want = reference_logits(tiny_config(ternary=dict(enabled=False)), projected, ids)
    np.testing.assert_array_equal(reference_logits(cfg, w, ids), want)


@pytest.mark.parametrize("ternary", [dict(group_size=64), dict(enabled=False)])
def test_subln_at_lambda_zero_is_the_model_without_it(ternary):
    sub = tiny_config(ternary=ternary, subln=True)
    plain = tiny_config(ternary=dict(enabled=False))
    w, ids = _weights(sub), _ids(sub)
    w_plain = {k: v for k, v in w.items() if "sub_norm" not in k}
    np.testing.assert_allclose(reference_logits(sub, w, ids, 0.0), reference_logits(plain, w_plain, ids),
                               rtol=1e-13, atol=1e-13)
    at_half, at_one = reference_logits(sub, w, ids, 0.5), reference_logits(sub, w, ids, 1.0)
    assert np.abs(at_half - at_one).max() > 1e-2 and np.abs(at_half - reference_logits(sub, w, ids, 0.0)).max() > 1e-2


def test_activation_quantization_changes_the_model_and_reports_margins():
    on = tiny_config(ternary=dict(group_size=64, activation_bits=8))
    off = tiny_config(ternary=dict(group_size=64))
    w, ids = _weights(on), _ids(on)
    a, margin = reference_forward(on, w, ids)
    b, no_margin = reference_forward(off, w, ids)
    assert np.isinf(no_margin).all()
    assert margin.shape == ids.shape and (margin >= 0).all() and (margin <= 0.5).all()
    assert np.abs(a - b).max() > 1e-3
    # The quantized input is the spec's float32 staircase: with every other weight zero the
    # embedding goes through the head only, whose input is quantized.
    cfg = tiny_config(ternary=dict(group_size=64, activation_bits=8, targets=["attn", "mlp", "embed", "lm_head"]),
                      num_hidden_layers=1)
    w = _weights(cfg)
    for n in w:
        if n.endswith(("o_proj.weight", "down_proj.weight")):
            w[n] = np.zeros_like(w[n])
    ids = _ids(cfg, (1, 3))
    E = T.ternary_weight(w["model.embed_tokens.weight"], 64).astype(np.float64)
    x = E[ids]
    h = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.model.rms_norm_eps) * w["model.norm.weight"]
    want = T.quantize_activations(h.astype(np.float32), 8).astype(np.float64) @ E.T
    np.testing.assert_allclose(reference_logits(cfg, w, ids), want, rtol=1e-6, atol=1e-6)


# ---- inputs that must be refused ------------------------------------------------------------------
def test_out_of_vocabulary_ids_raise():
    cfg = tiny_config(ternary=dict(group_size=64))
    w = _weights(cfg)
    for bad in (cfg.model.vocab_size, -1):
        ids = np.zeros((1, 4), np.int64)
        ids[0, 2] = bad
        with pytest.raises(TokenIdError):
            reference_logits(cfg, w, ids)


def test_bad_weights_shapes_and_lambda_raise():
    cfg = tiny_config(ternary=dict(group_size=64))
    w, ids = _weights(cfg), _ids(cfg)
    with pytest.raises(CheckpointError, match="missing"):
        reference_logits(cfg, {k: v for k, v in w.items() if k != "model.norm.weight"}, ids)
    with pytest.raises(CheckpointError, match="unexpected"):
        reference_logits(cfg, {**w, "lm_head.weight": w["model.embed_tokens.weight"]}, ids)
    with pytest.raises(ValueError, match="batch, seq_len"):
        reference_logits(cfg, w, ids[0])
    with pytest.raises(ValueError, match="quant_lambda"):
        reference_logits(cfg, w, ids, quant_lambda=1.5)
