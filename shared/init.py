"""Initial weights from a seed, in NumPy, so both backends start from bit-identical models."""
from __future__ import annotations

import numpy as np

from shared.config import ModelConfig
from shared.naming import parameter_shapes


def init_weights(m: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal(0, initializer_range) matrices and unit norm weights (float32), canonical names.

    Each tensor draws from its own stream keyed by its position, so adding a layer does not
    reshuffle the others.
    """
    out = {}
    for i, (name, shape) in enumerate(parameter_shapes(m).items()):
        if len(shape) == 1:  # RMSNorm gains
            out[name] = np.ones(shape, np.float32)
        else:
            rng = np.random.default_rng([seed, i])
            out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(m.initializer_range)
    return out
