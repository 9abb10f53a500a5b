"""DESIGN 3.4: a checkpoint written by one backend loads in the other with the same model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ternary_cuda import checkpoint as torch_ckpt
from ternary_cuda.model import Model as TorchModel
from ternary_mlx import checkpoint as mlx_ckpt
from ternary_mlx.model import Model as MLXModel

from tests.variants import VARIANTS, variant_config

from .helpers import mlx_logits, record, torch_logits, varied_weights

BACKENDS = {
    "mlx": (MLXModel, mlx_ckpt, mlx_logits),
    "torch": (TorchModel, torch_ckpt, torch_logits),
}


def _random_model(kind: str, cfg, seed: int):
    """A model whose weights are not the seed's init (random norm gains too), as after training."""
    cls = BACKENDS[kind][0]
    m = cls(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    w = {k: (v * rng.uniform(0.5, 2.0, v.shape).astype(np.float32)) for k, v in m.numpy_weights().items()}
    m.load_numpy(varied_weights(cfg, w, rng, gains=False))  # and no zero-initialised projection left
    return m


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32, k
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("src,dst", [("mlx", "torch"), ("torch", "mlx")])
def test_cross_backend_checkpoint(tmp_path, variant, src, dst):
    cfg = variant_config(variant)
    m_src = _random_model(src, cfg, seed=21)
    ids = np.random.default_rng(2).integers(0, cfg.model.vocab_size, (2, 17))

    first = BACKENDS[src][1].save(m_src, cfg, tmp_path / "a")
    assert _manifest(first)["writer"]["backend"] == src
    m_dst, cfg_dst = BACKENDS[dst][1].load(first)
    assert cfg_dst.to_dict() == cfg.to_dict()
    assert isinstance(m_dst, BACKENDS[dst][0])
    _assert_same_weights(m_dst.numpy_weights(), m_src.numpy_weights())
    l_src, l_dst = BACKENDS[src][2](m_src, ids), BACKENDS[dst][2](m_dst, ids)
    diff = float(np.abs(l_src - l_dst).max())
    record("checkpoint_cross_logits", f"{variant}/{src}->{dst}", max_abs_diff=diff)
    assert diff < 1e-4

    # Rewritten by the other backend: byte-identical weights file (same sha256 in the manifests).
    second = BACKENDS[dst][1].save(m_dst, cfg_dst, tmp_path / "b")
    assert _manifest(second)["writer"]["backend"] == dst
    sha_a = _manifest(first)["files"]["model.safetensors"]["sha256"]
    sha_b = _manifest(second)["files"]["model.safetensors"]["sha256"]
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert sha_a == sha_b
    assert (first / "config.json").read_bytes() == (second / "config.json").read_bytes()

    # and back again: the round trip src -> dst -> src is the identity
    m_back, _ = BACKENDS[src][1].load(second)
    _assert_same_weights(m_back.numpy_weights(), m_src.numpy_weights())
    assert np.array_equal(BACKENDS[src][2](m_back, ids), l_src)
