"""Validation loss and bits per byte in MLX (mirrors ternary_cuda/evaluate.py; windows and byte accounting in shared/)."""
from __future__ import annotations

import numpy as np
import mlx.core as mx
import mlx.nn as nn

from shared.train.evaluation import evaluate_tokens
from shared.data.tokenizers import Tokenizer
from ternary_mlx import parallel


def token_nll(model, inputs: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-token negative log-likelihood in nats (float64) for (B, T) inputs and targets, of the
    logits divided by `temperature` (after any soft-cap)."""
    logits = model(mx.array(inputs)).astype(mx.float32)
    if temperature != 1.0:
        logits = logits / temperature
    return np.array(nn.losses.cross_entropy(logits, mx.array(targets), reduction="none")).astype(np.float64)


def evaluate(model, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int, *, stride: int | None = None,
             max_tokens: int | None = None, batch_size: int = 8, progress: bool = False,
             across_ranks: bool = False, temperature: float = 1.0) -> dict:
    """val_loss, val_bpb, perplexity over `tokens` (see shared.train.evaluation.evaluate_tokens).

    across_ranks: every rank of this data-parallel job calls this together and scores its share
    of the batches; all get the metrics one process would (no effect in one process).
    temperature: score logits / temperature (train.temperature_scaling; 1.0 = the model's own)."""
    shard = parallel.eval_shard(model) if across_ranks else None
    return evaluate_tokens(lambda x, y: token_nll(model, x, y, temperature), tokens, tokenizer, seq_len, stride=stride,
                           max_tokens=max_tokens, batch_size=batch_size, progress=progress, shard=shard)
