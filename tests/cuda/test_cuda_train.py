"""Training on CUDA (pytest -m cuda): the same steps as on the CPU, the same ternary codes bit for bit,
no host sync inside a step, compile on == off."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.cuda.lane import CUDA_LANE, FLOAT32, LANE_VARIANTS, run_steps, trainer_on, windows
from tests.variants import variant_config
from ternary_cuda.layers import ternarize

pytestmark = CUDA_LANE
TRAIN = dict(batch_size=2, seq_len=32, grad_accum=2)


@pytest.mark.parametrize("variant", LANE_VARIANTS)
def test_training_steps_on_cuda_equal_the_cpu(variant, monkeypatch):
    """float32 without TF32: the losses, gradient norms and weights of 3 steps agree with the CPU's to
    float32 rounding (different matmul kernels, same math)."""
    cfg = variant_config(variant, train={**TRAIN, **FLOAT32})
    batches = windows(cfg, 3)
    cpu, gpu = trainer_on("cpu", cfg, monkeypatch), trainer_on("cuda", cfg, monkeypatch)
    assert next(gpu.model.parameters()).is_cuda and not next(cpu.model.parameters()).is_cuda
    np.testing.assert_allclose(run_steps(gpu, batches), run_steps(cpu, batches), rtol=2e-4, atol=1e-5)
    # Weights: an AdamW step moves every entry by about lr whatever its gradient's size, so an entry whose
    # gradient is ~0 may move either way on the two devices; nearly all must agree, none by more than that.
    w_cpu, w_gpu = cpu.numpy_weights(), gpu.numpy_weights()
    diffs = np.concatenate([np.abs(w_gpu[k] - w_cpu[k]).ravel() for k in w_cpu])
    assert np.mean(diffs > 1e-5) <= 1e-3 and diffs.max() <= 2 * cfg.train.lr * len(batches), (
        np.mean(diffs > 1e-5), diffs.max())


@pytest.mark.parametrize("group_size", [0, 32, 128])
def test_ternary_codes_and_scales_on_cuda_are_the_cpus_bit_for_bit(group_size):
    """Pairwise sums in a fixed order and true divisions: the same codes and scales on either device."""
    w = torch.from_numpy(np.random.default_rng(group_size).normal(0, 0.02, (256, 512)).astype(np.float32))
    codes_cpu, s_cpu = ternarize(w, group_size)
    codes_gpu, s_gpu = ternarize(w.cuda(), group_size)
    assert torch.equal(codes_gpu.cpu(), codes_cpu) and torch.equal(s_gpu.cpu(), s_cpu)


def test_a_training_step_does_not_wait_for_the_gpu(monkeypatch):
    """Between the loop's fetches the host only queues work: any synchronising call inside step (a host
    copy, an .item(), a tensor made from host data) raises under sync debug mode "error"."""
    cfg = variant_config(LANE_VARIANTS[0], train={**TRAIN, "precision": "bf16", "compile": False})
    trainer = trainer_on("cuda", cfg, monkeypatch)
    batches = windows(cfg, 2)
    handles = [trainer.step(batches[0], 0)]  # first step: lazy initialisations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        handles.append(trainer.step(batches[1], 1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(np.isfinite(trainer.fetch(handles)).all(axis=1))


@pytest.mark.parametrize("precision,tolerance", [("float32", 1e-4), ("bf16", 2e-2)])
def test_compile_on_equals_off(precision, tolerance, monkeypatch):
    """torch.compile changes where roundings fall, not the math: 3 steps' losses agree (float32 without
    TF32 to 1e-4 relative; bf16 within bench/cuda_step.py's loss tolerance, 0.02 nats)."""
    torch._dynamo.reset()
    base = {**TRAIN, "precision": precision, "tf32": False}
    eager_cfg = variant_config(LANE_VARIANTS[0], train={**base, "compile": False})
    compiled_cfg = variant_config(LANE_VARIANTS[0], train={**base, "compile": True})
    batches = windows(eager_cfg, 3)
    eager = run_steps(trainer_on("cuda", eager_cfg, monkeypatch), batches)
    compiled_trainer = trainer_on("cuda", compiled_cfg, monkeypatch)
    assert compiled_trainer.forward is not compiled_trainer.wrapped  # it really compiled
    compiled = run_steps(compiled_trainer, batches)
    losses = np.array([[r[0] for r in eager], [r[0] for r in compiled]])
    if precision == "float32":
        np.testing.assert_allclose(losses[1], losses[0], rtol=tolerance)
    else:
        np.testing.assert_allclose(losses[1], losses[0], atol=tolerance)
