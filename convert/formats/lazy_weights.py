"""A checkpoint's weights read one tensor at a time, for the exports and `inspect` of big models.

`read_checkpoint` (shared/spec/checkpoint.py) returns every tensor at once: 2.4 GB of float32 for
Qwen3-0.6B, held for the whole export next to what the export builds. `open_weights` does the same
checks up front (manifest sha256, config, tensor names and shapes from the safetensors header) and
returns a read-only mapping whose tensors are read from the file when asked for, each checked for
NaN/inf as `read_checkpoint` checks them all, and not kept: a caller that drops a tensor after
using it holds at most one at a time.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open

from shared.spec.checkpoint import (MODEL_FILE, CheckpointError, check_finite, check_tensor_set, read_config,
                                   recover, verify_manifest)
from shared.spec.config import RunConfig
from shared.spec.params import parameter_shapes


class LazyWeights(Mapping):
    """{name: float array} over one safetensors file; each access reads (and checks) the tensor anew."""

    def __init__(self, file: Path):
        self.file = Path(file)
        try:
            self._handle = safe_open(str(self.file), framework="np")
            self.shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{self.file}: cannot read safetensors ({e})") from None

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        try:
            t = self._handle.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{self.file}: cannot read {name} ({e})") from None
        check_finite({name: t}, str(self.file))
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def tensor_shapes(weights: Mapping) -> dict[str, tuple[int, ...]]:
    """Names -> shapes, without reading a LazyWeights' tensors."""
    if isinstance(weights, LazyWeights):
        return dict(weights.shapes)
    return {k: tuple(v.shape) for k, v in weights.items()}


def open_weights(path: str | Path, verify: bool = True) -> tuple[RunConfig, LazyWeights]:
    """read_checkpoint's checks, with the tensors left in the file until asked for. verify=False: the
    caller has just run verify_manifest (it hashes every file: 3 s for 2.4 GB)."""
    path = Path(path)
    recover(path)  # a writer killed mid-swap on a filesystem without an atomic exchange
    if verify:
        verify_manifest(path)
    config = read_config(path)
    weights = LazyWeights(path / MODEL_FILE)
    check_tensor_set(parameter_shapes(config.model), weights.shapes, str(path / MODEL_FILE))
    return config, weights
