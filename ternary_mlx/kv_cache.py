"""Per-layer key/value caches for incremental decoding in MLX (mirrors ternary_cuda/kv_cache.py).

`model(prompt_ids, cache=cache)` fills the cache at positions 0 .. T-1 and `model(next_id, cache=cache)`
(one token) reads it: each applied layer keeps its keys (after RoPE) and values (after the value
residual's mix), so a step costs one token's forward and attention over the cached positions.
Per-token options need nothing more (value residual mixes the token's own layer-0 values, XSA reads
the token's own value, MoE routes per token, U-Net skips and residual mixes are per position);
depth recurrence gets a slot per applied layer. Block plug-ins (BigramHash, n-grams, smear) read
earlier tokens' ids or hidden states, which this cache does not keep: it refuses them.
"""
from __future__ import annotations

import mlx.core as mx

from shared.train.generation import kv_cache_unsupported


class LayerSlot:
    """Applied layer i's view of a KVCache: the position offset and the append."""

    def __init__(self, cache: "KVCache", i: int):
        self.cache, self.i = cache, i

    @property
    def offset(self) -> int:
        return self.cache.offset

    def update(self, k, v, T: int):
        """Append k, v (B, H_kv, T, D); return every position's keys and values so far."""
        c, i = self.cache, self.i
        if c.keys[i] is None:
            c.keys[i], c.values[i] = k, v
        else:
            c.keys[i] = mx.concatenate([c.keys[i], k], axis=2)
            c.values[i] = mx.concatenate([c.values[i], v], axis=2)
        return c.keys[i], c.values[i]


class KVCache:
    """Keys and values of every applied layer, (B, H_kv, T, D) each, and the next position."""

    def __init__(self, config):
        why = kv_cache_unsupported(config.model)
        if why:
            raise ValueError(f"KV cache: {why}")
        depth = config.model.num_hidden_layers
        self.keys, self.values, self.offset = [None] * depth, [None] * depth, 0

    def layer(self, i: int) -> LayerSlot:
        return LayerSlot(self, i)

    def check(self, plugins, T: int) -> None:
        """Refuse what the cache cannot do: block plug-ins, and anything but a prompt at position 0 or
        one token after it (a causal mask over a chunk at an offset is not aligned the same way in
        every framework)."""
        if any(plugins.at.values()):
            raise ValueError("KV cache: block plug-ins need earlier tokens' state, which the cache does not keep")
        if T == 0 or (self.offset > 0 and T != 1):
            raise ValueError(f"KV cache: give the prompt first, then one token at a time (got {T} tokens "
                             f"at position {self.offset})")

    def advance(self, T: int) -> None:
        self.offset += T
