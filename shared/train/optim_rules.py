"""Which optimizer treats which parameter, at which rate, and the per-step scalars; shared by both backends.

Parameter groups come from ParamSpec.group (shared/spec/params.py), never from names:
"matrix" (Muon under train.optimizer = muon, else AdamW), "scalar" (norms, gains, controls),
"embed" (the token embedding, the tied head with it) and "head" (an untied head).
train.decoder_lr_mult scales the rates of the decoder half's parameters (ParamSpec.decoder: the
layers from num_hidden_layers // 2 on, every group of theirs; model-level tensors such as the U-Net
skip weights keep their group's rate): they read "lr_<group>_decoder" instead of "lr_<group>".
The EMA (train.ema_decay) reads its decay per step too: 0 before step ema_start_step, so the EMA is
the weights until it starts.
"""
from __future__ import annotations

import numpy as np

from shared.spec.config import TrainConfig
from shared.spec.params import ParamSpec
from shared.train.schedule import lr_multiplier, muon_momentum_at

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz coefficients (Keller Jordan)
GROUPS = ("matrix", "scalar", "embed", "head")


def uses_muon(spec: ParamSpec, t: TrainConfig) -> bool:
    """Muon takes the block matrices (group "matrix"); embeddings, head, norms and controls stay on AdamW."""
    return t.optimizer == "muon" and spec.group == "matrix"


def weight_decay_of(spec: ParamSpec, t: TrainConfig) -> float:
    """Decoupled weight decay of one parameter: train.muon_weight_decay (None: train.weight_decay) for
    Muon's matrices; train.weight_decay for the AdamW parameters whose spec decays (matrices,
    embedding, head); 0 for norms and controls."""
    if uses_muon(spec, t):
        return t.weight_decay if t.muon_weight_decay is None else t.muon_weight_decay
    return t.weight_decay if spec.decay else 0.0


def uses_weight_decay(spec: ParamSpec, t: TrainConfig) -> bool:
    return weight_decay_of(spec, t) > 0


def peak_lrs(t: TrainConfig) -> dict[str, float]:
    """Peak learning rate of each group; an unset one is today's: muon_lr (matrices under muon) or lr."""
    default = {"matrix": t.muon_lr if t.optimizer == "muon" else t.lr, "scalar": t.lr, "embed": t.lr, "head": t.lr}
    return {g: default[g] if getattr(t, f"lr_{g}") is None else getattr(t, f"lr_{g}") for g in GROUPS}


def lr_key(spec: ParamSpec, t: TrainConfig) -> str:
    """The step_scalars key of this parameter's learning rate: its group's, or (a decoder-half
    parameter under train.decoder_lr_mult != 1) the decoder's copy of it."""
    if spec.decoder and t.decoder_lr_mult != 1.0:
        return f"lr_{spec.group}_decoder"
    return f"lr_{spec.group}"


def ema_start_step(t: TrainConfig) -> int:
    """The first step whose update the EMA averages in: int(steps * ema_start_frac) (parameter-golf's
    EMA_START_FRACTION by steps). Before it the EMA is the weights (decay 0)."""
    return int(t.steps * t.ema_start_frac)


def slots_for(spec: ParamSpec, t: TrainConfig) -> tuple[str, ...]:
    slots = ("momentum",) if uses_muon(spec, t) else ("exp_avg", "exp_avg_sq")
    return slots + (("ema",) if t.ema_decay else ())


MOMENT_SLOTS = ("exp_avg", "exp_avg_sq", "momentum")  # stored at train.optimizer_state_dtype; the EMA stays float32


def slot_dtype(slot: str, t: TrainConfig) -> str:
    """The dtype a slot is stored in: train.optimizer_state_dtype for the moments, float32 for the EMA
    (the weights evaluation uses)."""
    return t.optimizer_state_dtype if slot in MOMENT_SLOTS else "float32"


def muon_scale(shape: tuple[int, ...]) -> float:
    """Keep the update's RMS comparable across shapes: sqrt(max(1, rows / cols))."""
    return max(1.0, shape[0] / shape[1]) ** 0.5


def step_scalars(step: int, t: TrainConfig) -> dict[str, np.ndarray]:
    """Per-group learning rates (lr_matrix, lr_scalar, lr_embed, lr_head; with train.decoder_lr_mult != 1
    also lr_<group>_decoder), Muon's momentum (and 1 - it), the Adam bias corrections for optimizer
    step `step` (0-based) and, with train.ema_decay, the EMA's decay of this step (and 1 - it), float32."""
    mult = lr_multiplier(step, t)
    n = step + 1
    values = {f"lr_{g}": lr * mult for g, lr in peak_lrs(t).items()}
    if t.decoder_lr_mult != 1.0:
        values.update({f"lr_{g}_decoder": lr * mult * t.decoder_lr_mult for g, lr in peak_lrs(t).items()})
    if t.ema_decay:
        decay = t.ema_decay if step >= ema_start_step(t) else 0.0  # 1 - decay in float64, then float32
        values.update(ema_decay=decay, one_minus_ema_decay=1 - decay)
    mu = muon_momentum_at(step, t)  # 1 - mu in float64, as the constant it replaced, then float32
    values.update(momentum=mu, one_minus_momentum=1 - mu, bc1=1 - t.beta1 ** n, bc2=1 - t.beta2 ** n)
    return {k: np.array(v, np.float32) for k, v in values.items()}
