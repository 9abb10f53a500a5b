"""A checkpoint's weights read one tensor at a time, for the exports and `inspect` of big models.

`read_checkpoint` (shared/spec/checkpoint.py) returns every tensor at once: 2.4 GB of float32 for
Qwen3-0.6B, held for the whole export next to what the export builds. `open_weights` does the same
checks up front (manifest sha256, config, tensor names and shapes from the safetensors header) and
returns a read-only mapping whose tensors are read from the file when asked for, each checked for
NaN/inf as `read_checkpoint` checks them all, and not kept: a caller that drops a tensor after
using it holds at most one at a time. Tensors of the dtypes NumPy has are copied out of a memory
map of the file at the header's offsets, and the map's pages are then released (MADV_DONTNEED:
they are clean file pages), since touched pages would otherwise stay in the process's resident set
(all 2.4 GB of them by the end of an export, through safetensors' own map); plain reads measured
about 1.5x slower than the copy. Others (bfloat16) go through safetensors.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open

from shared.spec.checkpoint import (MODEL_FILE, CheckpointError, check_finite, check_tensor_set, read_config,
                                   recover, verify_manifest)
from shared.spec.config import RunConfig
from shared.spec.params import parameter_shapes


_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                 "U8": "u1", "BOOL": "?"}


class LazyWeights(Mapping):
    """{name: float array} over one safetensors file; each access reads (and checks) the tensor anew."""

    def __init__(self, file: Path):
        self.file = Path(file)
        try:
            self._handle = safe_open(str(self.file), framework="np")
            self.shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{self.file}: cannot read safetensors ({e})") from None
        with open(self.file, "rb") as f:  # the header safe_open has just validated: offsets and dtypes
            n = struct.unpack("<Q", f.read(8))[0]
            self._entries = json.loads(f.read(n))
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._data_start = 8 + n

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        e = self._entries[name]
        try:
            t = self._read(name, e) if e["dtype"] in _NUMPY_DTYPES else self._handle.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{self.file}: cannot read {name} ({err})") from None
        check_finite({name: t}, str(self.file))
        return t

    def _read(self, name: str, e: dict) -> np.ndarray:
        dtype = np.dtype(_NUMPY_DTYPES[e["dtype"]])
        begin, end = e["data_offsets"]
        count = math.prod(self.shapes[name])
        if end - begin != count * dtype.itemsize or self._data_start + end > len(self._map):
            raise CheckpointError(f"{self.file}: {name}: {end - begin} bytes at {begin} for a {e['dtype']} tensor "
                                  f"of shape {self.shapes[name]} (damaged file)")
        start = self._data_start + begin
        t = np.frombuffer(self._map, dtype, count, start).reshape(self.shapes[name]).astype(dtype.newbyteorder("="))
        page = start // mmap.PAGESIZE * mmap.PAGESIZE
        if end > begin and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, page, self._data_start + end - page)
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
