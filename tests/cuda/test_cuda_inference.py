"""Inference on CUDA (pytest -m cuda): bf16 autocast logits near float32, KV-cache decoding equal to the
full forward, checkpoints saved from and loaded onto the GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.spec.checkpoint import read_checkpoint
from shared.train.generation import kv_cache_unsupported
from tests.cuda.lane import CUDA_LANE, FLOAT32, LANE_VARIANTS, run_steps, trainer_on, windows
from tests.variants import variant_config
from ternary_cuda import checkpoint
from ternary_cuda.generate import cached_last_logits, last_logits
from ternary_cuda.kv_cache import KVCache
from ternary_cuda.layers import frozen_weights
from ternary_cuda.model import Model

pytestmark = CUDA_LANE
# bench/cuda_step.py's stated tolerances on logits (soft-capped or O(1) at these sizes)
LOGITS_MEAN_ABS, LOGITS_MAX_ABS = 0.05, 0.5


def _ids(cfg, shape, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.model.vocab_size, shape)).cuda()


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("variant", LANE_VARIANTS)
def test_bf16_autocast_logits_are_near_float32(variant):
    cfg = variant_config(variant)
    model = Model(cfg, seed=0, device="cuda")
    ids = _ids(cfg, (2, 48))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(ids)
    assert got.dtype == torch.float32
    d = (got - ref).abs()
    assert d.mean().item() <= LOGITS_MEAN_ABS and d.max().item() <= LOGITS_MAX_ABS, (d.mean().item(), d.max().item())
    assert d.max().item() > 0  # autocast really ran in bf16


@pytest.mark.parametrize("variant", [v for v in LANE_VARIANTS if not kv_cache_unsupported(variant_config(v).model)])
def test_kv_cache_decoding_on_cuda_equals_the_full_forward(variant):
    cfg = variant_config(variant)
    model = Model(cfg, seed=0, device="cuda")
    ids = _ids(cfg, (1, 24))
    with torch.no_grad(), frozen_weights(model):
        full = model(ids)
        cache = KVCache(cfg)
        steps = [model(ids[:, :16], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(16, 24)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    # generate's own path: host ids in, host logits out, through the cache
    logits = cached_last_logits(model)
    host = ids.cpu().numpy()
    with frozen_weights(model):
        for t in (16, 17, 18):
            np.testing.assert_allclose(logits(host[:, :t]), last_logits(model, host[:, :t]), atol=1e-4, rtol=1e-4)


def test_a_checkpoint_from_cuda_loads_on_cuda_and_on_the_cpu(tmp_path, monkeypatch):
    cfg = variant_config(LANE_VARIANTS[0], train=dict(batch_size=2, seq_len=32, **FLOAT32))
    trainer = trainer_on("cuda", cfg, monkeypatch)
    run_steps(trainer, windows(cfg, 2))
    path = checkpoint.save(trainer.model, cfg, tmp_path / "ck", optimizer_state=trainer.numpy_optimizer_state())
    _, weights = read_checkpoint(path)
    live = {k: v.detach().cpu().numpy() for k, v in trainer.model.named_parameters()}
    assert weights.keys() == live.keys() and all(np.array_equal(weights[k], live[k]) for k in live)
    on_gpu, _ = checkpoint.load(path, device="cuda")
    on_cpu, _ = checkpoint.load(path)
    assert next(on_gpu.parameters()).is_cuda and not next(on_cpu.parameters()).is_cuda
    ids = _ids(cfg, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(on_gpu(ids), trainer.model(ids), atol=0, rtol=0)
        torch.testing.assert_close(on_cpu(ids.cpu()), trainer.model(ids).cpu(), atol=1e-4, rtol=1e-4)
