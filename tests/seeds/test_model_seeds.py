"""Regression tests for the model-level bug classes of docs/pitfalls.md (SEEDS S1-S5, S10, S13), in both backends."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.data.batching import inputs_and_targets
from shared.spec.checkpoint import CheckpointError
from shared.data.checks import TokenIdError
from shared.spec.init import init_weights
from shared.spec.ternary import dequantize, quantize
from tests.variants import DEFAULT_INIT, TINY, tiny_config


def rand_ids(shape, vocab=TINY["vocab_size"], seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def _rms_norm(x, w, eps):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("ternary", [True, False])
def test_fresh_model_loss_is_close_to_ln_vocab(backend, ternary):
    """A loss above ln(V) at initialisation is a red flag (S1: ~22 nats with a 32k vocabulary)."""
    for vocab, extra in ((256, {}), (1024, dict(tie_word_embeddings=False, hidden_act="relu2"))):
        cfg = tiny_config(ternary=dict(enabled=ternary), vocab_size=vocab, initializer_range=DEFAULT_INIT, **extra)
        model = backend.model.Model(cfg, seed=1)
        x, y = inputs_and_targets(rand_ids((4, 33), vocab))
        loss = backend.numpy(backend.loss.next_token_loss(model, backend.tensor(x), backend.tensor(y)))
        assert abs(float(loss) - math.log(vocab)) < 0.05, (vocab, float(loss))


def test_s1_blocks_add_to_the_residual_stream(backend):
    """With the attention and MLP output projections zeroed, every block is the identity, so the
    logits are exactly the embedding -> final norm -> head path. A block that returned its
    branch output instead of adding it to its input would give logits of zero vectors instead."""
    cfg = tiny_config(ternary=dict(enabled=False))
    w = init_weights(cfg.model, seed=2)
    for name in w:
        if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            w[name] = np.zeros_like(w[name])
    model = backend.model.Model(cfg, w)
    ids = rand_ids((2, 9))
    emb = w["model.embed_tokens.weight"]
    h = _rms_norm(emb[ids], w["model.norm.weight"], cfg.model.rms_norm_eps)
    expected = h @ emb.T
    np.testing.assert_allclose(backend.logits(model, ids), expected, atol=1e-4)


def test_s2_sublayers_see_normalised_inputs(backend):
    """Pre-norm: a block's branch output is invariant to scaling its input (RMSNorm first), so
    layer(c * x) - c * x == layer(x) - x for the attention half. Without the norm it is not."""
    cfg = tiny_config(ternary=dict(enabled=False), num_hidden_layers=1)
    w = init_weights(cfg.model, seed=3)
    w["model.layers.0.mlp.down_proj.weight"] = np.zeros_like(w["model.layers.0.mlp.down_proj.weight"])
    model = backend.model.Model(cfg, w)
    layer = model.model.layers[0]
    x = np.random.default_rng(0).standard_normal((2, 8, TINY["hidden_size"])).astype(np.float32)

    def branch(c):
        out = layer(backend.tensor(c * x))
        return backend.numpy(out) - c * x

    b1, b100 = branch(1.0), branch(100.0)
    assert np.abs(b1).max() > 1e-3  # the branch does something
    np.testing.assert_allclose(b100, b1, atol=2e-3)


def _rope_reference(x: np.ndarray, theta: float) -> np.ndarray:
    """Hugging Face rotate_half RoPE on (..., T, D), in float64."""
    T, D = x.shape[-2:]
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., D // 2:], x[..., : D // 2]], -1)
    return x * cos + rot * sin


def test_s3_rope_pairs_the_two_halves(backend):
    """RoPE rotates (x_i, x_{i + D/2}) pairs as Hugging Face does, not interleaved (x_2i, x_2i+1)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 12, 16)).astype(np.float32)
    got = backend.numpy(backend.model.rope(backend.tensor(x), 10000.0))
    np.testing.assert_allclose(got, _rope_reference(x.astype(np.float64), 10000.0), atol=1e-5)
    # the interleaved convention (pairs (x_2i, x_2i+1)) gives a different answer on the same input
    halves_order = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    inv_order = np.argsort(halves_order)
    interleaved = _rope_reference(x[..., halves_order].astype(np.float64), 10000.0)[..., inv_order]
    assert np.abs(got - interleaved).max() > 1e-2


