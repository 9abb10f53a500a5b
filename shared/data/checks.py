"""Checks on token data shared by the loaders and the models."""
from __future__ import annotations

import numpy as np


class TokenIdError(ValueError):
    """Token ids outside [0, vocab_size): an error, never clamped (SEEDS S13)."""


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str = "input_ids") -> None:
    sharded_check = getattr(ids, "check_ids", None)  # shared.data.shard_stream.ShardedTokens: never loaded whole
    if sharded_check is not None:
        return sharded_check(vocab_size, where)
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    if not np.issubdtype(ids.dtype, np.integer):
        raise TokenIdError(f"{where}: token ids must be integers, got dtype {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        pos = np.argwhere((ids < 0) | (ids >= vocab_size))[0].tolist()
        raise TokenIdError(f"{where}: {bad.size} token id(s) outside the vocabulary [0, {vocab_size}), "
                           f"e.g. {int(bad[0])} at position {pos}; ids are never clamped")
