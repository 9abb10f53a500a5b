"""Next-token cross-entropy in MLX (mirrors ternary_cuda/loss.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from shared.data_checks import check_token_ids


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean cross-entropy in nats, float32; logits (B, T, V), targets (B, T) aligned per position."""
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")


def next_token_loss(model, input_ids: mx.array, targets: mx.array) -> mx.array:
    """Loss of `model` on inputs whose targets come from shared.batching.inputs_and_targets."""
    if model.check_ids:  # targets out of range are an error, never clamped or ignored (S13)
        check_token_ids(np.array(targets), model.config.model.vocab_size, "targets")
    return cross_entropy(model(input_ids), targets)
