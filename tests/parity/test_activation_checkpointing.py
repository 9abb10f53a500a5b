"""Activation checkpointing (train.activation_checkpointing): each decoder layer recomputed in the
backward gives the plain step's loss and gradients in each backend (rows with value residual, U-Net
skips / residual mix, depth recurrence with experts, stochastic depth), training steps with a
teacher and chunked loss reach the same losses, weights and ternary codes, the checkpointed path
really runs (and, in torch, keeps less for the backward), and the one combination it cannot run is
refused in one line."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlx.utils import tree_flatten

from shared.spec.config import ConfigError
from shared.spec.params import ternary_parameters
from shared.spec.ternary import quantize
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer

from tests.variants import variant_config

from .helpers import varied_weights

ROWS = ["gqa-tied-silu-G64", "attn-vres-xsa1-gate-lnscale-rope0.5-G32",
        "pg-block-L5-weightless-unet-mix-scales-relu2-G64", "moe2-recur-L3-U2-stochdepth0.5-mix-G32"]
RTOL = 1e-6  # the recomputation runs the same ops on the same values: equal up to float32 rounding


def _model(cls, cfg, checkpointed: bool):
    model = cls(cfg, seed=5)
    model.load_numpy(varied_weights(cfg, model.numpy_weights(), np.random.default_rng(7)))
    model.model.checkpoint_layers = checkpointed
    return model


def _batch(cfg):
    rng = np.random.default_rng(3)
    keep = rng.choice([0.0, 2.0], (cfg.model.num_hidden_layers, 2)) if cfg.model.stochastic_depth else None
    return rng.integers(0, cfg.model.vocab_size, (2, 12)), rng.integers(0, cfg.model.vocab_size, (2, 12)), keep


def mlx_loss_and_grads(cfg, checkpointed: bool):
    model = _model(MLXModel, cfg, checkpointed)
    x, y, keep = _batch(cfg)
    keep = None if keep is None else mx.array(keep, mx.float32)

    def loss_fn(x, y):
        return nn.losses.cross_entropy(model(x, keep), y, reduction="mean")

    value, grads = nn.value_and_grad(model, loss_fn)(mx.array(x), mx.array(y))
    mx.eval(value, grads)
    return float(value), {k: np.array(g) for k, g in tree_flatten(grads)}


def torch_loss_and_grads(cfg, checkpointed: bool):
    model = _model(TorchModel, cfg, checkpointed)
    x, y, keep = _batch(cfg)
    keep = None if keep is None else torch.tensor(keep, dtype=torch.float32)
    logits = model(torch.from_numpy(x), keep)
    value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
    value.backward()
    return value.item(), {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


RUNS = {"mlx": mlx_loss_and_grads, "torch": torch_loss_and_grads}
CHECKPOINT_FN = {"mlx": (nn.utils, "checkpoint"), "torch": (torch.utils.checkpoint, "checkpoint")}


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_checkpointed_loss_and_gradients_equal_plain(backend, row, monkeypatch):
    cfg = variant_config(row)
    plain = RUNS[backend](cfg, False)
    calls = []
    owner, name = CHECKPOINT_FN[backend]
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    loss, grads = RUNS[backend](cfg, True)
    assert len(calls) == cfg.model.num_hidden_layers  # every applied layer went through the checkpoint
    assert loss == pytest.approx(plain[0], rel=RTOL)
    assert sorted(grads) == sorted(plain[1])
    for k, g in plain[1].items():
        np.testing.assert_allclose(grads[k], g, rtol=RTOL, atol=RTOL * float(np.abs(g).max()), err_msg=k)


def _saved_bytes(checkpointed: bool) -> int:
    """Bytes autograd keeps for the backward of one torch forward (the checkpoint's own inputs included)."""
    cfg = variant_config("gqa-tied-silu-G64")
    model = _model(TorchModel, cfg, checkpointed)
    x, y, _ = _batch(cfg)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        model(torch.from_numpy(x))
    return sum(kept)


def test_torch_checkpointing_keeps_less_for_the_backward():
    """The layers' activations and ternarized weights are not kept: the plain forward keeps over
    twice the checkpointed one's bytes at this size (the embedding and head dominate what is left)."""
    assert 2 * _saved_bytes(True) < _saved_bytes(False)


def _train(backend: str, checkpointed: bool):
    trainer_cls, model_cls = {"mlx": (MLXTrainer, MLXModel), "torch": (TorchTrainer, TorchModel)}[backend]
    train = dict(seq_len=16, batch_size=2, grad_accum=2, optimizer="adamw", loss_chunk_tokens=5,
                 activation_checkpointing=checkpointed)
    cfg = variant_config("moe2-recur-L3-U2-stochdepth0.5-mix-G32", train=train)
    trainer = trainer_cls(cfg, model_cls(cfg, seed=1), teacher=model_cls(variant_config("gqa-tied-silu-G64"), seed=9))
    windows = np.random.default_rng(4).integers(0, cfg.model.vocab_size, (2, 2, 17)).astype(np.int32)
    losses = trainer.fetch([trainer.step(windows, i) for i in range(2)])
    return cfg, np.array(losses), trainer.numpy_weights()


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_training_steps_with_checkpointing_equal_without(backend):
    """Two AdamW steps of 2 micro-batches, a teacher, loss chunks of 5, stochastic depth: the same
    losses, gradient norms and weights, and every ternary matrix has the same codes and scales."""
    cfg, l0, w0 = _train(backend, False)
    _, l1, w1 = _train(backend, True)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for k in w0:
        np.testing.assert_allclose(w1[k], w0[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for k in ternary_parameters(cfg):
        codes0, scales0 = quantize(w0[k], cfg.ternary.group_size)
        codes1, scales1 = quantize(w1[k], cfg.ternary.group_size)
        np.testing.assert_array_equal(codes1, codes0, err_msg=k)
        np.testing.assert_allclose(scales1, scales0, rtol=1e-5, err_msg=k)


def test_checkpointing_with_the_experts_balance_loss_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        variant_config("moe3-top1-silu-G64", train=dict(activation_checkpointing=True, moe_aux_loss=1e-2))
    message = str(e.value)
    assert "\n" not in message
    assert "train.activation_checkpointing" in message and "train.moe_aux_loss" in message
