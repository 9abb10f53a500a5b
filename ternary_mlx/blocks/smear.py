"""SmearGate in MLX (mirrors ternary_cuda/blocks/smear.py; declared and defined in
shared/spec/reference_blocks/smear.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = mx.zeros((cfg.model.hidden_size,))  # values from the parameter spec's init (zeros)

    def stream(self, x: mx.array, ids: mx.array, i) -> mx.array:
        g = mx.sigmoid(self.gate.astype(x.dtype))
        prev = mx.concatenate([mx.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # position 0: nothing before it
        return (1 - g) * x + g * prev
