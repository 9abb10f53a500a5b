"""BigramHash in PyTorch (mirrors ternary_mlx/blocks/bigram_hash.py; declared and defined in
shared/spec/reference_blocks/bigram_hash.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ternary_cuda.layers import TernaryEmbedding, TernaryLinear


def wrap_int32(v: torch.Tensor) -> torch.Tensor:
    """int64 values as int32 arithmetic would hold them (two's complement, the low 32 bits)."""
    return ((v + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31


def bucket_ids(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """(B, T) int64 buckets: position 0 -> buckets - 1, then (36313 id_t xor 27191 id_{t-1}) floor-mod
    (buckets - 1) in int32 arithmetic. Whole-tensor ops: the cost per token is the same at any T (S6)."""
    t = ids.to(torch.int64)
    mod = buckets - 1
    pair = wrap_int32(wrap_int32(36313 * t[:, 1:]) ^ wrap_int32(27191 * t[:, :-1]))
    r = pair % mod
    r = torch.where(r < 0, r + mod, r)  # the floor mod whatever sign convention the framework's % has
    return torch.cat([torch.full((t.shape[0], 1), mod, dtype=torch.int64, device=t.device), r], dim=1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m, t = cfg.model, cfg.ternary
        width = m.bigram_hash_dim or m.hidden_size
        self.embed = TernaryEmbedding(width, m.bigram_hash_buckets, False, t.group_size, t.eps, t.activation_bits)
        if m.bigram_hash_dim is not None:
            self.proj = TernaryLinear(width, m.hidden_size, False, t.group_size, t.eps, t.activation_bits)
        self.projected, self.buckets = m.bigram_hash_dim is not None, m.bigram_hash_buckets
        self.scale = nn.Parameter(torch.zeros(1))  # values from the parameter spec's init (0.05)

    def embedding(self, x: torch.Tensor, ids: torch.Tensor, i) -> torch.Tensor:
        e = self.embed(bucket_ids(ids, self.buckets))
        if self.projected:
            e = self.proj(e)
        return x + self.scale * e
