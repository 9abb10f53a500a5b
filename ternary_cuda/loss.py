"""Next-token cross-entropy (and the z-loss) in PyTorch (mirrors ternary_mlx/loss.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.data.checks import check_token_ids


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats, float32; logits (B, T, V), targets (B, T) aligned per position."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="mean")


def z_loss_term(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)^2) over positions, float32: the z-loss (PaLM; parameter-golf's record
    adds 1e-4 of it). It pulls the softmax normaliser towards 1 without changing the argmax."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return torch.mean(lse * lse)


def with_z_loss(loss: torch.Tensor, logits: torch.Tensor,
                coefficient: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(objective, loss, z) with z = coefficient * z_loss_term(logits) and objective = loss + z."""
    z = coefficient * z_loss_term(logits)
    return loss + z, loss, z


def with_extra_terms(loss: torch.Tensor, logits: torch.Tensor, moe_aux: torch.Tensor | None,
                     t) -> tuple[torch.Tensor, list[torch.Tensor]]:
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


def next_token_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of `model` on inputs whose targets come from shared.data.batching.inputs_and_targets."""
    if model.check_ids:  # targets out of range are an error, never clamped or ignored (S13)
        check_token_ids(targets.detach().cpu().numpy(), model.config.model.vocab_size, "targets")
    return cross_entropy(model(input_ids), targets)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean per token.

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al. 2015).
    """
    ce = cross_entropy(logits, targets)
    log_p_s = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = torch.sum(torch.exp(log_p_t) * (log_p_t - log_p_s), dim=-1).mean()
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl
