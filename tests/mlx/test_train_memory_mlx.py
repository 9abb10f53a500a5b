"""The MLX trainer's memory paths (issue #12 item 6): the chunked loss runs one chunk at a time, and the
parameter-by-parameter update (Trainer.update_one_by_one, on for large models on the host) gives the
fused step's bits with fewer arrays alive."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from tests.variants import tiny_config, variant_config
from ternary_mlx.loss import chunked_loss
from ternary_mlx.model import Model
from ternary_mlx.train import Trainer


def _loss_grad_peak(chunk: int) -> int:
    """Bytes MLX allocates above what is alive, for the loss and gradients of a tied head (vocab 8192,
    hidden 64) on 256 tokens with a teacher, in chunks of `chunk` tokens."""
    cfg = tiny_config(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    student, teacher = Model(cfg, seed=0), Model(cfg, seed=1)
    rng = np.random.default_rng(0)
    h, th = (mx.array(rng.standard_normal((1, 256, 64)).astype(np.float32)) for _ in range(2))
    y = mx.array(rng.integers(0, 8192, (1, 256)))

    def loss(params, h):
        student.update(params)
        return chunked_loss(student, h, y, chunk, teacher, th, 0.5, 2.0)[0]

    f = mx.value_and_grad(loss, argnums=(0, 1))
    mx.reset_peak_memory()
    alive = mx.get_active_memory()
    mx.eval(f(student.trainable_parameters(), h))
    return mx.get_peak_memory() - alive


def test_chunks_are_not_all_alive_at_once():
    """Four chunks of 64 tokens need about a third of one chunk of 256 (measured 0.32-0.36): one
    chunk's tensors at a time. When MLX's scheduler interleaved the independent chunks, this took
    0.58 of it here (and in the compiled trainer step at Qwen3's vocabulary, as much as one chunk
    of the whole batch)."""
    whole, quarter = _loss_grad_peak(256), _loss_grad_peak(64)
    assert quarter < 0.45 * whole, (quarter, whole)


@pytest.mark.parametrize("row,train,teacher", [
    ("gqa-tied-silu-G64", dict(optimizer="adamw", loss_chunk_tokens=5), True),
    ("mha-untied-relu2-G32", dict(optimizer="muon", ema_decay=0.9, activation_checkpointing=True), False),
])
def test_update_one_by_one_equals_the_fused_step(row, train, teacher):
    """Losses, weights and optimizer state bit for bit after 2 steps of 2 micro-batches."""
    runs = []
    for one_by_one in (False, True):
        cfg = variant_config(row, train=dict(seq_len=16, batch_size=2, grad_accum=2, **train))
        trainer = Trainer(cfg, Model(cfg, seed=1), teacher=Model(variant_config(row), seed=9) if teacher else None)
        assert not trainer.update_one_by_one  # a tiny model: the fused step by default
        trainer.update_one_by_one = one_by_one
        windows = np.random.default_rng(4).integers(0, cfg.model.vocab_size, (2, 2, 17)).astype(np.int32)
        losses = np.array(trainer.fetch([trainer.step(windows, i) for i in range(2)]))
        runs.append((losses, {**trainer.numpy_weights(), **trainer.numpy_optimizer_state()}))
    (fused_losses, fused), (losses, tensors) = runs
    np.testing.assert_array_equal(losses, fused_losses)
    assert tensors.keys() == fused.keys()
    for k in fused:
        np.testing.assert_array_equal(tensors[k], fused[k], err_msg=k)
