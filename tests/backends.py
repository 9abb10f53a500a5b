"""A small adapter so one test can run against both backends with the same NumPy inputs."""
from __future__ import annotations

import importlib

import numpy as np
import pytest


class Backend:
    def __init__(self, name: str):
        self.name = name
        pkg = "ternary_mlx" if name == "mlx" else "ternary_cuda"
        self.model = importlib.import_module(f"{pkg}.model")
        self.layers = importlib.import_module(f"{pkg}.layers")
        self.loss = importlib.import_module(f"{pkg}.loss")
        self.checkpoint = importlib.import_module(f"{pkg}.checkpoint")
        if name == "mlx":
            import mlx.core as mx
            self._mx = mx
        else:
            import torch
            self._torch = torch

    def __repr__(self) -> str:
        return self.name

    def tensor(self, a: np.ndarray):
        a = np.asarray(a)
        if self.name == "mlx":
            return self._mx.array(a)
        return self._torch.from_numpy(a.copy())

    def numpy(self, t) -> np.ndarray:
        if self.name == "mlx":
            return np.array(t.astype(self._mx.float32) if t.dtype == self._mx.bfloat16 else t)
        t = t.detach().cpu()
        return (t.float() if t.dtype == self._torch.bfloat16 else t).numpy()

    def logits(self, model, ids: np.ndarray) -> np.ndarray:
        if self.name == "mlx":
            return self.numpy(model(self.tensor(ids)))
        with self._torch.no_grad():
            return self.numpy(model(self.tensor(ids)))

    def loss_and_grads(self, model, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean next-token cross-entropy and its gradient w.r.t. every latent weight (canonical names)."""
        x, y = self.tensor(inputs), self.tensor(targets)
        if self.name == "mlx":
            import mlx.nn as nn
            from mlx.utils import tree_flatten
            loss, grads = nn.value_and_grad(model, lambda xx, yy: self.loss.next_token_loss(model, xx, yy))(x, y)
            return float(loss), {k: self.numpy(v) for k, v in tree_flatten(grads)}
        model.zero_grad()
        loss = self.loss.next_token_loss(model, x, y)
        loss.backward()
        return float(loss), {k: self.numpy(p.grad) for k, p in model.named_parameters()}


BACKENDS = ["mlx", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    """Each test that takes `backend` runs once per backend (tests/conftest.py makes it visible)."""
    return Backend(request.param)
