"""Per-layer key/value caches for incremental decoding in MLX (mirrors ternary_cuda/kv_cache.py).

`model(prompt_ids, cache=cache)` fills the cache at positions 0 .. T-1 and `model(next_id, cache=cache)`
(one token) reads it: each applied layer keeps its keys (after RoPE) and values (after the value
residual's mix), so a step costs one token's forward and attention over the cached positions.
Per-token options need nothing more (value residual mixes the token's own layer-0 values, XSA reads
the token's own value, MoE routes per token, U-Net skips and residual mixes are per position);
depth recurrence gets a slot per applied layer. Block plug-ins (BigramHash, n-grams, smear, the
running-mean smear) read earlier tokens' ids or hidden states: the cache keeps every id and each
hook point's input history, and the plug-ins run over that history (blocks/__init__.py).
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

    def memo(self, key, make):
        """make() once per forward for every layer that asks with `key` (torch's RoPE tables)."""
        return self.cache.memo(key, make)

    def update(self, k, v):
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
        self.ids, self.hook_inputs = None, {}  # every id so far; the plug-ins' input histories
        self._memo = {}  # values every layer of one forward shares (LayerSlot.memo)

    def layer(self, i: int) -> LayerSlot:
        return LayerSlot(self, i)

    def begin(self, ids) -> None:
        """A forward of `ids` (B, T) starts: a prompt at position 0 or one token after it (a causal
        mask over a chunk at an offset is not aligned the same way in every framework)."""
        T = ids.shape[1]
        if T == 0 or (self.offset > 0 and T != 1):
            raise ValueError(f"KV cache: give the prompt first, then one token at a time (got {T} tokens "
                             f"at position {self.offset})")
        self.ids = ids if self.offset == 0 else mx.concatenate([self.ids, ids], axis=1)

    def history(self, key, x):
        """Block plug-ins: the input x (B, T, hidden) at hook point `key` appended to the earlier
        positions' inputs there; every position's input so far."""
        past = self.hook_inputs.get(key)
        self.hook_inputs[key] = x if past is None else mx.concatenate([past, x], axis=1)
        return self.hook_inputs[key]

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def advance(self, T: int) -> None:
        self.offset += T
        self._memo = {}  # its entries were for the positions just decoded
