"""The framework-free half of a backend `Trainer`: evaluation (EMA-aware) and checkpointing.

Written once so the two backends cannot drift (SEEDS S11). A backend Trainer subclasses
`TrainerCommon` and sets `checkpoint` (its checkpoint module) and `evaluate_model` (its
evaluate function, whose `across_ranks=True` spreads the windows over the data-parallel ranks);
it provides `model`, `config`, `ema_weights()` and `numpy_optimizer_state()`. Checkpoints need
disk room for a new copy beside the old one (shared/train/checkpoint_space.py): checked before
training and before each save, and a failed save ends every rank alike, the previous checkpoint kept.
A data-parallel backend sets `rank` and overrides `agree` (see shared/train/loop.py). The whole
contract is shared.train.interfaces.Trainer.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from shared.spec import checkpoint as fmt
from shared.spec.atomic_dir import clean_leftovers
from shared.train.evaluation import with_temperature
from shared.train.ttt import plan_of
from shared.train.checkpoint_space import CheckpointSaveError, checkpoint_bytes, room_problem, save_failure
from shared.data.tokenizers import Tokenizer


class TrainerCommon:
    checkpoint: Any
    evaluate_model: Callable[..., dict]
    evaluate_ttt_model: Callable[..., dict]  # ternary_*/evaluate.py's evaluate_ttt
    rank: int = 0  # data parallel: every rank calls save(), rank 0 writes

    def agree(self, flag: bool) -> bool:
        """A decision every rank takes alike: true when true on any rank. One process: `flag`."""
        return bool(flag)

    def evaluate(self, tokens: np.ndarray, tokenizer: Tokenizer, max_tokens: int,
                 calibration_tokens: np.ndarray | None = None, *, ttt: bool = False) -> dict:
        """Validation metrics of the current weights (of the EMA weights when EMA is on). Every
        rank calls this; with several, each scores a share of the windows (shared/train/evaluation.py).
        With train.temperature_scaling and `calibration_tokens` (training tokens) the metrics also
        hold the temperature chosen on those and the tempered val_loss / val_bpb. With `ttt` (the
        final evaluation under train.ttt) they also hold the score-first TTT numbers of the same
        weights (shared/train/ttt.py: val_bpb_ttt, ttt_mode, ...), beside the plain ones."""
        ema = self.ema_weights()
        current = self.model.numpy_weights() if ema is not None else None
        if ema is not None:
            self.model.load_numpy(ema)
        self.model.check_ids = True
        try:
            # data parallel: every rank scores its share of the windows, all get the same metrics
            def evaluate_at(stream, temperature=1.0, max_tokens=max_tokens):
                return self.evaluate_model(self.model, stream, tokenizer, self.config.train.seq_len,
                                           stride=self.config.train.eval_stride, max_tokens=max_tokens,
                                           across_ranks=True, temperature=temperature)
            metrics = evaluate_at(tokens)
            if self.config.train.temperature_scaling and calibration_tokens is not None:
                metrics = with_temperature(metrics, evaluate_at, tokens, calibration_tokens)
            if ttt:  # after the plain score, from the same weights; it puts them back itself
                metrics = {**metrics, **self.evaluate_ttt_model(self.model, tokens, tokenizer, self.config.train.seq_len,
                                                                plan_of(self.config.train), max_tokens=max_tokens)}
            return metrics
        finally:
            self.model.check_ids = False
            if current is not None:
                self.model.load_numpy(current)

    def check_room(self, path, *, training_started: bool = True) -> None:
        """Rank 0 (the writer) has disk room for a new checkpoint at `path` beside the old one;
        else every rank raises CheckpointSaveError (one decision for all, SEEDS S12). Every rank
        calls this: before the first step and before each save. Killed saves' leftovers go first."""
        problem = None
        if self.rank == 0:
            clean_leftovers(path)
            problem = room_problem(path, checkpoint_bytes(self.config), training_started=training_started)
        self._stop_if(problem, path)

    def save(self, path, trainer_state: dict) -> None:
        """Checkpoint with optimizer state and trainer state: enough to resume exactly. Every rank
        calls this (gathering sharded state is a collective); only rank 0 writes. A write that
        fails (a full disk) keeps the previous checkpoint and raises CheckpointSaveError on every rank."""
        t = self.config.train
        self.check_room(path)
        tensors = self.checkpoint_tensors()
        problem = None
        if tensors is not None:
            weights, optimizer_state = tensors
            try:
                fmt.write_checkpoint(path, self.config, weights, writer=self.checkpoint.BACKEND,
                                     optimizer_state=optimizer_state,
                                     optimizer_meta={"optimizer": t.optimizer, "step": trainer_state["step"]},
                                     trainer_state=trainer_state)
            except (OSError, fmt.CheckpointError) as e:
                problem = save_failure(path, checkpoint_bytes(self.config), e)
        self._stop_if(problem, path)

    def _stop_if(self, problem: str | None, path) -> None:
        """Raise on every rank when rank 0 has a problem (the others learn of it through agree)."""
        if self.agree(problem is not None):
            raise CheckpointSaveError(problem or f"rank 0 could not save the checkpoint {path} (its output says why)")

    def checkpoint_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(weights, optimizer state) as NumPy on the rank that writes (rank 0), None on the others.
        Every rank calls this. Here the ranks hold replicas, so nothing is gathered and the other
        ranks copy nothing; a backend whose ranks hold shards overrides it (a collective)."""
        if self.rank != 0:
            return None
        return self.lazy_weights(), self.lazy_optimizer_state()  # copied to NumPy one tensor at a time
