"""Text generation in PyTorch (mirrors ternary_mlx/generate.py; sampling in shared/train/generation.py)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from shared.data.tokenizers import Tokenizer
from shared.train.generation import CachedLogits, Progress, generate_text, kv_cache_unsupported
from ternary_cuda.kv_cache import KVCache
from ternary_cuda.layers import frozen_weights


@torch.no_grad()
def last_logits(model, ids: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
    device = next(model.parameters()).device
    return model(torch.from_numpy(ids).to(device), cache=cache)[0, -1].float().cpu().numpy()


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
