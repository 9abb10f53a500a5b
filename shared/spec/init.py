"""Initial weights from a seed, in NumPy, so both backends start from bit-identical models."""
from __future__ import annotations

import numpy as np

from shared.spec.config import ModelConfig
from shared.spec.params import parameter_specs


def init_weights(m: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Every parameter by its spec's init rule (float32, canonical names): N(0, std) for "normal"
    (std: initializer_range unless an option sets it), ones, zeros, the option's constant, or
    "first_row_ones" (row 0 ones, the other rows zeros).

    Each tensor draws from its own stream keyed by its position, so adding a layer does not
    reshuffle the others.
    """
    out = {}
    for i, (name, spec) in enumerate(parameter_specs(m).items()):
        if spec.init == "normal":
            rng = np.random.default_rng([seed, i])
            out[name] = rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(spec.init_value)
        elif spec.init == "ones":
            out[name] = np.ones(spec.shape, np.float32)
        elif spec.init == "zeros":
            out[name] = np.zeros(spec.shape, np.float32)
        elif spec.init == "first_row_ones":
            out[name] = np.zeros(spec.shape, np.float32)
            out[name][0] = 1.0
        elif spec.init == "constant":
            out[name] = np.full(spec.shape, spec.init_value, np.float32)
        else:
            raise ValueError(f"{name}: unknown init rule {spec.init!r}")
    return out
