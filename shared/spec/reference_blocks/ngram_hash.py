"""Multi-head, multi-order hashed n-gram embeddings with a context gate (the SKC-600 report's
"EngramHash", parameter-golf PR #911, 2026-03-25_Ternary_Feedback_TTT, as its MLX script computes it).

For each order n in model.ngram_orders (2: bigram, 3: trigram) and head k < model.ngram_heads, with
the prime p = PRIMES[(n - 2) * heads + k] (the record's list: bigram heads take the first `heads`,
trigram heads the next):

    h_t = (sum_j ids_{t-n+1+j} * p^(n-1-j)) mod buckets    for t >= n - 1;  h_t = 0 before
    m_t = concat over (order, head) of table_{n,k}[h_t]    (B, T, ngram_dim), order-major
    out = proj(m)                                          (hidden)
    gated (model.ngram_gated): out *= sigmoid(sum(rms(x) * rms(gate_k(m))) / sqrt(hidden)),
                               x the stream it is added to, rms the weightless RMSNorm

and x += out at the input of layer model.ngram_layer (0: at the embedding, before its norm, like
BigramHash). The (order, head) tables are one tensor model.ngram_hash.tables.weight, table j's rows
at j * buckets. Everything is N(0, initializer_range) at init (the record: 0.02).

The record evaluates the polynomial in int64, which holds it for orders 2 and 3 while ids stay below
~6.9 million (p^2 < 1.4e12); at order 4 (p^3 up to 1.5e18) it overflows for ids of two digits, so
the orders are 2 and 3.
The backends reduce mod buckets after every Horner step (the same residue, every value below
buckets * p, at any id); this reference computes the polynomial exactly with Python integers. Below
~6.9 million ids all three equal the record's int64 result bit for bit.
"""
from __future__ import annotations

import numpy as np

from shared.spec.blocks import BlockPlugin
from shared.spec.options import EMBEDDING, MATRIX, OURS, ModelOption, ParamRule

PRIMES = (92821, 131071, 174763, 216091, 262147, 314159, 393241, 462841,
          524287, 611953, 700001, 786433, 873781, 967229, 1048573, 1153381)
ORDERS = (2, 3)
MAX_HEADS = len(PRIMES) // len(ORDERS)


def n_tables(m) -> int:
    return len(m.ngram_orders) * m.ngram_heads


