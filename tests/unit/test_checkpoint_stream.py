"""Checkpoints written tensor by tensor (shared/spec/safetensors_stream.py): safetensors' reader reads
them back exactly, a LazyTensor is loaded only when its turn comes and is not kept, and a
tensor that is not what its declaration says is refused."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from shared.spec.safetensors_stream import LazyTensor, save_streaming


def test_round_trip_through_safetensors_reader(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
               "scalar": np.array(2.5, np.float32), "odd": rng.standard_normal(3).astype(np.float16)}
    lazy = {**tensors, "lazy": LazyTensor((2, 2), np.dtype(np.float32), lambda: np.eye(2, dtype=np.float32))}
    save_streaming(lazy, str(tmp_path / "t.safetensors"), metadata={"format": "x"})
    back = load_file(str(tmp_path / "t.safetensors"))
    assert sorted(back) == sorted(lazy)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    assert np.array_equal(back["lazy"], np.eye(2))


def test_each_lazy_tensor_is_loaded_in_turn_and_released(tmp_path):
    """When tensor i is loaded, tensor i - 1's array is already gone (only a weak reference is left)."""
    import weakref
    alive, made = [], []

    def make(i):
        def load():
            alive.append(sum(r() is not None for r in made))  # arrays of earlier tensors still alive
            a = np.full((1000,), i, np.float32)
            made.append(weakref.ref(a))
            return a
        return load

    save_streaming({f"t{i}": LazyTensor((1000,), np.dtype(np.float32), make(i)) for i in range(4)},
                   str(tmp_path / "t.safetensors"))
    assert alive == [0, 0, 0, 0]
    assert np.array_equal(load_file(str(tmp_path / "t.safetensors"))["t3"], np.full(1000, 3, np.float32))


def test_declared_shape_mismatch_is_refused(tmp_path):
    bad = {"x": LazyTensor((2, 3), np.dtype(np.float32), lambda: np.zeros((3, 2), np.float32))}
    with pytest.raises(ValueError, match="not the declared"):
        save_streaming(bad, str(tmp_path / "t.safetensors"))
