"""Text generation in MLX (mirrors ternary_cuda/generate.py; sampling in shared/train/generation.py)."""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from shared.train.generation import generate_text
from shared.data.tokenizers import Tokenizer


def last_logits(model, ids: np.ndarray) -> np.ndarray:
    return np.array(model(mx.array(ids))[0, -1].astype(mx.float32))


def generate(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100, **kw) -> str:
    context = model.config.model.max_position_embeddings
    return generate_text(lambda ids: last_logits(model, ids), tokenizer, prompt, max_new_tokens, context, **kw)
