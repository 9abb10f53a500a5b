"""Validation loss and bits per byte in PyTorch (mirrors ternary_mlx/evaluate.py; windows and byte accounting in shared/)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared.data.batching import inputs_and_targets
from shared.train.evaluation import evaluate_tokens
from shared.train.ttt import TTTPlan, run_backend_ttt
from shared.data.tokenizers import Tokenizer
from ternary_cuda import parallel
from ternary_cuda.loss import cross_entropy


@torch.no_grad()
def token_nll(model, inputs: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-token negative log-likelihood in nats (float64) for (B, T) inputs and targets, of the
    logits divided by `temperature` (after any soft-cap)."""
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(np.asarray(inputs, np.int64)).to(device)).float()
    if temperature != 1.0:
        logits = logits / temperature
    y = torch.from_numpy(np.asarray(targets, np.int64)).to(device)
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").reshape(y.shape)
    return nll.cpu().numpy().astype(np.float64)


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
    x, y = (np.ascontiguousarray(a) for a in inputs_and_targets(np.asarray(windows, np.int64)))
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    with torch.enable_grad():
        loss = cross_entropy(model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return {n: (np.zeros(params[n].shape, np.float32) if g is None else g.float().cpu().numpy())
            for n, g in zip(names, grads)}


def evaluate_ttt(model, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int, plan: TTTPlan, *,
                 max_tokens: int | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """Score-first test-time training over `tokens` (shared/train/ttt.py): val_loss_ttt, val_bpb_ttt,
    ttt_mode, ...; the model's weights are as before afterwards. One process: every rank that calls
    this runs the whole of it."""
    return run_backend_ttt(model, plan, tokens, tokenizer, seq_len, nll_fn=lambda x, y: token_nll(model, x, y),
                           grad_fn=lambda w, names: loss_gradients(model, w, names), max_tokens=max_tokens,
                           batch_size=batch_size, progress=progress)
