"""Multi-head, multi-order hashed n-gram embeddings with a context gate in MLX (mirrors
ternary_cuda/blocks/ngram_hash.py; declared and defined in shared/spec/reference_blocks/ngram_hash.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from shared.spec.reference_blocks.ngram_hash import PRIMES
from ternary_mlx.layers import TernaryEmbedding, TernaryLinear


def bucket_ids(ids: mx.array, orders: list[int], heads: int, buckets: int) -> mx.array:
    """(B, T, len(orders) * heads) int64. Every (order, head) at once per order: the loops run over
    the orders and the n tokens of an n-gram, never over positions (S6). Horner's rule reduced mod
    buckets after each step: the record's polynomial's residue, with every value below buckets * p."""
    t = ids.astype(mx.int64)
    B, T = t.shape
    parts = []
    for n in orders:
        p = mx.array([PRIMES[(n - 2) * heads + k] for k in range(heads)], mx.int64)
        if T < n:
            parts.append(mx.zeros((B, T, heads), mx.int64))
            continue
        h = mx.zeros((B, T - n + 1, heads), mx.int64)
        for j in range(n):
            h = (h * p + t[:, j:T - n + 1 + j, None]) % buckets
        parts.append(mx.concatenate([mx.zeros((B, n - 1, heads), mx.int64), h], axis=1))
    return mx.concatenate(parts, axis=-1)


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

    def _add(self, x: mx.array, ids: mx.array) -> mx.array:
        h = bucket_ids(ids, self.orders, self.heads, self.buckets)
        rows = h + mx.arange(h.shape[-1], dtype=mx.int64) * self.buckets  # table j's rows start at j * buckets
        mem = self.tables(rows).reshape(h.shape[0], h.shape[1], -1)  # one lookup for every (order, head)
        out = self.proj(mem)
        if self.gated:
            k = self.gate_k(mem)
            dot = mx.sum(mx.fast.rms_norm(x, None, self.eps) * mx.fast.rms_norm(k, None, self.eps), axis=-1,
                         keepdims=True)
            out = mx.sigmoid(dot * self.hidden ** -0.5) * out
        return x + out

    def embedding(self, x: mx.array, ids: mx.array, i) -> mx.array:
        return self._add(x, ids) if self.layer == 0 else x

    def layer_input(self, x: mx.array, ids: mx.array, i) -> mx.array:
        return self._add(x, ids) if i == self.layer and i > 0 else x
