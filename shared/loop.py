"""The training loop, written once for both backends (SEEDS S11: no twin loops to drift apart).

A backend provides a `Trainer` (train.py) with `step(windows, step) -> handle` (lazy, no host
sync), `fetch(handles) -> [(loss, grad_norm)]` (one sync), `numpy_weights()`,
`numpy_optimizer_state()`, `ema_weights()`, `evaluate(tokens, tokenizer, max_tokens)` and
`save(path, trainer_state)` (shared.interfaces.Trainer). This module owns the cadence: logging,
evaluation, early stopping, checkpoints, the wall-clock budget, the NaN guard and Ctrl-C.

Data parallel (world_size > 1): every rank runs this loop and takes the same branches (SEEDS S12).
Each decision that one rank could see differently (its clock, its Ctrl-C, its losses) goes through
`trainer.agree(flag) -> bool` (true on every rank when true on any; identity for one process) at
the sync points; `fetch` returns losses averaged over the ranks; every rank calls `save` (under
FSDP2 gathering the state is a collective) and the trainer writes on rank 0 only; only rank 0
logs and writes metrics.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.config import RunConfig
from shared.data import TokenDataset
from shared.loader import TokenLoader
from shared.naming import parameter_shapes, ternary_parameters

# Tokens per parameter below which a run is data-starved. Compute-optimal LMs see ~20; the smoke
# preset converges on its simple synthetic source at ~0.6; SEEDS S9 overfit at 0.05.
MIN_TOKENS_PER_PARAM = 0.2


@dataclass
class LoopResult:
    step: int
    stopped_because: str
    train_time_s: float
    eval_time_s: float
    last_loss: float | None
    evals: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


class NonFiniteLoss(RuntimeError):
    pass


def count_parameters(cfg: RunConfig) -> tuple[int, int]:
    shapes = parameter_shapes(cfg.model)
    total = sum(math.prod(s) for s in shapes.values())
    tern = sum(math.prod(shapes[n]) for n in ternary_parameters(cfg))
    return total, tern


def preflight(cfg: RunConfig, dataset: TokenDataset, world_size: int, log: Callable[[str], None]) -> dict:
    """Warnings about the run's data budget before any compute is spent (SEEDS S8, S9)."""
    t = cfg.train
    total, tern = count_parameters(cfg)
    tokens = t.steps * t.grad_accum * t.batch_size * t.seq_len * world_size
    epochs = tokens / max(1, len(dataset.train))
    tpp = tokens / total
    log(f"model: {total:,} parameters ({tern:,} ternary); run: {t.steps} steps x "
        f"{t.grad_accum * t.batch_size * world_size} x {t.seq_len} = {tokens:,} tokens "
        f"({epochs:.2f} epochs of {len(dataset.train):,}; {tpp:.2f} tokens/parameter)")
    if tpp < MIN_TOKENS_PER_PARAM:
        log(f"warning: only {tpp:.2f} training tokens per parameter; the model will be far from "
            "converged (SEEDS S9). Train longer or use a smaller model.")
    if epochs > 4:
        log(f"warning: the run makes {epochs:.1f} passes over the training data; expect overfitting "
            "(SEEDS S9). Use more data.")
    val_scored = min(t.eval_tokens, len(dataset.val) - 1)
    if t.patience is not None and val_scored < 65536:
        log(f"warning: early stopping on {val_scored:,} validation tokens; below ~65k tokens the "
            "noise of val_loss can exceed real progress (SEEDS S8). Raise train.eval_tokens.")
    return {"parameters": total, "ternary_parameters": tern, "tokens": tokens, "epochs": epochs,
            "tokens_per_parameter": tpp}


