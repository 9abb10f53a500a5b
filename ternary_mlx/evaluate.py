"""Validation loss and bits per byte in MLX (mirrors ternary_cuda/evaluate.py; windows and byte accounting in shared/)."""
from __future__ import annotations

import numpy as np
import mlx.core as mx
import mlx.nn as nn

from shared.data.batching import inputs_and_targets
from shared.train.evaluation import evaluate_tokens
from shared.train.ttt import TTTPlan, run_backend_ttt
from shared.data.tokenizers import Tokenizer
from ternary_mlx import parallel
from ternary_mlx.loss import cross_entropy


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


def loss_gradients(model, windows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """float32 gradients of the mean next-token cross-entropy of (B, T + 1) windows, for `names`."""
    from mlx.utils import tree_flatten
    x, y = inputs_and_targets(windows)
    loss_and_grad = nn.value_and_grad(model, lambda a, b: cross_entropy(model(a), b))
    _, grads = loss_and_grad(mx.array(x), mx.array(y))
    flat = dict(tree_flatten(grads))
    return {n: np.array(flat[n].astype(mx.float32)) for n in names}


def evaluate_ttt(model, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int, plan: TTTPlan, *,
                 max_tokens: int | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """Score-first test-time training over `tokens` (shared/train/ttt.py): val_loss_ttt, val_bpb_ttt,
    ttt_mode, ...; the model's weights are as before afterwards. One process: every rank that calls
    this runs the whole of it."""
    return run_backend_ttt(model, plan, tokens, tokenizer, seq_len, nll_fn=lambda x, y: token_nll(model, x, y),
                           grad_fn=lambda w, names: loss_gradients(model, w, names), max_tokens=max_tokens,
                           batch_size=batch_size, progress=progress)
