"""torch's Optimizer.apply on the CPU runs AdamW of a large parameter over flat blocks
(optim.ELEMENTWISE_BLOCK) and drops each gradient from `grads` once used: blocked and unblocked
updates give the same bits (AdamW with weight decay and EMA over several blocks of one parameter;
Muon, whose matrices are never split, alike)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.spec.params import parameter_specs
from shared.train.optim_rules import step_scalars
from ternary_cuda import optim
from ternary_cuda.model import Model

from tests.variants import variant_config


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_blocked_update_equals_the_unblocked(optimizer, monkeypatch):
    cfg = variant_config("gqa-tied-silu-G64", train=dict(optimizer=optimizer, weight_decay=0.1, ema_decay=0.9))
    params = {k: p.detach() for k, p in Model(cfg, seed=2).named_parameters()}
    rng = np.random.default_rng(0)
    runs = []
    for block in (1 << 30, 1000):  # 1000: the embedding (256 x 64) spans 17 blocks
        monkeypatch.setattr(optim, "ELEMENTWISE_BLOCK", block)
        opt = optim.Optimizer(cfg.train, parameter_specs(cfg.model))
        opt.init_ema(params)
        weights = {k: v.clone() for k, v in params.items()}
        for step in range(3):
            grads = {k: torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32)) for k, v in weights.items()}
            scalars = {k: torch.tensor(v) for k, v in step_scalars(step, cfg.train).items()}
            assert opt.apply(weights, grads, scalars) is weights  # in place
            assert not grads  # every gradient was dropped after its update
        runs.append((weights, opt.state))
        rng = np.random.default_rng(0)  # the same gradients for both
    (w0, st0), (w1, st1) = runs
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=0, atol=0, msg=k)
    assert sorted(st1) == sorted(st0)
    for k in st0:
        torch.testing.assert_close(st1[k], st0[k], rtol=0, atol=0, msg=k)
