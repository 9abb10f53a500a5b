"""The training loop, written once for both backends (SEEDS S11: no twin loops to drift apart).

A backend provides a `Trainer` (train.py) with `step(windows, step) -> handle` (lazy, no host
sync), `fetch(handles) -> [(loss, grad_norm)]` (one sync; with train.z_loss each entry is
(loss, grad_norm, z_loss): the loss is the cross-entropy, z_loss the coefficient times
mean(logsumexp^2), and the objective their sum; train.moe_aux_loss adds the experts' weighted
balance loss after it, shared.train.loss_terms.extra_terms names them), `numpy_weights()`,
`numpy_optimizer_state()`, `ema_weights()`, `evaluate(tokens, tokenizer, max_tokens)` and
`check_room(path)` and `save(path, trainer_state)` (shared.train.interfaces.Trainer; a save that
cannot happen raises CheckpointSaveError on every rank). This module owns the cadence: logging,
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

from shared.spec.config import ConfigError, RunConfig
from shared.data.dataset import TokenDataset
from shared.data.loader import TokenLoader
from shared.spec.params import parameter_shapes, ternary_parameters
from shared.train.evaluation import CALIBRATION_TOKENS
from shared.train.loss_terms import extra_terms
from shared.train.schedule import batch_shape_at, check_batch_schedule, tokens_through

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
    tokens = tokens_through(t.steps, t, world_size)
    epochs = tokens / max(1, len(dataset.train))
    tpp = tokens / total
    scheduled = " (batch / sequence-length schedule)" if t.batch_tokens_start or t.seq_len_start else ""
    log(f"model: {total:,} parameters ({tern:,} ternary); run: {t.steps} steps x "
        f"{t.grad_accum * t.batch_size * world_size} x {t.seq_len}{scheduled} = {tokens:,} tokens "
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
    """Train from `start_step` to train.steps (or a stop), evaluating and checkpointing on the way;
    the resume arguments are a checkpoint's trainer state."""
    t = cfg.train
    is_main = rank == 0
    bar = _progress_bar(t.steps, start_step, progress and is_main)
    if bar is not None:  # log lines above the bar instead of through it
        log = bar.write
    try:
        problem = check_batch_schedule(t, world_size)
        if problem:
            raise ConfigError(problem)
        loader = _make_loader(cfg, dataset, start_step, loader_state, rank, world_size,
                              log if is_main else (lambda _m: None))
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    metrics_f = open(out_dir / "metrics.jsonl", "a") if is_main else None
    loop = _Loop(cfg, trainer, dataset, out_dir, loader, LoopResult(start_step, "finished", train_time_s, 0.0, None),
                 best_val=best_val, bad_evals=bad_evals, world_size=world_size, log=log, bar=bar, metrics_f=metrics_f)
    stop = _StopFlag(log if is_main else (lambda _m: None), coalesce_s=1.0 if world_size > 1 else 0.0)
    try:
        # a disk without room for the checkpoint fails now, not at the first save after the compute
        trainer.check_room(out_dir / "checkpoint", training_started=False)
        with stop:
            loop.train(stop)
            return loop.finish(stop)
    finally:
        if bar is not None:
            bar.close()
        if metrics_f:
            metrics_f.close()


def _make_loader(cfg: RunConfig, dataset: TokenDataset, step: int, state: dict | None, rank: int,
                 world_size: int, log: Callable[[str], None]) -> TokenLoader:
    """The loader of step `step`; resumed, the saved one (its sequence length: a switch due at this
    very step then happens in _Loop._step, as in the run that saved it)."""
    t = cfg.train
    rows, seq = batch_shape_at(step, t, world_size)
    if state is not None and "seq_len" in state:
        seq = int(state["seq_len"])
    # vocab_size: every training id is checked here, once (S13); the trainers rely on it and
    # switch the model's per-call id check off.
    loader = TokenLoader(dataset.train, rows, seq, rank=rank, world_size=world_size, seed=t.seed,
                         vocab_size=cfg.model.vocab_size, log=log)
    if state is not None:
        loader.load_state(state)
    return loader


