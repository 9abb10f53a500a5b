"""BigramHash (parameter-golf records from 2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA on):
a learned table indexed by a hash of each (previous, current) token pair, added to the embedding.

    h_0 = buckets - 1                                        (no pair ends at position 0)
    h_t = ((36313 * ids_t) xor (27191 * ids_{t-1})) mod (buckets - 1),  t >= 1
    out = scale * table[h] (projected to hidden by proj when model.bigram_hash_dim is set)

The records compute the products and the xor in int32, so ids above 59137 wrap around (two's
complement) and the xor may be negative; mod is the floor one (a result in [0, buckets - 1)). Every
implementation here reproduces exactly that int32 arithmetic inside int64 (tests/unit/test_block_plugins.py
checks bucket ids bit for bit on ids near 2^31 and at position 0).

Init: the table starts at zero and scale at 0.05, as in the records; proj is N(0, initializer_range)
like every matrix here (the records zero it and then overwrite it with a scaled orthogonal init).
Acts at the embedding, before the embedding norm, as in the records (so it is part of x0).
"""
from __future__ import annotations

import numpy as np

from shared.spec.blocks import BlockPlugin
from shared.spec.options import CONTROL, EMBEDDING, MATRIX, OURS, ModelOption, ParamRule

_TABLE = ParamRule("model.bigram_hash.embed.weight", lambda m: (m.bigram_hash_buckets, m.bigram_hash_dim or m.hidden_size),
                   EMBEDDING, after="model.norm.weight", init="zeros", scope="model")
_PROJ = ParamRule("model.bigram_hash.proj.weight", lambda m: (m.hidden_size, m.bigram_hash_dim), MATRIX,
                  after="model.norm.weight", scope="model", when=lambda m: m.bigram_hash_dim is not None)
_SCALE = ParamRule("model.bigram_hash.scale", lambda m: (1,), CONTROL, after="model.norm.weight", init="constant",
                   init_value=0.05, scope="model")


def _buckets(v) -> str | None:
    return None if v == 0 or v >= 2 else f"must be 0 (off) or at least 2 (one bucket is position 0's), got {v!r}"


def _dim(v) -> str | None:
    return None if v is None or v > 0 else f"must be positive (the table width), or absent for hidden_size, got {v!r}"


PLUGIN = BlockPlugin(
    "bigram_hash",
    options=(
        ModelOption("bigram_hash_buckets", int, 0,
                    "the records' BigramHash: x += scale * table[h(ids_{t-1}, ids_t)] at the embedding, "
                    "h = (36313 id_t xor 27191 id_{t-1}) mod (buckets - 1) in int32, position 0: buckets - 1; "
                    "0 = off",
                    OURS, "no hashed bigram embedding", check=_buckets,
                    params=lambda v: (_TABLE, _PROJ, _SCALE) if v else (), example=64),
        ModelOption("bigram_hash_dim", int | None, None,
                    "the BigramHash table's width, projected up to hidden by model.bigram_hash.proj.weight "
                    "(absent: hidden wide, no projection)",
                    OURS, "no hashed bigram embedding", check=_dim,
                    requires=lambda v, m: None if m.bigram_hash_buckets else "needs model.bigram_hash_buckets",
                    example=16, example_needs=dict(bigram_hash_buckets=64)),
    ),
    hooks=("embedding",),
    doc="BigramHash: a hashed (previous, current) token-pair embedding")


def wrap_int32(v: np.ndarray) -> np.ndarray:
    """int64 values taken modulo 2^32 into [-2^31, 2^31): what int32 arithmetic would hold."""
    return (v + 2 ** 31) % 2 ** 32 - 2 ** 31


def bucket_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """(B, T) int64 bucket of each position (see the module docstring)."""
    t = np.asarray(ids, np.int64)
    mod = buckets - 1
    out = np.full(t.shape, mod, np.int64)
    pair = wrap_int32(wrap_int32(36313 * t[:, 1:]) ^ wrap_int32(27191 * t[:, :-1]))
    out[:, 1:] = np.mod(pair, mod)  # NumPy's integer mod is the floor one: in [0, mod)
    return out


def embedding(x: np.ndarray, ids: np.ndarray, i, fp) -> np.ndarray:
    from shared.spec.reference_model import linear
    m = fp.cfg.model
    e = fp.w["model.bigram_hash.embed.weight"][bucket_ids(ids, m.bigram_hash_buckets)]
    if m.bigram_hash_dim is not None:
        e = linear(e, "model.bigram_hash.proj.weight", fp)
    return x + fp.w["model.bigram_hash.scale"][0] * e
