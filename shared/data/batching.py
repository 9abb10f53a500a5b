"""Turning token windows into (inputs, targets): the one place that defines next-token alignment."""
from __future__ import annotations

import numpy as np


def inputs_and_targets(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, T + 1) windows of consecutive tokens -> inputs (B, T) and targets (B, T), where
    targets[:, t] == inputs[:, t + 1] == windows[:, t + 1] (SEEDS S5: shifted by exactly one)."""
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"expected (batch, seq_len + 1) windows, got shape {w.shape}")
    return w[:, :-1], w[:, 1:]
