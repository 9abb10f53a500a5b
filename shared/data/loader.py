"""The training loader and the evaluation windows (DESIGN 3.5, 3.6).

Training windows (TokenLoader)
------------------------------
The train tokens are cut into non-overlapping windows of seq_len + 1 tokens at starts 0, seq_len,
2 seq_len, ... (neighbours share one token, so each token is a target once per epoch). An epoch is
a permutation of those windows seeded by (seed, epoch). The windows form one endless stream,
epoch after epoch; a global batch is the next world_size * batch_size windows of the stream and
rank r takes windows [r * batch_size, (r + 1) * batch_size) of it. Starting a new epoch is logged
(SEEDS S7); the loader never yields anything but corpus tokens. The tokens may be a ShardedTokens
(shards on disk): the same positions, read window by window from the memory maps, never
concatenated; a window may cross from one shard into the next, as in the concatenation.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from shared.data.batching import inputs_and_targets
from shared.data.dataset import DataError
from shared.data.checks import TokenIdError, check_token_ids
from shared.data.shard_stream import ShardedTokens, as_tokens


# ---- training loader ----------------------------------------------------------------------------
class TokenLoader:
    """Deterministic batches of (seq_len + 1)-token windows for one rank (see the module doc).

    `next_batch()` -> int32 (batch_size, seq_len + 1); split it with
    shared.data.batching.inputs_and_targets. `state()` / `load_state()` resume the exact stream.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, vocab_size: int | None = None,
                 log: Callable[[str], None] = print):
        tokens = as_tokens(tokens)  # shards on disk stay memory maps (shared/data/shard_stream.py)
        if tokens.ndim != 1:
            raise DataError(f"TokenLoader: tokens must be 1-D, got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TokenIdError(f"TokenLoader: token ids must be integers, got dtype {tokens.dtype}")
        if batch_size <= 0 or seq_len <= 0:
            raise DataError(f"TokenLoader: batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise DataError(f"TokenLoader: rank {rank} is not in [0, world_size={world_size})")
        if len(tokens) < seq_len + 1:
            raise DataError(f"TokenLoader: the corpus has {len(tokens):,} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}; use more data or a shorter seq_len")
        if vocab_size is not None:
            check_token_ids(tokens, vocab_size, "training tokens")  # once, vectorised (SEEDS S13)
        elif tokens.size and int(tokens.min()) < 0:
            raise TokenIdError("training tokens: negative token ids; ids are never clamped")
        self.tokens = tokens
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.log = log
        self.num_windows = (len(tokens) - 1) // self.seq_len
        self.epoch = 0  # epoch of the next window to be read
        self.position = 0  # index, within that epoch's permutation, of the next global batch's first window
        self._perms: dict[int, np.ndarray] = {}
        self._offsets = np.arange(self.seq_len + 1, dtype=np.int64)

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens in one epoch (each window contributes seq_len)."""
        return self.num_windows * self.seq_len

    @property
    def epochs_done(self) -> float:
        """Fractional number of epochs consumed so far (all ranks together)."""
        return self.epoch + self.position / self.num_windows

    def epochs_for(self, tokens_needed: int) -> float:
        """How many epochs `tokens_needed` target tokens amount to (SEEDS S9)."""
        return tokens_needed / self.tokens_per_epoch

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x7E7]))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = rng.permutation(self.num_windows)
        return self._perms[epoch]

    def _take(self, epoch: int, position: int, count: int) -> tuple[np.ndarray, int, int]:
        """`count` window indices of the stream from (epoch, position), and the state after them."""
        out = []
        while count > 0:
            if position == self.num_windows:
                epoch, position = epoch + 1, 0
            n = min(count, self.num_windows - position)
            out.append(self._perm(epoch)[position:position + n])
            position += n
            count -= n
        if position == self.num_windows:
            epoch, position = epoch + 1, 0
        return np.concatenate(out), epoch, position

    def next_batch(self) -> np.ndarray:
        old_epoch, old_pos = self.epoch, self.position
        idx, self.epoch, self.position = self._take(old_epoch, old_pos, self.world_size * self.batch_size)
        for e in range(max(old_epoch, 1), self.epoch + 1):  # epochs whose first window was just read
            if (e > old_epoch or old_pos == 0) and (e < self.epoch or self.position > 0):
                self._announce(e)
        mine = idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        starts = mine.astype(np.int64) * self.seq_len
        if isinstance(self.tokens, ShardedTokens):  # copies these windows only, across shard ends as before
            return self.tokens.windows(starts, self.seq_len + 1)
        return np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int32)

    def _announce(self, epoch: int) -> None:
        self.log(f"data: epoch {epoch} starts: the {self.tokens_per_epoch:,}-token training corpus "
                 f"({self.num_windows:,} windows of {self.seq_len + 1}) has been used {epoch} time(s); "
                 f"reshuffled with seed {self.seed}")

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "seq_len": self.seq_len, "num_windows": self.num_windows,
                "global_batch": self.world_size * self.batch_size}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue the window stream where `state()` left it. The corpus (num_windows), seq_len and
        seed must match; batch_size and world_size may differ (the stream simply continues)."""
        for key in ("seed", "seq_len", "num_windows"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(f"TokenLoader.load_state: saved {key}={state[key]} but this loader has "
                                f"{getattr(self, key)}; the data or settings changed since the checkpoint")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_windows:
            raise DataError(f"TokenLoader.load_state: position {position} / epoch {epoch} out of range "
                            f"for {self.num_windows} windows")
        self.epoch, self.position = epoch, position


# ---- evaluation windows -------------------------------------------------------------------------
def val_windows(tokens: np.ndarray, seq_len: int, stride: int | None = None,
                max_tokens: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (inputs, targets, score_mask), 1-D int32/int32/bool arrays of one window each, such that
    every target token tokens[1:] (or the first `max_tokens` of them) is scored exactly once.

    stride None or >= seq_len: consecutive non-overlapping windows. stride < seq_len (sliding
    window, parameter-golf style): windows start every `stride` tokens; the first scores all its
    targets, each later one only its last `stride`, so every scored token after the first window
    has at least seq_len - stride tokens of context. All windows have exactly seq_len positions
    (no padding): the last one starts early enough to end at the last token and scores only the
    targets not scored yet. A stream shorter than seq_len + 1 tokens gives one shorter window.
    """
    tokens = as_tokens(tokens)
    if seq_len <= 0:
        raise DataError(f"val_windows: seq_len must be positive, got {seq_len}")
    stride = seq_len if stride is None else int(stride)
    if stride <= 0:
        raise DataError(f"val_windows: stride must be positive, got {stride}")
    stride = min(stride, seq_len)
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise DataError(f"val_windows: the validation split has {len(tokens)} token(s); at least 2 are needed")
    if max_tokens is not None:
        if max_tokens <= 0:
            raise DataError(f"val_windows: max_tokens must be positive, got {max_tokens}")
        n_targets = min(n_targets, int(max_tokens))
    T = min(seq_len, len(tokens) - 1)
    stride = min(stride, T)
    scored = 0  # targets tokens[1 : 1 + scored] are done
    start = 0
    while scored < n_targets:
        start = min(start, len(tokens) - 1 - T)
        window = np.asarray(tokens[start:start + T + 1], dtype=np.int32)[None]
        inputs, targets = inputs_and_targets(window)
        # target j of this window is token start + 1 + j; score those beyond `scored`, up to n_targets
        pos = start + 1 + np.arange(T)
        mask = (pos > scored) & (pos <= n_targets)
        scored = min(start + T, n_targets)
        yield inputs[0], targets[0], mask
        start = scored + stride - T  # the next window ends `stride` targets further on
