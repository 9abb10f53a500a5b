"""Stochastic depth (model.stochastic_depth): which layers each training sequence skips, drawn in NumPy.

The masks are drawn here, on the host, from a generator seeded by (train.seed, step, rank), and
handed to the model as an array, so both backends and the NumPy reference see the same draws bit for
bit, and a resumed run draws what an uninterrupted one would have drawn at the same step.

Applied layer i of L (0-based) drops its two residual branches for a sequence with probability
p_i = p * (i + 1) / L (linear over depth, the last layer at p: Huang et al. 2016). A kept layer's
branches are scaled by 1 / (1 - p_i), so each branch's expected contribution equals what evaluation
adds unscaled, and evaluation (no mask) is the plain deterministic forward. The mask is one factor per
(applied layer, sequence): 0 (dropped) or 1 / (1 - p_i) (kept), float32.
"""
from __future__ import annotations

import numpy as np

# A constant third word in the seed, so these draws never coincide with another stream keyed by (seed, step)
_STREAM = 0x5D_1A7E


def drop_probabilities(m) -> np.ndarray:
    """(L,) float64: p * (i + 1) / L for the applied layers i = 0 .. L-1 (L = model.num_hidden_layers)."""
    L = m.num_hidden_layers
    return m.stochastic_depth * np.arange(1, L + 1, dtype=np.float64) / L


def layer_keep_scales(m, seed: int, step: int, rank: int, micro_batches: int, batch: int) -> np.ndarray:
    """(micro_batches, L, batch) float32 factors for one optimizer step: 0 where applied layer i is
    dropped for a sequence, 1 / (1 - p_i) where it is kept."""
    p = drop_probabilities(m)
    u = np.random.default_rng([seed, step, rank, _STREAM]).random((micro_batches, len(p), batch))
    keep = u >= p[None, :, None]
    return np.where(keep, 1.0 / (1.0 - p)[None, :, None], 0.0).astype(np.float32)
