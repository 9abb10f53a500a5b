"""The chunked cross-entropy / distillation loss (train.loss_chunk_tokens) equals the whole-batch
loss and its gradients in each backend and across backends, over every variant row whose head
differs (tied, untied, factored embedding, vocab bias, soft-caps, ternary head), with a teacher and
the z-loss; a training step with chunks equals one without; a bfloat16 teacher stays within a
stated tolerance of a float32 one (train.teacher_dtype)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from ternary_cuda import loss as TLoss
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx import loss as MLoss
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer

from tests.variants import VARIANTS, variant_config

from .helpers import varied_weights

HEAD_KEYS = {"tie_word_embeddings", "embed_dim", "vocab_bias", "final_logit_softcapping"}
HEAD_ROWS = ["gqa-tied-silu-G64"] + [n for n, (m, t) in VARIANTS.items()
              if HEAD_KEYS & set(m) or {"embed", "lm_head"} & set(t.get("targets", []))]
ALPHA, TEMP, Z = 0.3, 2.0, 0.1
CHUNK = 7  # 2 x 12 = 24 tokens: three chunks of 7 and a last one of 3


def _inputs(vocab: int):
    rng = np.random.default_rng(3)
    return rng.integers(0, vocab, (2, 12)), rng.integers(0, vocab, (2, 12))


def _models(cls, cfg):
    student, teacher = cls(cfg, seed=5), cls(cfg, seed=6)
    for m, seed in ((student, 7), (teacher, 8)):  # no zero projection (vocab bias, zero-init heads)
        m.load_numpy(varied_weights(cfg, m.numpy_weights(), np.random.default_rng(seed)))
        m.check_ids = False
    return student, teacher


def mlx_loss_and_grads(cfg, chunk: int | None):
    student, teacher = _models(MLXModel, cfg)
    x, y = (mx.array(a) for a in _inputs(cfg.model.vocab_size))

    def objective(x, y):
        if chunk is None:
            logits = student(x)
            kd = MLoss.distillation_loss(logits, y, mx.stop_gradient(teacher(x)), ALPHA, TEMP)
            return kd + Z * MLoss.z_loss_term(logits)
        kd, z = MLoss.chunked_loss(student, student.model(x), y, chunk, teacher, teacher.model(x), ALPHA, TEMP)
        return kd + Z * z

    value, grads = nn.value_and_grad(student, objective)(x, y)
    mx.eval(value, grads)
    return float(value), {k: np.array(g) for k, g in tree_flatten(grads)}


def torch_loss_and_grads(cfg, chunk: int | None):
    student, teacher = _models(TorchModel, cfg)
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in _inputs(cfg.model.vocab_size))
    with torch.no_grad():
        t_out = teacher(x) if chunk is None else teacher.model(x)
    if chunk is None:
        logits = student(x)
        value = TLoss.distillation_loss(logits, y, t_out, ALPHA, TEMP) + Z * TLoss.z_loss_term(logits)
    else:
        kd, z = TLoss.chunked_loss(student, student.model(x), y, chunk, teacher, t_out, ALPHA, TEMP)
        value = kd + Z * z
    value.backward()
    return value.item(), {k: p.grad.numpy().copy() for k, p in student.named_parameters()}


def _assert_close(a, b, rtol):
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=rtol)
    assert sorted(ga) == sorted(gb)
    for k in ga:
        scale = max(float(np.abs(gb[k]).max()), 1e-6)
        assert float(np.abs(ga[k] - gb[k]).max()) <= rtol * scale, k


@pytest.mark.parametrize("row", HEAD_ROWS)
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_chunked_equals_whole_batch(row, backend):
    run = mlx_loss_and_grads if backend == "mlx" else torch_loss_and_grads
    cfg = variant_config(row)
    _assert_close(run(cfg, CHUNK), run(cfg, None), 2e-5)


@pytest.mark.parametrize("row", HEAD_ROWS[:3])
def test_chunked_agrees_across_backends(row):
    cfg = variant_config(row)
    _assert_close(mlx_loss_and_grads(cfg, CHUNK), torch_loss_and_grads(cfg, CHUNK), 1e-4)


def _step(trainer_cls, model_cls, cfg, teacher_cfg=None, seed=1):
    teacher = None if teacher_cfg is None else model_cls(teacher_cfg, seed=9)
    trainer = trainer_cls(cfg, model_cls(cfg, seed=seed), teacher=teacher)
    windows = np.random.default_rng(4).integers(0, cfg.model.vocab_size, (2, 2, 17)).astype(np.int32)
    losses = trainer.fetch([trainer.step(windows, i) for i in range(2)])
    return np.array(losses), trainer.numpy_weights()


TRAINERS = {"mlx": (MLXTrainer, MLXModel), "torch": (TorchTrainer, TorchModel)}


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_training_steps_with_chunks_equal_without(backend):
    """Two steps of 2 micro-batches x 2 x 16 tokens, with a teacher, the z-loss and experts' balance
    loss: chunks of 5 reach the same losses and weights; chunks of 32 (the whole micro-batch) are
    the whole-batch path, bit for bit.

    Model seed 3, not 1: seed 1 gives one latent weight (layer 1, expert 0's gate_proj [107, 29]) a
    first gradient of about 1.2e-8, AdamW's eps, where the update lr * g / (|g| + eps) follows g's own
    float32 noise instead of lr * sign(g): its first update was 0.55 lr whole and 0.54 lr in chunks
    (every other weight of the tensor: 1.00 lr), 1.7e-4 relative apart after two steps with OpenBLAS
    on 2 threads against rtol 1e-4 (no code flip: the nearest |w| / scale sat 2.6e-6 from 0.5 and
    both paths agreed there). Seed 3's worst weight uses 0.21 (MLX's BLAS) and 0.10 (OpenBLAS, 2
    threads) of the tolerance."""
    row = "moe3-top1-silu-G64"
    train = dict(seq_len=16, batch_size=2, grad_accum=2, z_loss=1e-2, moe_aux_loss=1e-2, optimizer="adamw")
    runs = {c: _step(*TRAINERS[backend], variant_config(row, train={**train, "loss_chunk_tokens": c}),
                     variant_config(row), seed=3) for c in (0, 5, 32)}
    (l0, w0), (l5, w5), (l32, w32) = runs[0], runs[5], runs[32]
    np.testing.assert_allclose(l5, l0, rtol=1e-5)
    for k in w0:
        np.testing.assert_allclose(w5[k], w0[k], rtol=1e-4, atol=1e-6, err_msg=k)
        np.testing.assert_array_equal(w32[k], w0[k], err_msg=k)
    np.testing.assert_array_equal(l32, l0)


# A bfloat16 teacher keeps 8 bits of mantissa: its logits move by ~2^-8 relative, which moves the KD
# loss (alpha 0.5, T 2) of these tiny models by well under 1% (measured: about 0.1%).
BF16_TEACHER_RTOL = 1e-2


@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_bfloat16_teacher_within_tolerance(backend, chunk):
    train = dict(seq_len=16, batch_size=2, grad_accum=2, loss_chunk_tokens=chunk)
    cfg = {d: variant_config("mha-untied-relu2-G32", train={**train, "teacher_dtype": d})
           for d in ("float32", "bfloat16")}
    f32, _ = _step(*TRAINERS[backend], cfg["float32"], cfg["float32"])
    bf16, _ = _step(*TRAINERS[backend], cfg["bfloat16"], cfg["bfloat16"])
    np.testing.assert_allclose(bf16[:, 0], f32[:, 0], rtol=BF16_TEACHER_RTOL)
    assert not np.array_equal(bf16[:, 0], f32[:, 0])  # the teacher did run in bfloat16
