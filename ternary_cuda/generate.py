"""Text generation in PyTorch (mirrors ternary_mlx/generate.py; sampling in shared/train/generation.py)."""
from __future__ import annotations

import numpy as np
import torch

from shared.train.generation import generate_text
from shared.data.tokenizers import Tokenizer


@torch.no_grad()
def last_logits(model, ids: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    return model(torch.from_numpy(ids).to(device))[0, -1].float().cpu().numpy()


def generate(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100, **kw) -> str:
    context = model.config.model.max_position_embeddings
    return generate_text(lambda ids: last_logits(model, ids), tokenizer, prompt, max_new_tokens, context, **kw)
