"""Learning-rate schedule: linear warm-up, then constant, cosine or linear warm-down."""
from __future__ import annotations

import math

from shared.spec.config import TrainConfig


def lr_multiplier(step: int, t: TrainConfig) -> float:
    """Multiplier of the peak learning rates for optimizer step `step` (0-based) of `t.steps`."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    if t.schedule == "cosine":
        span = max(1, t.steps - t.warmup_steps)
        progress = min(1.0, (step - t.warmup_steps) / span)
        return t.min_lr_frac + (1 - t.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    # warmdown: constant, then linear to zero over the last warmdown_frac of the steps
    start = t.steps * (1 - t.warmdown_frac)
    if step < start:
        return 1.0
    return max(0.0, (t.steps - step) / max(1e-9, t.steps - start))
