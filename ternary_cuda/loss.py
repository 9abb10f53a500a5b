"""Next-token cross-entropy (and the z-loss) in PyTorch (mirrors ternary_mlx/loss.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def with_extra_terms(loss: torch.Tensor, logits: torch.Tensor | None, moe_aux: torch.Tensor | None,
                     t, z_term: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(objective, [loss, *terms]): the z-loss and the experts' balance loss (moe_aux, unweighted), each
    times its coefficient of TrainConfig `t`, added to the loss in the order of
    shared.train.loss_terms.extra_terms. z_term: z_loss_term already computed (chunked_loss; logits None)."""
    objective, parts = loss, [loss]
    if t.z_loss:
        if z_term is None:
            objective, _, z = with_z_loss(objective, logits, t.z_loss)
        else:
            z = t.z_loss * z_term
            objective = objective + z
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


def _chunk_sums(model, teacher, temperature: float, h: torch.Tensor, y: torch.Tensor,
                th: torch.Tensor | None) -> torch.Tensor:
    """[CE sum, KL sum, sum of logsumexp^2] over the n tokens of h (n, H), y (n,), teacher h (n, H')
    or None, float32 (run under checkpoint: backward recomputes the chunk's logits instead of
    keeping them)."""
    logits = model.head_logits(h).float()
    lse = torch.logsumexp(logits, dim=-1)
    ce = torch.sum(lse - torch.gather(logits, -1, y[:, None])[:, 0])
    kl = torch.zeros((), dtype=torch.float32, device=logits.device)
    if th is not None:
        with torch.no_grad():
            t_logits = teacher.head_logits(th).float()
        log_p_t = F.log_softmax(t_logits / temperature, dim=-1)
        log_p_s = F.log_softmax(logits / temperature, dim=-1)
        kl = torch.sum(torch.exp(log_p_t) * (log_p_t - log_p_s))
    return torch.stack([ce, kl, torch.sum(lse * lse)])


def chunked_loss(model, h: torch.Tensor, targets: torch.Tensor, chunk: int, teacher=None,
                 teacher_h: torch.Tensor | None = None, alpha: float = 0.0,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z_loss_term) from the final hidden states h (B, T, H), `chunk` tokens at a time:
    at most chunk x vocab float32 logits exist at once, in the forward and in the backward. The
    loss is cross_entropy, or distillation_loss with a teacher (its hidden states teacher_h);
    z_loss_term as z_loss_term(logits). Equal to the whole-batch functions up to float rounding."""
    n = h.shape[0] * h.shape[1]
    h, y = h.reshape(n, h.shape[-1]), targets.reshape(n)
    th = None if teacher_h is None else teacher_h.detach().reshape(n, teacher_h.shape[-1])
    total = torch.zeros(3, dtype=torch.float32, device=h.device)
    for s in range(0, n, chunk):
        part = None if th is None else th[s:s + chunk]
        total = total + checkpoint(_chunk_sums, model, teacher, temperature, h[s:s + chunk], y[s:s + chunk],
                                   part, use_reentrant=False)
    ce, kl, lse2 = total[0] / n, total[1] / n, total[2] / n
    loss = ce if teacher is None else (1.0 - alpha) * ce + alpha * temperature ** 2 * kl
    return loss, lse2


def hidden_states(decoder, input_ids: torch.Tensor, layer_keep: torch.Tensor | None = None,
                  with_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-normed hidden states, experts' balance loss or None) of `decoder` (Model.model, or a
    compiled one): the Model's call without the head, for chunked_loss."""
    aux = [] if with_aux else None
    h = decoder(input_ids, layer_keep, aux)
    if not with_aux:
        return h, None
    return h, (sum(aux) / len(aux) if aux else torch.zeros((), device=h.device))
