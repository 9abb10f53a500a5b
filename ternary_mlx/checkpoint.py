"""Save and load checkpoints in the shared format (mirrors ternary_cuda/checkpoint.py; format in shared/spec/checkpoint.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from shared.spec import checkpoint as fmt
from shared.spec.config import RunConfig
from ternary_mlx.model import Model

BACKEND = {"backend": "mlx", "mlx": mx.__version__}


def save(model: Model, config: RunConfig, path: str | Path, *,
         optimizer_state: dict[str, np.ndarray] | None = None, optimizer_meta: dict[str, Any] | None = None,
         trainer_state: dict[str, Any] | None = None) -> Path:
    """Write `model` (latent float32 weights) and `config` atomically to the directory `path`."""
    return fmt.write_checkpoint(path, config, model.numpy_weights(), writer=BACKEND,
                                optimizer_state=optimizer_state, optimizer_meta=optimizer_meta,
                                trainer_state=trainer_state)


def load(path: str | Path) -> tuple[Model, RunConfig]:
    """Verify the manifest, read the config and build the model strictly from the saved weights."""
    config, weights = fmt.read_checkpoint(path)
    return Model(config, weights), config