def test_s3_attention_scores_depend_on_relative_position(backend):
    """q_i . k_j after RoPE depends only on i - j."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    seq = np.zeros((1, 1, 10, 16), np.float32)
    seq[..., :, :] = q
    rq = backend.numpy(backend.model.rope(backend.tensor(seq), 10000.0))[0, 0]
    seq[..., :, :] = k
    rk = backend.numpy(backend.model.rope(backend.tensor(seq), 10000.0))[0, 0]
    assert abs(rq[5] @ rk[2] - rq[7] @ rk[4]) < 1e-4
    assert abs(rq[5] @ rk[2] - rq[5] @ rk[4]) > 1e-3


def test_s4_forward_uses_the_ternary_weights_not_the_latent_ones(backend):
    """Output = x @ (q * s).T with q, s from the reference; any rescaling would show up here."""
    rng = np.random.default_rng(4)
    lin = backend.layers.TernaryLinear(64, 48, ternary=True, group_size=32)
    w = (rng.standard_normal((48, 64)) * 0.05).astype(np.float32)
    lin.weight = backend.tensor(w) if backend.name == "mlx" else backend._torch.nn.Parameter(backend.tensor(w))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = backend.numpy(lin(backend.tensor(x)))
    wt = dequantize(*quantize(w, 32), 32)
    np.testing.assert_allclose(y, x @ wt.T, atol=1e-5)
    assert np.abs(y - x @ w.T).max() > 1e-2


def test_s5_targets_are_inputs_shifted_by_exactly_one(backend):
    windows = rand_ids((3, 17))
    x, y = inputs_and_targets(windows)
    assert x.shape == y.shape == (3, 16)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], windows[:, -1])
    # the loss scores position t's logits against token t + 1
    cfg = tiny_config()
    model = backend.model.Model(cfg, seed=5)
    logits = backend.logits(model, x).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    manual = -np.take_along_axis(logp, y[..., None], -1).mean()
    loss = float(backend.numpy(backend.loss.next_token_loss(model, backend.tensor(x), backend.tensor(y))))
    assert abs(loss - manual) < 1e-5
    shifted_wrong = -np.take_along_axis(logp[:, 1:], y[:, :-1, None], -1).mean()
    assert abs(loss - shifted_wrong) > 1e-3


def test_s10_loading_is_strict_and_complete(backend):
    cfg = tiny_config(tie_word_embeddings=False)
    w = init_weights(cfg.model, seed=6)
    model = backend.model.Model(cfg, w)
    got = model.numpy_weights()
    assert set(got) == set(w)
    for k in w:  # every tensor, including those of nested submodules, holds the loaded values
        np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    bad = dict(w)
    del bad["model.layers.1.mlp.up_proj.weight"]
    bad["model.layers.0.self_attn.extra.weight"] = np.zeros((2, 2), np.float32)
    bad["model.norm.weight"] = np.ones((3,), np.float32)
    with pytest.raises(CheckpointError) as e:
        backend.model.Model(cfg, bad)
    msg = str(e.value)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.extra.weight", "model.norm.weight"):
        assert name in msg


@pytest.mark.parametrize("bad_id", [-1, TINY["vocab_size"], 10_000])
def test_s13_out_of_range_ids_are_an_error_not_clamped(backend, bad_id):
    model = backend.model.Model(tiny_config(), seed=7)
    ids = rand_ids((1, 8))
    ids[0, 3] = bad_id
    with pytest.raises(TokenIdError, match=str(bad_id)):
        model(backend.tensor(ids))
    good = rand_ids((1, 8))
    targets = good.copy()
    targets[0, 5] = bad_id
    with pytest.raises(TokenIdError, match="targets"):
        backend.loss.next_token_loss(model, backend.tensor(good), backend.tensor(targets))
