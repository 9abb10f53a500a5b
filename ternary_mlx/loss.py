"""Next-token cross-entropy (and the z-loss) in MLX (mirrors ternary_cuda/loss.py)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.data.checks import check_token_ids
from ternary_mlx import cpu_math


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Mean cross-entropy in nats, float32; logits (B, T, V), targets (B, T) aligned per position."""
    if cpu_math.use_cpu_math():  # one exp pass over the logits instead of two (ternary_mlx/cpu_math.py)
        V = logits.shape[-1]
        return cpu_math.mean_cross_entropy(logits.astype(mx.float32).reshape(-1, V), targets.reshape(-1))
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


def with_extra_terms(loss: mx.array, logits: mx.array | None, moe_aux: mx.array | None,
                     t, z_term: mx.array | None = None) -> tuple[mx.array, list[mx.array]]:
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


def _head_parameters(model) -> dict:
    """The trainable parameters head_logits reads (lm_head, or the tied embedding and its factored
    projection; the vocab bias): the explicit inputs of each checkpointed chunk, so that its
    gradients reach them (mx.checkpoint differentiates its inputs, not what the function captures)."""
    p = model.trainable_parameters()
    dec = {k: p["model"][k] for k in ("embed_tokens", "embed_proj_rev", "vocab_bias") if k in p["model"]}
    head = {"lm_head": p["lm_head"]} if "lm_head" in p else {}
    if not model.tied:
        dec = {k: v for k, v in dec.items() if k == "vocab_bias"}
    return {**head, "model": dec} if dec else head


def _chunk_sums(model, teacher, temperature: float):
    """A function (head parameters, h (n, H), y (n,), teacher h (n, H') or None) -> [CE sum, KL sum,
    sum of logsumexp^2] over the n tokens, float32."""
    def sums(params, h, y, th):
        model.update(params)
        logits = model.head_logits(h).astype(mx.float32)
        lse = mx.logsumexp(logits, axis=-1)
        ce = mx.sum(lse - mx.take_along_axis(logits, mx.stop_gradient(y)[:, None], axis=-1)[:, 0])
        kl = mx.array(0.0, mx.float32)
        if th is not None:
            t_logits = mx.stop_gradient(teacher.head_logits(th)).astype(mx.float32)
            log_p_t = nn.log_softmax(t_logits / temperature, axis=-1)
            log_p_s = nn.log_softmax(logits / temperature, axis=-1)
            kl = mx.sum(mx.exp(log_p_t) * (log_p_t - log_p_s))
        return mx.stack([ce, kl, mx.sum(lse * lse)])
    return sums


def _one_after_another(arrays: list, previous: list) -> list:
    """`arrays` (a chunk's slices) made to wait for `previous` (the last chunk's results; [] for the first)."""
    return mx.depends(arrays, previous) if previous else arrays


def _sequential_chunk_total(sums, starts: list[int], chunk: int):
    """A custom function (head parameters, h, y, [teacher h] or []) -> the sum over chunks of
    sums(params, h[s:s + chunk], y[s:s + chunk], th[s:s + chunk]), whose backward recomputes each
    chunk's logits (as mx.checkpoint would). Each chunk, forward and backward, runs after the one
    before it (mx.depends): without that, MLX's scheduler (a breadth-first tape up to 20 wide, 10
    CPU tasks in flight) interleaves the independent chunks, and all of them hold their chunk x vocab
    tensors at once, so chunks saved nothing (measured: the same peak at 4 chunks of 128 as at one of
    512). The backward walks the chunks last to first and sums the head gradients in that order, the
    order MLX's autodiff used for checkpointed chunks: the same bits."""
    def chunk_args(h, y, th, s, previous):
        h_c, *th_c = _one_after_another([h[s:s + chunk], *(t[s:s + chunk] for t in th)], previous)
        return h_c, y[s:s + chunk], (th_c[0] if th_c else None)

    @mx.custom_function
    def total(params, h, y, th):
        out, previous = mx.zeros((3,), mx.float32), []
        for s in starts:
            part = sums(params, *chunk_args(h, y, th, s, previous))
            out, previous = out + part, [part]
        return out

    @total.vjp
    def total_vjp(primals, cotangent, output):
        params, h, y, th = primals
        names = [k for k, _ in tree_flatten(params)]
        grad_params, grad_h = None, {}
        for s in reversed(starts):
            previous = [] if grad_params is None else [*grad_params, grad_h[s + chunk]]
            h_c, y_c, th_c = chunk_args(h, y, th, s, previous)

            def chunk_sums(*arrays, y_c=y_c, th_c=th_c):
                return sums(tree_unflatten(list(zip(names, arrays[:-1]))), arrays[-1], y_c, th_c)

            _, grads = mx.vjp(chunk_sums, [v for _, v in tree_flatten(params)] + [h_c], [cotangent])
            grad_params = grads[:-1] if grad_params is None else [a + g for a, g in zip(grad_params, grads[:-1])]
            grad_h[s] = grads[-1]
        return (tree_unflatten(list(zip(names, grad_params))), mx.concatenate([grad_h[s] for s in starts]),
                mx.zeros_like(y), [mx.zeros_like(t) for t in th])

    return total


def chunked_loss(model, h: mx.array, targets: mx.array, chunk: int, teacher=None,
                 teacher_h: mx.array | None = None, alpha: float = 0.0,
                 temperature: float = 1.0) -> tuple[mx.array, mx.array]:
    """(loss, z_loss_term) from the final hidden states h (B, T, H), `chunk` tokens at a time:
    at most one chunk's chunk x vocab float32 logits (and their softmax and gradient) exist at once,
    in the forward and in the backward (_sequential_chunk_total). The loss is cross_entropy, or
    distillation_loss with a teacher (its hidden states teacher_h); z_loss_term as z_loss_term(logits).
    Equal to the whole-batch functions up to float rounding."""
    n = h.shape[0] * h.shape[1]
    h, y = h.reshape(n, h.shape[-1]), targets.reshape(n)
    th = [] if teacher_h is None else [mx.stop_gradient(teacher_h).reshape(n, teacher_h.shape[-1])]
    total = _sequential_chunk_total(_chunk_sums(model, teacher, temperature), list(range(0, n, chunk)), chunk)
    total = total(_head_parameters(model), h, y, th)
    ce, kl, lse2 = total[0] / n, total[1] / n, total[2] / n
    loss = ce if teacher is None else (1.0 - alpha) * ce + alpha * temperature ** 2 * kl
    return loss, lse2


def hidden_states(decoder, input_ids: mx.array, layer_keep: mx.array | None = None,
                  with_aux: bool = False) -> tuple[mx.array, mx.array | None]:
    """(final-normed hidden states, experts' balance loss or None) of `decoder` (Model.model, or a
    compiled one): the Model's call without the head, for chunked_loss."""
    aux = [] if with_aux else None
    h = decoder(input_ids, layer_keep, aux)
    if not with_aux:
        return h, None
    return h, (sum(aux) / len(aux) if aux else mx.array(0.0))
