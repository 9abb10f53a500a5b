"""SmearGate in PyTorch (mirrors ternary_mlx/blocks/smear.py; declared and defined in
shared/spec/reference_blocks/smear.py)."""
from __future__ import annotations

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(cfg.model.hidden_size))  # values from the parameter spec's init (zeros)

    def stream(self, x: torch.Tensor, ids: torch.Tensor, i) -> torch.Tensor:
        g = torch.sigmoid(self.gate.to(x.dtype))
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # position 0: nothing before it
        return (1 - g) * x + g * prev
