"""Scoring a token stream with any backend: windows, byte accounting, metrics (DESIGN 3.6).

The backend supplies `nll_fn(inputs (B, T), targets (B, T)) -> nats (B, T)`; everything else
(which tokens are scored, how many bytes they stand for) is decided here, once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from shared.loader import val_windows
from shared.metrics import EvalAccumulator
from shared.tokenizers import Tokenizer


def evaluate_tokens(nll_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], tokens: np.ndarray,
                    tokenizer: Tokenizer, seq_len: int, *, stride: int | None = None,
                    max_tokens: int | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """Score every token of `tokens[1:]` exactly once (or the first `max_tokens`).

    stride None (or == seq_len): non-overlapping windows. stride < seq_len: sliding windows,
    each scoring only its last `stride` tokens, so every token sees at least seq_len - stride
    tokens of context. The result names the mode it used (SEEDS S14).
    """
    acc = EvalAccumulator()
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    windows = val_windows(tokens, seq_len, stride=stride, max_tokens=max_tokens)
    if progress:
        from tqdm.auto import tqdm
        windows = tqdm(windows, unit="window", desc="eval", leave=False)

    def flush() -> None:
        if not batch:
            return
        T = max(len(x) for x, _, _ in batch)
        xs = np.zeros((len(batch), T), np.int64)
        ys = np.zeros((len(batch), T), np.int64)
        ms = np.zeros((len(batch), T), bool)
        for i, (x, y, m) in enumerate(batch):  # a short last window is padded and masked out
            xs[i, :len(x)], ys[i, :len(y)], ms[i, :len(m)] = x, y, m
        nll = nll_fn(xs, ys)
        acc.add(nll[ms], ys[ms], xs[ms], tokenizer)
        batch.clear()

    for x, y, m in windows:
        batch.append((x, y, m))
        if len(batch) == batch_size:
            flush()
    flush()
    out = acc.result()
    sliding = stride is not None and stride < seq_len
    out["mode"] = (f"{'sliding' if sliding else 'non-overlapping'} windows of {seq_len} tokens"
                   + (f", stride {stride}" if sliding else "") + ", no test-time training")
    return out