class _Loop:
    """One run() between its setup and its end: the step counter, the losses not yet fetched, the
    early-stopping record and the metrics file, with the loop's steps and decisions as methods."""

    def __init__(self, cfg: RunConfig, trainer, dataset: TokenDataset, out_dir: Path, loader: TokenLoader,
                 result: LoopResult, *, best_val: float | None, bad_evals: int, world_size: int,
                 log: Callable[[str], None], bar, metrics_f):
        self.cfg, self.t, self.trainer, self.dataset, self.out_dir = cfg, cfg.train, trainer, dataset, out_dir
        self.loader, self.result, self.best_val, self.bad_evals = loader, result, best_val, bad_evals
        self.world_size, self.log, self.bar, self.metrics_f = world_size, log, bar, metrics_f
        self.step = result.step
        self.pending: list = []
        self.last_good: Path | None = None
        self.t0 = time.perf_counter()

    def train(self, stop: _StopFlag) -> None:
        """Steps until train.steps, or until a stop decision (time budget, early stop, Ctrl-C)."""
        stopping = False  # Ctrl-C, as agreed by all ranks: each step alone, at sync points with several
        while self.step < self.t.steps and not stopping:
            eval_due, ckpt_due, at_sync = self._step()
            if at_sync and self._out_of_time():
                return
            if at_sync or self.world_size == 1:  # one process checks Ctrl-C every step, at no cost
                stopping = self.trainer.agree(stop.requested)
            if eval_due:
                self.evaluate()
                if self._patience_spent():
                    return
            if ckpt_due and not stopping:  # stopping: the interrupted checkpoint is the same state
                self.save("periodic")

    def _step(self) -> tuple[bool, bool, bool]:
        """One optimizer step; then (evaluation due, checkpoint due, sync point), having fetched
        the pending losses at a sync point."""
        t = self.t
        self._follow_schedule()
        windows = np.stack([self.loader.next_batch() for _ in range(t.grad_accum)])
        self.pending.append(self.trainer.step(windows, self.step))
        self.step += 1
        step = self.result.step = self.step
        eval_due = t.eval_every and step % t.eval_every == 0 and step < t.steps
        ckpt_due = t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps
        at_sync = step % t.log_every == 0 or eval_due or ckpt_due or step == t.steps
        if at_sync:
            self.sync()
        return eval_due, ckpt_due, at_sync

    def _follow_schedule(self) -> None:
        """train.batch_tokens_start / seq_len_start: switch the loader's rows or sequence length when
        this step's shape differs. A new sequence length is a new window grid, so a new stream from
        its start (parameter-golf also restarts its loader there); new rows continue the stream."""
        rows, seq = batch_shape_at(self.step, self.t, self.world_size)
        loader = self.loader
        if seq != loader.seq_len:
            self.log(f"step {self.step}: sequence length {loader.seq_len} -> {seq}")
            self.loader = TokenLoader(loader.tokens, rows, seq, rank=loader.rank, world_size=loader.world_size,
                                      seed=loader.seed, log=loader.log)  # ids were checked by the first loader
        elif rows != loader.batch_size:
            self.log(f"step {self.step}: {loader.batch_size} -> {rows} sequences per micro-batch per rank")
            loader.batch_size = rows

    def _out_of_time(self) -> bool:
        t = self.t
        if t.time_budget_s is not None and self.trainer.agree(self.result.train_time_s >= t.time_budget_s):
            self.result.stopped_because = f"time budget of {t.time_budget_s:g}s reached"
            return True
        return False

    def _patience_spent(self) -> bool:
        t = self.t
        if t.patience is not None and self.trainer.agree(self.bad_evals >= t.patience):
            self.result.stopped_because = (f"early stop: no val_loss improvement > {t.min_delta:g} "
                                           f"in {t.patience} evaluations")
            return True
        return False

    def finish(self, stop: _StopFlag) -> LoopResult:
        """After the last step: the last losses, then the interrupted checkpoint, or a final
        evaluation (unless this step has one) and the final checkpoint."""
        result = self.result
        self.sync()
        tern = self.cfg.ternary
        if tern.enabled and self.step < tern.warmup_steps:  # S15: the score below is not the checkpoint's
            self.log(f"warning: stopped at step {self.step}, inside ternary.warmup_steps={tern.warmup_steps}: the "
                     "model is evaluated part-way to ternary (lambda < 1), but `ternary eval` and the exports use "
                     "the fully ternary weights and will score differently; --resume to finish the warm-up")
        if self.trainer.agree(stop.requested):
            result.stopped_because = "interrupted (Ctrl-C)"
            result.checkpoint = self.save("interrupted")
            self.log(f"interrupted at step {self.step}; checkpoint saved to {result.checkpoint}")
            return result
        ttt_due = self.t.ttt != "off" and not (result.evals and "val_bpb_ttt" in result.evals[-1])
        if not result.evals or result.evals[-1]["step"] != self.step or ttt_due:
            self.evaluate(final=True)  # score-first TTT (train.ttt) runs here only: it costs many evaluations
        result.checkpoint = self.save("final")
        return result

    def write(self, rec: dict) -> None:
        if self.metrics_f:
            self.metrics_f.write(json.dumps(rec) + "\n")
            self.metrics_f.flush()

    def sync(self) -> None:
        """Fetch pending losses (the only host sync in the loop) and check them."""
        pending, result, bar = self.pending, self.result, self.bar
        if not pending:
            return
        values = self.trainer.fetch(pending)
        now = time.perf_counter()
        dt = now - self.t0
        result.train_time_s += dt
        self.t0 = now
        first = self.step - len(values)
        # train_time_s: training time so far (evaluations excluded) when these losses were fetched;
        # with train.log_every=1 its differences are per-step times (bench/pg_step.py reads them)
        terms = extra_terms(self.t)  # z_loss, moe_aux_loss: each its own column, as the trainers return them
        for i, (loss, gnorm, *extra) in enumerate(values):
            self.write({"step": first + i + 1, "loss": loss, "grad_norm": gnorm, **dict(zip(terms, extra)),
                        "train_time_s": round(result.train_time_s, 6)})
        pending.clear()
        loss = values[-1][0]
        bad = [first + i + 1 for i, v in enumerate(values) if not all(math.isfinite(x) for x in v)]
        if self.trainer.agree(bool(bad)):
            where = f"at step {bad[0]}" if bad else "on another rank"
            raise NonFiniteLoss(f"loss or gradient norm is not finite {where}; stopping. "
                                f"The last good checkpoint is {self.last_good or 'none (no checkpoint yet)'}.")
        result.last_loss = loss
        if bar is not None:
            bar.update(len(values))
            done = tokens_through(self.step, self.t, self.world_size) - tokens_through(first, self.t, self.world_size)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{done / max(dt, 1e-9):,.0f}")

    def save(self, tag: str) -> Path:
        state = {"step": self.step, "tokens_seen": tokens_through(self.step, self.t, self.world_size),
                 "loader": self.loader.state(),
                 "best_val_loss": self.best_val, "bad_evals": self.bad_evals,
                 "train_time_s": self.result.train_time_s, "seed": self.t.seed, "saved_because": tag}
        path = self.out_dir / "checkpoint"
        self.trainer.save(path, state)
        self.last_good = path
        return path

    def evaluate(self, final: bool = False) -> dict:
        t, dataset = self.t, self.dataset
        e0 = time.perf_counter()
        extra = {"ttt": True} if final and t.ttt != "off" else {}
        if t.temperature_scaling:  # the temperature is chosen on training tokens (shared/train/evaluation.py)
            calibration = dataset.train[:min(CALIBRATION_TOKENS, t.eval_tokens) + 1]  # no more than val scores
            ev = self.trainer.evaluate(dataset.val, dataset.tokenizer, t.eval_tokens, calibration_tokens=calibration,
                                       **extra)
        else:
            ev = self.trainer.evaluate(dataset.val, dataset.tokenizer, t.eval_tokens, **extra)
        ev_time = time.perf_counter() - e0
        self.result.eval_time_s += ev_time
        self.t0 += ev_time  # evaluation is not training time
        ev = {"step": self.step, **ev, "eval_time_s": round(ev_time, 3)}
        if dataset.entropy_bits_per_byte is not None:
            ev["entropy_gap_bpb"] = ev["val_bpb"] - dataset.entropy_bits_per_byte
        if self.best_val is None or ev["val_loss"] < self.best_val - t.min_delta:
            self.best_val, self.bad_evals = ev["val_loss"], 0
        else:
            self.bad_evals += 1
        self.result.evals.append(ev)
        self.write({"eval": ev})
        self.log(f"step {self.step}: val_loss {ev['val_loss']:.4f}  val_bpb {ev['val_bpb']:.4f}"
                 + (f"  (entropy gap {ev['entropy_gap_bpb']:+.4f})" if "entropy_gap_bpb" in ev else "")
                 + (f"  tempered (T={ev['temperature']:g}): val_loss {ev['val_loss_tempered']:.4f}  "
                    f"val_bpb {ev['val_bpb_tempered']:.4f}" if "temperature" in ev else "")
                 + (f"  val_bpb {ev['val_bpb_ttt']:.4f} ({ev['ttt_mode']})" if "val_bpb_ttt" in ev else ""))
        return ev


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
