"""Next-token cross-entropy (and the z-loss) in MLX (mirrors ternary_cuda/loss.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from shared.data.checks import check_token_ids


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean cross-entropy in nats, float32; logits (B, T, V), targets (B, T) aligned per position."""
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")


def z_loss_term(logits: mx.array) -> mx.array:
    """mean(logsumexp(logits)^2) over positions, float32: the z-loss (PaLM; parameter-golf's record
    adds 1e-4 of it). It pulls the softmax normaliser towards 1 without changing the argmax."""
    lse = mx.logsumexp(logits.astype(mx.float32), axis=-1)
    return mx.mean(lse * lse)


def with_z_loss(loss: mx.array, logits: mx.array, coefficient: float) -> tuple[mx.array, mx.array, mx.array]:
    """(objective, loss, z) with z = coefficient * z_loss_term(logits) and objective = loss + z."""
    z = coefficient * z_loss_term(logits)
    return loss + z, loss, z


def with_extra_terms(loss: mx.array, logits: mx.array, moe_aux: mx.array | None,
                     t) -> tuple[mx.array, list[mx.array]]:
    """(objective, [loss, *terms]): the z-loss and the experts' balance loss (moe_aux, unweighted), each
    times its coefficient of TrainConfig `t`, added to the loss in the order of
    shared.train.loss_terms.extra_terms."""
    objective, parts = loss, [loss]
    if t.z_loss:
        objective, _, z = with_z_loss(objective, logits, t.z_loss)
        parts.append(z)
    if t.moe_aux_loss:
        balance = t.moe_aux_loss * moe_aux
        objective = objective + balance
        parts.append(balance)
    return objective, parts


def next_token_loss(model, input_ids: mx.array, targets: mx.array) -> mx.array:
    """Loss of `model` on inputs whose targets come from shared.data.batching.inputs_and_targets."""
    if model.check_ids:  # targets out of range are an error, never clamped or ignored (S13)
        check_token_ids(np.array(targets), model.config.model.vocab_size, "targets")
    return cross_entropy(model(input_ids), targets)


def distillation_loss(logits: mx.array, targets: mx.array, teacher_logits: mx.array,
                      alpha: float, temperature: float) -> mx.array:
    """(1 - alpha) * CE + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean per token.

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al. 2015).
    """
    ce = cross_entropy(logits, targets)
    log_p_s = nn.log_softmax(logits.astype(mx.float32) / temperature, axis=-1)
    log_p_t = nn.log_softmax(teacher_logits.astype(mx.float32) / temperature, axis=-1)
    kl = mx.sum(mx.exp(log_p_t) * (log_p_t - log_p_s), axis=-1).mean()
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl
