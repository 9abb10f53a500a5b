"""Which optimizer treats which parameter, and the per-step scalars; shared by both backends."""
from __future__ import annotations

import numpy as np

from shared.spec.config import TrainConfig
from shared.spec.params import ParamSpec
from shared.train.schedule import lr_multiplier

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz coefficients (Keller Jordan)
NS_STEPS = 5


def uses_muon(spec: ParamSpec, t: TrainConfig) -> bool:
    """Muon takes the block matrices (group "matrix"); embeddings, head, norms and controls stay on AdamW."""
    return t.optimizer == "muon" and spec.group == "matrix"


def uses_weight_decay(spec: ParamSpec, t: TrainConfig) -> bool:
    """Decoupled weight decay on the parameters whose spec says so (the matrices)."""
    return t.weight_decay > 0 and spec.decay


def slots_for(spec: ParamSpec, t: TrainConfig) -> tuple[str, ...]:
    slots = ("momentum",) if uses_muon(spec, t) else ("exp_avg", "exp_avg_sq")
    return slots + (("ema",) if t.ema_decay else ())


def muon_scale(shape: tuple[int, ...]) -> float:
    """Keep the update's RMS comparable across shapes: sqrt(max(1, rows / cols))."""
    return max(1.0, shape[0] / shape[1]) ** 0.5


def step_scalars(step: int, t: TrainConfig) -> dict[str, np.ndarray]:
    """Learning rates and Adam bias corrections for optimizer step `step` (0-based), float32."""
    mult = lr_multiplier(step, t)
    n = step + 1
    return {k: np.array(v, np.float32) for k, v in {
        "lr_adam": t.lr * mult, "lr_muon": t.muon_lr * mult,
        "bc1": 1 - t.beta1 ** n, "bc2": 1 - t.beta2 ** n,
    }.items()}
