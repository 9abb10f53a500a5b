"""A safetensors file written tensor by tensor, so that saving a checkpoint never holds a NumPy copy
of every weight and optimizer slot at once (issue #12: +7 GB transient at Qwen3-0.6B's shape).

A tensor is a NumPy array or a `LazyTensor` (its shape and dtype, and a function that makes the
array when its turn comes): the header, which needs only shapes and dtypes, goes first; then each
tensor's bytes, one array alive at a time. The layout is the format's: an 8-byte little-endian header
length, the JSON header (offsets relative to the end of the header, padded with spaces to a multiple
of 8 bytes), the data in header order (by name). safetensors' own reader reads it (tests/unit/test_checkpoint_stream.py).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
           np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
           np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to write: its shape and dtype now, its values (an array of that shape and dtype) from `load`."""
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


def _code(dtype) -> str:
    code = _DTYPES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"no safetensors dtype for {np.dtype(dtype)}")
    return code


def _header(tensors: Mapping[str, np.ndarray | LazyTensor], metadata: dict[str, str] | None) -> bytes:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        size = math.prod(t.shape) * np.dtype(t.dtype).itemsize
        header[name] = {"dtype": _code(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def save_streaming(tensors: Mapping[str, np.ndarray | LazyTensor], filename: str,
                   metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `filename` one at a time (a LazyTensor is loaded only for its own write), in
    name order: the same bytes whichever order (backend) the tensors come in."""
    tensors = {k: tensors[k] for k in sorted(tensors)}
    header = _header(tensors, metadata)
    with open(filename, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, t in tensors.items():
            a = np.asarray(t.load() if isinstance(t, LazyTensor) else t)
            a = np.ascontiguousarray(a).reshape(a.shape)  # (ascontiguousarray alone makes a 0-d array 1-d)
            if a.shape != tuple(t.shape) or a.dtype != np.dtype(t.dtype):
                raise ValueError(f"tensor {name}: {a.dtype}{list(a.shape)} is not the declared "
                                 f"{np.dtype(t.dtype)}{list(t.shape)}")
            f.write(memoryview(a.reshape(-1)).cast("B"))
            del a  # before the next tensor's load
