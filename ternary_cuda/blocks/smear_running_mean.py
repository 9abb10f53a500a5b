"""The ternary record's running-mean smear in PyTorch (mirrors ternary_mlx/blocks/smear_running_mean.py;
declared and defined in shared/spec/reference_blocks/smear_running_mean.py)."""
from __future__ import annotations

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.gate = nn.Parameter(torch.zeros((m.num_hidden_layers, m.hidden_size)))  # one row per layer; zeros

    def layer_output(self, x: torch.Tensor, ids: torch.Tensor, i: int) -> torch.Tensor:
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]
        mean = torch.cumsum(x, dim=1) / counts  # position t: the mean of positions 0..t
        return x + torch.tanh(self.gate[i].to(x.dtype)) * (mean - x)
