"""Multi-head, multi-order hashed n-gram embeddings with a context gate in PyTorch (mirrors
ternary_mlx/blocks/ngram_hash.py; declared and defined in shared/spec/reference_blocks/ngram_hash.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.spec.reference_blocks.ngram_hash import PRIMES
from ternary_cuda.layers import TernaryEmbedding, TernaryLinear


def bucket_ids(ids: torch.Tensor, orders: list[int], heads: int, buckets: int) -> torch.Tensor:
    """(B, T, len(orders) * heads) int64. Every (order, head) at once per order: the loops run over
    the orders and the n tokens of an n-gram, never over positions (S6). Horner's rule reduced mod
    buckets after each step: the record's polynomial's residue, with every value below buckets * p."""
    t = ids.to(torch.int64)
    B, T = t.shape
    parts = []
    for n in orders:
        p = torch.tensor([PRIMES[(n - 2) * heads + k] for k in range(heads)], dtype=torch.int64, device=t.device)
        if T < n:
            parts.append(torch.zeros((B, T, heads), dtype=torch.int64, device=t.device))
            continue
        h = torch.zeros((B, T - n + 1, heads), dtype=torch.int64, device=t.device)
        for j in range(n):
            h = (h * p + t[:, j:T - n + 1 + j, None]) % buckets
        parts.append(torch.cat([torch.zeros((B, n - 1, heads), dtype=torch.int64, device=t.device), h], dim=1))
    return torch.cat(parts, dim=-1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m, t = cfg.model, cfg.ternary
        self.orders, self.heads, self.buckets = list(m.ngram_orders), m.ngram_heads, m.ngram_buckets
        self.layer, self.gated, self.eps, self.hidden = m.ngram_layer, m.ngram_gated, m.rms_norm_eps, m.hidden_size
        n_tables = len(self.orders) * self.heads

        def linear(d_in, d_out):
            return TernaryLinear(d_in, d_out, False, t.group_size, t.eps, t.activation_bits)
        self.tables = TernaryEmbedding(m.ngram_dim // n_tables, n_tables * self.buckets, False, t.group_size,
                                       t.eps, t.activation_bits)
        self.proj = linear(m.ngram_dim, m.hidden_size)
        if self.gated:
            self.gate_k = linear(m.ngram_dim, m.hidden_size)

    def _add(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = bucket_ids(ids, self.orders, self.heads, self.buckets)
        rows = h + torch.arange(h.shape[-1], dtype=torch.int64, device=h.device) * self.buckets  # table j at j * buckets
        mem = self.tables(rows).reshape(h.shape[0], h.shape[1], -1)  # one lookup for every (order, head)
        out = self.proj(mem)
        if self.gated:
            k = self.gate_k(mem)
            dot = torch.sum(F.rms_norm(x, (x.shape[-1],), eps=self.eps) * F.rms_norm(k, (k.shape[-1],), eps=self.eps),
                            dim=-1, keepdim=True)
            out = torch.sigmoid(dot * self.hidden ** -0.5) * out
        return x + out

    def embedding(self, x: torch.Tensor, ids: torch.Tensor, i) -> torch.Tensor:
        return self._add(x, ids) if self.layer == 0 else x

    def layer_input(self, x: torch.Tensor, ids: torch.Tensor, i) -> torch.Tensor:
        return self._add(x, ids) if i == self.layer and i > 0 else x