_TABLES = ParamRule("model.ngram_hash.tables.weight",
                    lambda m: (n_tables(m) * m.ngram_buckets, m.ngram_dim // n_tables(m)), EMBEDDING,
                    after="model.norm.weight", scope="model")
_PROJ = ParamRule("model.ngram_hash.proj.weight", lambda m: (m.hidden_size, m.ngram_dim), MATRIX,
                  after="model.norm.weight", scope="model")
_GATE_K = ParamRule("model.ngram_hash.gate_k.weight", lambda m: (m.hidden_size, m.ngram_dim), MATRIX,
                    after="model.norm.weight", scope="model", when=lambda m: m.ngram_gated)


def _orders(v) -> str | None:
    if isinstance(v, list) and all(n in ORDERS for n in v) and v == sorted(set(v)):
        return None
    return f"must be increasing n-gram orders from {list(ORDERS)} (e.g. [2, 3]), or [] for off; got {v!r}"


def _orders_fit(v, m) -> str | None:
    if not 1 <= m.ngram_heads <= MAX_HEADS:
        return f"model.ngram_heads must be in 1..{MAX_HEADS} (one prime per order and head), got {m.ngram_heads}"
    if m.ngram_dim % n_tables(m):
        return (f"model.ngram_dim={m.ngram_dim} must be a multiple of len(ngram_orders) * ngram_heads = "
                f"{n_tables(m)} (each (order, head) table gets an equal share)")
    if not 0 <= m.ngram_layer < m.num_hidden_layers:
        return f"model.ngram_layer must be in 0..{m.num_hidden_layers - 1}, got {m.ngram_layer}"
    return None


def _positive(v) -> str | None:
    return None if isinstance(v, int) and v > 0 else f"must be positive, got {v!r}"


def _needs_orders(v, m) -> str | None:
    return None if m.ngram_orders else "needs model.ngram_orders (e.g. [2, 3])"


_WHY = "no hashed n-gram embedding"
PLUGIN = BlockPlugin(
    "ngram_hash",
    options=(
        ModelOption("ngram_orders", list[int], [],
                    "hashed n-gram embeddings (SKC-600's EngramHash): per order and head a table row "
                    "sum_j id_{t-n+1+j} p^(n-1-j) mod buckets, concatenated, projected to hidden and added "
                    "at model.ngram_layer; [] = off",
                    OURS, _WHY, check=_orders, requires=_orders_fit,
                    params=lambda v: (_TABLES, _PROJ, _GATE_K) if v else (), example=[2, 3]),
        ModelOption("ngram_heads", int, 4, "hash heads (tables, primes) per n-gram order", OURS, _WHY,
                    check=_positive, requires=_needs_orders, example=2, example_needs=dict(ngram_orders=[2, 3])),
        ModelOption("ngram_buckets", int, 4096, "rows of each (order, head) table", OURS, _WHY,
                    check=_positive, requires=_needs_orders, example=64, example_needs=dict(ngram_orders=[2, 3])),
        ModelOption("ngram_dim", int, 64, "the concatenated width of all (order, head) lookups", OURS, _WHY,
                    check=_positive, requires=_needs_orders, example=32, example_needs=dict(ngram_orders=[2, 3])),
        ModelOption("ngram_layer", int, 0, "the layer whose input the n-gram embedding is added to "
                    "(0: at the embedding, before its norm)", OURS, _WHY,
                    check=lambda v: None if isinstance(v, int) and v >= 0 else f"must be >= 0, got {v!r}",
                    requires=_needs_orders, example=1, example_needs=dict(ngram_orders=[2, 3])),
        ModelOption("ngram_gated", bool, False,
                    "the context gate sigmoid(rms(x) . rms(gate_k(m)) / sqrt(hidden)) on the n-gram output",
                    OURS, _WHY, requires=_needs_orders, example=True, example_needs=dict(ngram_orders=[2, 3])),
    ),
    hooks=("embedding", "layer_input"),
    doc="EngramHash: multi-head, multi-order hashed n-gram embeddings with a context gate")


def bucket_ids(ids: np.ndarray, orders: list[int], heads: int, buckets: int) -> np.ndarray:
    """(B, T, len(orders) * heads) int64: the bucket of each (order, head) at each position."""
    t = np.asarray(ids, np.int64).astype(object)  # Python integers: the polynomial exactly, no overflow
    B, T = t.shape
    out = []
    for n in orders:
        p = np.array([PRIMES[(n - 2) * heads + k] for k in range(heads)], dtype=object)
        h = np.zeros((B, T, heads), dtype=object)
        if T >= n:
            poly = sum(t[:, j:T - n + 1 + j, None] * p ** (n - 1 - j) for j in range(n))
            h[:, n - 1:] = poly % buckets
        out.append(h)
    return np.concatenate(out, axis=-1).astype(np.int64)


def _ngram(x: np.ndarray, ids: np.ndarray, fp) -> np.ndarray:
    from shared.spec.reference_model import linear, rms_norm
    m = fp.cfg.model
    h = bucket_ids(ids, m.ngram_orders, m.ngram_heads, m.ngram_buckets)
    rows = h + np.arange(h.shape[-1]) * m.ngram_buckets  # table j's rows start at j * buckets
    mem = fp.w["model.ngram_hash.tables.weight"][rows].reshape(h.shape[0], h.shape[1], -1)
    out = linear(mem, "model.ngram_hash.proj.weight", fp)
    if m.ngram_gated:
        k = linear(mem, "model.ngram_hash.gate_k.weight", fp)
        dot = np.sum(rms_norm(x, 1.0, m.rms_norm_eps) * rms_norm(k, 1.0, m.rms_norm_eps), axis=-1, keepdims=True)
        out = out / (1.0 + np.exp(-dot * m.hidden_size ** -0.5))
    return x + out


def embedding(x: np.ndarray, ids: np.ndarray, i, fp) -> np.ndarray:
    return _ngram(x, ids, fp) if fp.cfg.model.ngram_layer == 0 else x


def layer_input(x: np.ndarray, ids: np.ndarray, i, fp) -> np.ndarray:
    return _ngram(x, ids, fp) if i == fp.cfg.model.ngram_layer and i > 0 else x
