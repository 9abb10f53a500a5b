"""Gradients agree between MLX and torch, and the straight-through estimator is what DESIGN 3.2 says."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlx.utils import tree_flatten

from shared.spec import ternary as ref
from ternary_cuda import layers as TL
from ternary_cuda.model import Model as TorchModel
from ternary_mlx import layers as ML
from ternary_mlx.model import Model as MLXModel

from tests.variants import VARIANTS, tiny_config, variant_config

from .helpers import record, varied_weights


def mlx_grads(model, ids: np.ndarray):
    x = mx.array(ids)

    def loss_fn(m):
        logits = m(x)
        return nn.losses.cross_entropy(logits[:, :-1], x[:, 1:], reduction="mean")

    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    mx.eval(loss, grads)
    return float(loss), {k: np.array(v) for k, v in tree_flatten(grads)}


def torch_grads(model, ids: np.ndarray):
    x = torch.from_numpy(ids.astype(np.int64))
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    return float(loss.detach()), {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


def _check_gradients(name, cfg, lam):
    """MLX and torch models of `cfg` (same seed, quantization lambda `lam`): loss and every gradient agree."""
    m_mlx, m_torch = MLXModel(cfg, seed=5), TorchModel(cfg, seed=5)
    # at the seed's init, but no zero projection (nothing before one would get a gradient)
    w = varied_weights(cfg, m_mlx.numpy_weights(), np.random.default_rng(6), gains=False)
    m_mlx.load_numpy(w)
    m_torch.load_numpy(w)
    m_mlx.set_quant_lambda(lam)
    m_torch.set_quant_lambda(lam)
    ids = np.random.default_rng(1).integers(0, cfg.model.vocab_size, (2, 33))
    loss_m, gm = mlx_grads(m_mlx, ids)
    loss_t, gt = torch_grads(m_torch, ids)
    assert abs(loss_m - loss_t) < 1e-5
    assert sorted(gm) == sorted(gt) == sorted(m_torch.numpy_weights())  # a gradient for every latent
    worst = 0.0
    for k in gt:
        assert gm[k].shape == gt[k].shape, k
        scale = float(np.abs(gt[k]).max())
        assert scale > 0, f"{k}: zero gradient (the straight-through path is broken?)"
        rel = float(np.abs(gm[k] - gt[k]).max()) / scale
        worst = max(worst, rel)
        assert rel < 1e-4, f"{k}: max |g_mlx - g_torch| / max|g| = {rel:.3g}"
    record("grad_rel_diff", name, max_rel_diff=worst, loss_mlx=loss_m, loss_torch=loss_t)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match(variant):
    _check_gradients(variant, variant_config(variant), 1.0)


def test_gradients_match_during_the_lambda_warm_up():
    """lambda 0.5: the projection halfway between the latent and the ternary weight (per tensor)."""
    _check_gradients("ternary-pertensor-lambda0.5", tiny_config(ternary=dict(group_size=0)), 0.5)


# ---- straight-through estimator ---------------------------------------------------------------------
# For y = x @ W_t^T with W_t = ternary(W), the gradient with respect to the latent W is exactly the
# gradient a plain linear layer with weight W_t gets with respect to its weight: dL/dW = dL/dy^T x.
@pytest.mark.parametrize("group_size", [32, 0])
@pytest.mark.parametrize("activation_bits", [None, 8])
def test_straight_through_mlx(group_size, activation_bits):
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((48, 96)) * 0.05).astype(np.float32)
    x = mx.array(rng.standard_normal((3, 5, 96)).astype(np.float32))
    cot = mx.array(rng.standard_normal((3, 5, 48)).astype(np.float32))
    layer = ML.TernaryLinear(96, 48, True, group_size, ref.EPS, activation_bits)
    layer.weight = mx.array(w)
    wt = ref.ternary_weight(w, group_size)
    plain = ML.TernaryLinear(96, 48, False)
    plain.weight = mx.array(wt)
    x_plain = x if activation_bits is None else mx.array(ref.quantize_activations(np.array(x), activation_bits))

    _, g_ste = nn.value_and_grad(layer, lambda m: (m(x) * cot).sum())(layer)
    _, g_plain = nn.value_and_grad(plain, lambda m: (m(x_plain) * cot).sum())(plain)
    g_ste, g_plain = np.array(g_ste["weight"]), np.array(g_plain["weight"])
    assert np.abs(g_plain).max() > 0.1
    np.testing.assert_allclose(g_ste, g_plain, rtol=1e-6, atol=1e-6 * np.abs(g_plain).max())
    # the layer's forward really used W_t, not W
    np.testing.assert_allclose(np.array(layer(x)), np.array(plain(x_plain)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("group_size", [32, 0])
@pytest.mark.parametrize("activation_bits", [None, 8])
def test_straight_through_torch(group_size, activation_bits):
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((48, 96)) * 0.05).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((3, 5, 96)).astype(np.float32))
    cot = torch.from_numpy(rng.standard_normal((3, 5, 48)).astype(np.float32))
    layer = TL.TernaryLinear(96, 48, True, group_size, ref.EPS, activation_bits)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    wt = torch.from_numpy(ref.ternary_weight(w, group_size)).requires_grad_(True)
    x_plain = x if activation_bits is None else torch.from_numpy(
        ref.quantize_activations(x.numpy(), activation_bits))

    (layer(x) * cot).sum().backward()
    (F.linear(x_plain, wt) * cot).sum().backward()
    g_ste, g_plain = layer.weight.grad.numpy(), wt.grad.numpy()
    assert np.abs(g_plain).max() > 0.1
    np.testing.assert_allclose(g_ste, g_plain, rtol=1e-6, atol=1e-6 * np.abs(g_plain).max())
    with torch.no_grad():
        np.testing.assert_allclose(layer(x).numpy(), F.linear(x_plain, wt).numpy(), rtol=0, atol=1e-5)
