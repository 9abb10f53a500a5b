"""Text generation in MLX (mirrors ternary_cuda/generate.py; sampling in shared/train/generation.py)."""
from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np

from shared.data.tokenizers import Tokenizer
from shared.train.generation import CachedLogits, Progress, generate_text, kv_cache_unsupported
from ternary_mlx.kv_cache import KVCache
from ternary_mlx.layers import frozen_weights


def last_logits(model, ids: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
    return np.array(model(mx.array(ids), cache=cache)[0, -1].astype(mx.float32))


def cached_last_logits(model) -> CachedLogits:
    """last_logits through a KV cache: a prefill, then one token per call."""
    return CachedLogits(lambda: KVCache(model.config), lambda ids, cache: last_logits(model, ids, cache))


def generate(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100, *, kv_cache: bool = True,
             log=sys.stderr, **kw) -> str:
    """With `kv_cache` (and a model the cache supports), decoding reads a KV cache; otherwise, and
    saying so on `log`, each token runs the full forward. The ternary weights are computed once."""
    context = model.config.model.max_position_embeddings
    why = kv_cache_unsupported(model.config.model) if kv_cache else "switched off (--no-kv-cache)"
    if why:
        print(f"generate: no KV cache ({why}): the full forward runs for every token", file=log)
    logits = (lambda ids: last_logits(model, ids)) if why else cached_last_logits(model)
    with frozen_weights(model):
        return generate_text(logits, tokenizer, prompt, max_new_tokens, context,
                             progress=Progress(max_new_tokens, log), **kw)