def run(cfg: RunConfig, trainer, dataset: TokenDataset, out_dir: Path, *, start_step: int = 0,
        loader_state: dict | None = None, best_val: float | None = None, bad_evals: int = 0,
        train_time_s: float = 0.0, rank: int = 0, world_size: int = 1,
        log: Callable[[str], None] = print, progress: bool = True) -> LoopResult:
    t = cfg.train
    is_main = rank == 0
    # vocab_size: every training id is checked here, once (S13); the trainers rely on it and switch
    # the model's per-call id check off.
    bar = _progress_bar(t.steps, start_step, progress and is_main)
    if bar is not None:  # log lines above the bar instead of through it
        log = bar.write
    try:
        loader = TokenLoader(dataset.train, t.batch_size, t.seq_len, rank=rank, world_size=world_size,
                             seed=t.seed, vocab_size=cfg.model.vocab_size,
                             log=log if is_main else (lambda _m: None))
        if loader_state is not None:
            loader.load_state(loader_state)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    metrics_f = open(out_dir / "metrics.jsonl", "a") if is_main else None
    tokens_per_step = t.grad_accum * t.batch_size * t.seq_len * world_size
    result = LoopResult(start_step, "finished", train_time_s, 0.0, None)
    pending: list = []
    step = start_step
    last_good: Path | None = None
    t0 = time.perf_counter()

    def write(rec: dict) -> None:
        if metrics_f:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()

    def sync() -> None:
        """Fetch pending losses (the only host sync in the loop) and check them."""
        nonlocal t0
        if not pending:
            return
        values = trainer.fetch(pending)
        now = time.perf_counter()
        dt = now - t0
        result.train_time_s += dt
        t0 = now
        first = step - len(values)
        for i, (loss, gnorm) in enumerate(values):
            write({"step": first + i + 1, "loss": loss, "grad_norm": gnorm})
        pending.clear()
        loss = values[-1][0]
        bad = [first + i + 1 for i, (lv, gv) in enumerate(values) if not (math.isfinite(lv) and math.isfinite(gv))]
        if trainer.agree(bool(bad)):
            where = f"at step {bad[0]}" if bad else "on another rank"
            raise NonFiniteLoss(f"loss or gradient norm is not finite {where}; stopping. "
                                f"The last good checkpoint is {last_good or 'none (no checkpoint yet)'}.")
        result.last_loss = loss
        if bar is not None:
            bar.update(len(values))
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step * len(values) / max(dt, 1e-9):,.0f}")

    def save(tag: str) -> Path:
        nonlocal last_good
        state = {"step": step, "tokens_seen": step * tokens_per_step, "loader": loader.state(),
                 "best_val_loss": best_val, "bad_evals": bad_evals, "train_time_s": result.train_time_s,
                 "seed": t.seed, "saved_because": tag}
        path = out_dir / "checkpoint"
        trainer.save(path, state)
        last_good = path
        return path

    def evaluate() -> dict:
        nonlocal best_val, bad_evals, t0
        e0 = time.perf_counter()
        ev = trainer.evaluate(dataset.val, dataset.tokenizer, t.eval_tokens)
        ev_time = time.perf_counter() - e0
        result.eval_time_s += ev_time
        t0 += ev_time  # evaluation is not training time
        ev = {"step": step, **ev, "eval_time_s": round(ev_time, 3)}
        if dataset.entropy_bits_per_byte is not None:
            ev["entropy_gap_bpb"] = ev["val_bpb"] - dataset.entropy_bits_per_byte
        if best_val is None or ev["val_loss"] < best_val - t.min_delta:
            best_val, bad_evals = ev["val_loss"], 0
        else:
            bad_evals += 1
        result.evals.append(ev)
        write({"eval": ev})
        log(f"step {step}: val_loss {ev['val_loss']:.4f}  val_bpb {ev['val_bpb']:.4f}"
            + (f"  (entropy gap {ev['entropy_gap_bpb']:+.4f})" if "entropy_gap_bpb" in ev else ""))
        return ev

    stop = _StopFlag(log if is_main else (lambda _m: None), coalesce_s=1.0 if world_size > 1 else 0.0)
    stopping = False  # Ctrl-C, as agreed by all ranks: each step alone, at sync points with several
    try:
        with stop:
            while step < t.steps and not stopping:
                windows = np.stack([loader.next_batch() for _ in range(t.grad_accum)])
                pending.append(trainer.step(windows, step))
                step += 1
                result.step = step
                eval_due = t.eval_every and step % t.eval_every == 0 and step < t.steps
                ckpt_due = t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps
                at_sync = step % t.log_every == 0 or eval_due or ckpt_due or step == t.steps
                if at_sync:
                    sync()
                    if t.time_budget_s is not None and trainer.agree(result.train_time_s >= t.time_budget_s):
                        result.stopped_because = f"time budget of {t.time_budget_s:g}s reached"
                        break
                if at_sync or world_size == 1:  # one process checks Ctrl-C every step, at no cost
                    stopping = trainer.agree(stop.requested)
                if eval_due:
                    evaluate()
                    if t.patience is not None and trainer.agree(bad_evals >= t.patience):
                        result.stopped_because = (f"early stop: no val_loss improvement > {t.min_delta:g} "
                                                  f"in {t.patience} evaluations")
                        break
                if ckpt_due and not stopping:  # stopping: the interrupted checkpoint below is the same state
                    save("periodic")
            sync()
            tern = cfg.ternary
            if tern.enabled and step < tern.warmup_steps:  # S15: the score below is not the checkpoint's
                log(f"warning: stopped at step {step}, inside ternary.warmup_steps={tern.warmup_steps}: the "
                    "model is evaluated part-way to ternary (lambda < 1), but `ternary eval` and the exports use "
                    "the fully ternary weights and will score differently; --resume to finish the warm-up")
            if trainer.agree(stop.requested):
                result.stopped_because = "interrupted (Ctrl-C)"
                result.checkpoint = save("interrupted")
                log(f"interrupted at step {step}; checkpoint saved to {result.checkpoint}")
                return result
            if not result.evals or result.evals[-1]["step"] != step:
                evaluate()
            result.checkpoint = save("final")
    finally:
        if bar is not None:
            bar.close()
        if metrics_f:
            metrics_f.close()
    return result


class _StopFlag:
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once.

    Under torchrun a terminal Ctrl-C reaches each worker twice (from the terminal's process group
    and forwarded by the agent), so with `coalesce_s` a second SIGINT that soon after the first is
    the same Ctrl-C, not a request to abort.
    """

    def __init__(self, log: Callable[[str], None], coalesce_s: float = 0.0):
        self.requested, self._log, self._old = False, log, None
        self._coalesce_s, self._first = coalesce_s, 0.0

    def _handler(self, signum, frame):
        if self.requested:
            if time.monotonic() - self._first < self._coalesce_s:
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, time.monotonic()
        self._log("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5)
