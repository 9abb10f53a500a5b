"""The top-k mixture-of-experts MLP in MLX (model.moe_num_experts; mirrors ternary_cuda/experts.py).

Dense dispatch: every expert runs on every token and the gate, zero for the experts a token did not
choose, selects; no per-token Python loop (one pass per expert), and the same arithmetic in both
backends and the NumPy reference. (Computing only the chosen tokens per expert would save
(E - k) / E of the expert FLOPs; at the sizes trained here the gather costs about what it saves.)
Choice and ties: expert e is chosen for a token when fewer than k experts beat it, where e' beats e
if its router logit is larger, or equal with e' < e (the lower index wins a tie) -- written as
comparisons, not a framework's top-k, whose tie order differs between NumPy, MLX and torch.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from shared.spec.config import RunConfig
from ternary_mlx import cpu_math


def chosen_experts(logits: mx.array, k: int) -> mx.array:
    """(..., E) router logits -> (..., E) float 0/1: the k largest per token, a tie to the lower index."""
    E = logits.shape[-1]
    le, lj = logits[..., :, None], logits[..., None, :]  # [..., e, j]
    lower = mx.arange(E)[None, :] < mx.arange(E)[:, None]  # [e, j]: j < e
    beaten_by = ((lj > le) | ((lj == le) & lower)).sum(axis=-1)  # as shared/spec/reference_model.py
    return mx.stop_gradient((beaten_by < k).astype(mx.float32))


def balance_loss(probs: mx.array, chosen: mx.array, k: int) -> mx.array:
    """Switch Transformer's load-balancing loss E * sum_e f_e P_e over all tokens: f_e the share of
    the token-to-expert assignments that went to e, P_e the mean router probability of e (1 when
    either is uniform, E when one expert takes every token with probability 1)."""
    E = probs.shape[-1]
    f = mx.mean(chosen.reshape(-1, E), axis=0) / k
    p = mx.mean(probs.reshape(-1, E), axis=0)
    return E * mx.sum(f * p)


def _router_logits_float64(x: mx.array, weight: mx.array) -> mx.array:
    """x @ weight.T summed in float64, rounded once to float32. The softmax over these logits scales
    each expert's whole output, so their float32 rounding reaches the logits directly: with logits
    of ~20 (tests/parity/test_reference.py's moe3-top2 row) a float32 matmul errs by up to 8e-6,
    the probabilities by 2.7e-6, and the model's logits by up to 1.5e-5 (its bound: 1e-5); in
    float64 the row is at most 4.9e-6 with OpenBLAS on 1 or 2 threads and with MLX's own BLAS. The
    router is (E, hidden) with E a handful: the float64 matmul costs nothing next to the experts.
    On the CPU only (a GPU has no float64)."""
    return (x.astype(mx.float64) @ weight.astype(mx.float64).T).astype(mx.float32)


class MixtureMLP(nn.Module):
    """mlp.router.weight (E, hidden), float; mlp.experts.{e}: MLPs of the layer's kind (`make_expert`)."""

    def __init__(self, cfg: RunConfig, make_expert):
        super().__init__()
        m = cfg.model
        self.router = nn.Linear(m.hidden_size, m.moe_num_experts, bias=False)
        self.experts = [make_expert(cfg) for _ in range(m.moe_num_experts)]
        self.top_k = m.moe_top_k

    def __call__(self, x: mx.array, aux: list | None = None) -> mx.array:
        """x (B, T, hidden), the normed block input; appends this layer's balance loss to `aux`."""
        if cpu_math.use_cpu_math():  # the router's E columns in float64 (see _router_logits_float64)
            logits = _router_logits_float64(x, self.router.weight)
        else:
            logits = self.router(x).astype(mx.float32)
        probs = mx.softmax(logits, axis=-1)
        chosen = chosen_experts(logits, self.top_k)
        gates = (probs * chosen).astype(x.dtype)
        y = None
        for e, expert in enumerate(self.experts):
            part = gates[..., e:e + 1] * expert(x)
            y = part if y is None else y + part
        if aux is not None:
            aux.append(balance_loss(probs, chosen, self.top_k))
        return y
