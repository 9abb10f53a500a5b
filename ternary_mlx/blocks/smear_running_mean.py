"""The ternary record's running-mean smear in MLX (mirrors ternary_cuda/blocks/smear_running_mean.py;
declared and defined in shared/spec/reference_blocks/smear_running_mean.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.gate = mx.zeros((m.num_hidden_layers, m.hidden_size))  # one row per layer; values from the spec (zeros)

    def layer_output(self, x: mx.array, ids: mx.array, i: int) -> mx.array:
        counts = mx.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        mean = mx.cumsum(x, axis=1) / counts  # position t: the mean of positions 0..t
        return x + mx.tanh(self.gate[i].astype(x.dtype)) * (mean - x)
