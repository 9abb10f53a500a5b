"""Per-step schedules: the learning-rate multiplier, Muon's momentum warm-up, and the batch and
sequence-length switches. Pure functions of (step, config): a resumed run recomputes them, so
nothing here is saved, and both backends read the same values.

Parameter-golf's definitions, and where ours differ (docs/design.md 3.8 says more):
  - warm-down over WARMDOWN_ITERS final steps (the baseline): multiplier (steps - step) / max(n, 1)
    from step max(steps - n, 0) on: train.warmdown_steps. Its warm-down over a fraction of the
    iterations (the ternary record's WARMDOWN_FRACTION) starts at int(steps * (1 - f)); ours
    (train.warmdown_frac) starts at the real number steps * (1 - f), so the two agree whenever
    steps * f is whole and ours never exceeds 1 when it is not.
  - under MAX_WALLCLOCK_SECONDS parameter-golf measures the warm-down (and the schedule switches)
    in elapsed milliseconds instead of steps; ours always counts steps (deterministic, resumable;
    train.time_budget_s only stops the run).
  - parameter-golf's WARMUP_STEPS are compile warm-up steps whose updates are thrown away, not a
    learning-rate warm-up; ours (train.warmup_steps) ramps the rate linearly.
  - BATCH_TOKENS_START / SEQ_LEN_START are one switch each, not ramps: the start value until step
    int(steps * fraction), the full value from then on.
"""
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
    if t.warmdown_steps is not None:  # parameter-golf's WARMDOWN_ITERS
        if step < max(t.steps - t.warmdown_steps, 0):
            return 1.0
        return max(0.0, (t.steps - step) / max(t.warmdown_steps, 1))
    # warmdown: constant, then linear to zero over the last warmdown_frac of the steps
    start = t.steps * (1 - t.warmdown_frac)
    if step < start:
        return 1.0
    return max(0.0, (t.steps - step) / max(1e-9, t.steps - start))


def muon_momentum_at(step: int, t: TrainConfig) -> float:
    """Muon's momentum at step `step` (0-based): linear from muon_momentum_warmup_start to
    muon_momentum over muon_momentum_warmup_steps (parameter-golf: 0.85 -> 0.95 over 500)."""
    if t.muon_momentum_warmup_steps <= 0:
        return t.muon_momentum
    frac = min(step / t.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * t.muon_momentum_warmup_start + frac * t.muon_momentum


def seq_len_at(step: int, t: TrainConfig) -> int:
    """Training sequence length of step `step`: seq_len_start before int(steps * seq_schedule_frac)."""
    if t.seq_len_start and step < int(t.steps * t.seq_schedule_frac):
        return t.seq_len_start
    return t.seq_len


def step_tokens_at(step: int, t: TrainConfig, world_size: int) -> int:
    """Tokens per optimizer step over all ranks (parameter-golf's TRAIN_BATCH_TOKENS): batch_tokens_start
    before int(steps * batch_schedule_frac), else batch_size * seq_len * grad_accum * world_size.
    The count stays the same when only the sequence length switches (more, shorter rows)."""
    if t.batch_tokens_start and step < int(t.steps * t.batch_schedule_frac):
        return t.batch_tokens_start
    return t.batch_size * t.seq_len * t.grad_accum * world_size


def batch_shape_at(step: int, t: TrainConfig, world_size: int) -> tuple[int, int]:
    """(sequences per micro-batch per rank, sequence length) of step `step`."""
    seq = seq_len_at(step, t)
    return step_tokens_at(step, t, world_size) // (world_size * t.grad_accum * seq), seq


def _phase_starts(t: TrainConfig) -> list[int]:
    """The steps at which the batch shape may change (0 and the switches inside the run)."""
    cuts = {0}
    if t.batch_tokens_start:
        cuts.add(int(t.steps * t.batch_schedule_frac))
    if t.seq_len_start:
        cuts.add(int(t.steps * t.seq_schedule_frac))
    return sorted(c for c in cuts if c < t.steps) or [0]


def check_batch_schedule(t: TrainConfig, world_size: int) -> str | None:
    """A one-line problem when some step's tokens do not split into whole rows on every rank, else None."""
    for step in _phase_starts(t):
        seq, tokens = seq_len_at(step, t), step_tokens_at(step, t, world_size)
        per_row = world_size * t.grad_accum * seq
        if tokens % per_row or tokens < per_row:
            where = f" x {world_size} ranks" if world_size > 1 else ""
            return (f"train.batch_tokens_start / seq_len_start: step {step} has {tokens:,} tokens per step, "
                    f"not a positive multiple of grad_accum {t.grad_accum} x seq_len {seq}{where} = {per_row:,}")
    return None


def tokens_through(step: int, t: TrainConfig, world_size: int) -> int:
    """Training tokens (targets) in the first `step` optimizer steps, all ranks together."""
    cuts = [c for c in _phase_starts(t) if c < step] + [step]
    total = 0
    for a, b in zip(cuts, cuts[1:]):
        rows, seq = batch_shape_at(a, t, world_size)
        total += (b - a) * rows * seq * t.grad_accum * world_size
    return total
