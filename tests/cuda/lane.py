"""The CUDA lane's shared pieces: the marker and skip every test here carries, and the trainers it compares.

Run on a machine with a GPU: `python -m pytest -m cuda tests/cuda` (docs/design.md, "The CUDA lane").
Without CUDA every test is skipped with the reason below; the files still import and collect."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.spec.config import RunConfig
from ternary_cuda import parallel
from ternary_cuda.model import Model
from ternary_cuda.train import Trainer

CUDA_LANE = [pytest.mark.cuda,
             pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA lane: torch.cuda.is_available() is False on this machine")]
# The variants the lane trains: the record's options, experts, depth recurrence with stochastic depth,
# block plug-ins, fp8 QAT, the attention options (tests/variants.py).
LANE_VARIANTS = ["record-tied-embed32-bias-poly1-ramp4-outnorm-relu2-embed-head-G32",
                 "pg-block-L5-weightless-unet-mix-scales-relu2-G64",
                 "moe2-recur-L3-U2-stochdepth0.5-mix-G32",
                 "plugin-bigram64-smear-embednorm-G32",
                 "fp8qat-record-embed16-bias-outnorm-G32",
                 "attn-vres-xsa1-gate-lnscale-rope0.5-G32"]
FLOAT32 = dict(precision="float32", tf32=False, compile=False)  # exact-as-can-be: no bf16, no TF32


def trainer_on(device: str, cfg: RunConfig, monkeypatch, seed: int = 0) -> Trainer:
    """A Trainer on `device`: the trainer takes parallel.device() (CUDA whenever visible), so a CPU one in
    this process is made with that function patched for the construction."""
    with monkeypatch.context() as m:
        m.setattr(parallel, "device", lambda: torch.device(device))
        return Trainer(cfg, Model(cfg, seed=seed))


def windows(cfg: RunConfig, steps: int, seed: int = 0) -> list[np.ndarray]:
    t = cfg.train
    rng = np.random.default_rng(seed)
    return [rng.integers(0, cfg.model.vocab_size, (t.grad_accum, t.batch_size, t.seq_len + 1)) for _ in range(steps)]


def run_steps(trainer: Trainer, batches: list[np.ndarray]) -> list[tuple[float, ...]]:
    """(loss, grad_norm, *terms) per step, each fetched to the host."""
    return [trainer.fetch([trainer.step(w, i)])[0] for i, w in enumerate(batches)]
