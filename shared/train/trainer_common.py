"""The framework-free half of a backend `Trainer`: evaluation (EMA-aware) and checkpointing.

Written once so the two backends cannot drift (SEEDS S11). A backend Trainer subclasses
`TrainerCommon` and sets `checkpoint` (its checkpoint module) and `evaluate_model` (its
evaluate function, whose `across_ranks=True` spreads the windows over the data-parallel ranks);
it provides `model`, `config`, `ema_weights()` and `numpy_optimizer_state()`.
A data-parallel backend sets `rank` and overrides `agree` (see shared/train/loop.py). The whole
contract is shared.train.interfaces.Trainer.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from shared.spec import checkpoint as fmt
from shared.data.tokenizers import Tokenizer


class TrainerCommon:
    checkpoint: Any
    evaluate_model: Callable[..., dict]
    rank: int = 0  # data parallel: every rank calls save(), rank 0 writes

    def agree(self, flag: bool) -> bool:
        """A decision every rank takes alike: true when true on any rank. One process: `flag`."""
        return bool(flag)

    def evaluate(self, tokens: np.ndarray, tokenizer: Tokenizer, max_tokens: int) -> dict:
        """Validation metrics of the current weights (of the EMA weights when EMA is on). Every
        rank calls this; with several, each scores a share of the windows (shared/train/evaluation.py)."""
        ema = self.ema_weights()
        current = self.model.numpy_weights() if ema is not None else None
        if ema is not None:
            self.model.load_numpy(ema)
        self.model.check_ids = True
        try:
            # data parallel: every rank scores its share of the windows, all get the same metrics
            return self.evaluate_model(self.model, tokens, tokenizer, self.config.train.seq_len,
                                       max_tokens=max_tokens, across_ranks=True)
        finally:
            self.model.check_ids = False
            if current is not None:
                self.model.load_numpy(current)

    def save(self, path, trainer_state: dict) -> None:
        """Checkpoint with optimizer state and trainer state: enough to resume exactly. Every rank
        calls this (gathering sharded state is a collective); only rank 0 writes."""
        t = self.config.train
        tensors = self.checkpoint_tensors()
        if tensors is not None:
            weights, optimizer_state = tensors
            fmt.write_checkpoint(path, self.config, weights, writer=self.checkpoint.BACKEND,
                                 optimizer_state=optimizer_state,
                                 optimizer_meta={"optimizer": t.optimizer, "step": trainer_state["step"]},
                                 trainer_state=trainer_state)

    def checkpoint_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(weights, optimizer state) as NumPy on the rank that writes (rank 0), None on the others.
        Every rank calls this. Here the ranks hold replicas, so nothing is gathered and the other
        ranks copy nothing; a backend whose ranks hold shards overrides it (a collective)."""
        if self.rank != 0:
            return None
        return self.model.numpy_weights(), self.numpy_optimizer_state()
