"""A NumPy float64 reference of the whole model forward pass, written from the equations.

This is the third implementation of the model, after ternary_mlx/model.py and ternary_cuda/model.py.
The backends are checked against each other (tests/parity/test_logits.py), but that cannot catch a
mistake they share (a wrong RoPE convention, a missed norm, GQA heads grouped the wrong way) because
they mirror each other. This file shares no code with them: it is plain NumPy in float64, one
function per equation, so the float32 backends must land within rounding error of it.

The model (Qwen3 layout, Hugging Face names; see shared/spec/params.py for parameters and shapes):

    x = E_used[ids]                                          embedding lookup
    per layer:  x = x + Attn(RMSNorm(x));  x = x + MLP(RMSNorm(x))     pre-norm, residuals
    logits = RMSNorm(x) @ H_used.T,  H = E (tied) or lm_head;  optional c * tanh(logits / c)

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g. Attention: grouped-query (query head h reads key/value
head h // (heads / kv_heads), as Hugging Face's repeat_kv), optional per-head RMSNorm of q and k,
non-interleaved RoPE, causal softmax(q k^T / sqrt(head_dim)). MLP: SwiGLU down(silu(gate x) * up x)
or relu^2 down(relu(up x)^2). SubLN (BitNet) inserts RMSNorms before o_proj and down_proj, blended
in as x + lambda * (RMSNorm(x) - x).

Ternary projection (DESIGN 3.2): the codes q and scales s come from shared/spec/ternary.py in float32,
bit for bit as the backends compute them (they decide which side of a rounding boundary each weight
falls on, so they must not be recomputed in float64); W_used = W + lambda * (q * s - W) is then
evaluated in float64. With ternary.activation_bits = 8 the input of every ternary projection is
quantized per token (absmax) in float32, see `_quantize_activations` for why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.spec import ternary as T
from shared.spec.checkpoint import check_tensor_set
from shared.spec.config import RunConfig
from shared.data.checks import check_token_ids
from shared.spec.params import float_qat_parameters, parameter_shapes, ternary_parameters


# ---- which weights are ternary, and what the forward pass uses for them -------------------------
def ternary_names(cfg: RunConfig) -> frozenset[str]:
    """The weights that are projected to ternary, as the parameter specs say (shared/spec/params.py)."""
    return frozenset(ternary_parameters(cfg))


def effective_weight(w: np.ndarray, cfg: RunConfig, lam: float) -> np.ndarray:
    """W_used = W + lam * (q * s - W), float64, for one ternary weight W (out, in)."""
    g = cfg.ternary.group_size
    codes, scales = T.quantize(np.asarray(w, np.float32), g, cfg.ternary.eps)  # float32, the spec's bits
    w_t = T.dequantize(codes, scales, g).astype(np.float64)  # q * s: exact, q is -1, 0 or +1
    w64 = np.asarray(w, np.float64)
    return w64 + lam * (w_t - w64)


def effective_weights(cfg: RunConfig, weights: dict[str, np.ndarray], ternary: frozenset[str],
                      lam: float) -> dict[str, np.ndarray]:
    """Every weight as the forward pass uses it, in float64 (the `ternary` ones projected, the
    ternary.float_qat ones rounded onto float8 e4m3)."""
    fp8 = set(float_qat_parameters(cfg))
    return {n: effective_weight(w, cfg, lam) if n in ternary
            else T.round_e4m3(w).astype(np.float64) if n in fp8 else np.asarray(w, np.float64)
            for n, w in weights.items()}


def _quantize_activations(x: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """8-bit per-token absmax fake quantization of a ternary projection's input x (..., in), and
    each token's distance to the nearest rounding boundary (..., in grid steps, 0..0.5).

    Done in float32 with the spec's function, as the backends do, and not in float64: it is a
    staircase, and which step a value lands on must follow the float32 definition (the per-token
    scale 127 / max|x| is a float32 number, ties are float32 ties). The reference's float64 input
    still differs from a backend's float32 input by rounding (measured: up to ~1.5e-4 of a step),
    so a value that close to a boundary may round the other way there, changing that activation by
    a whole step. The margin lets a test tell those positions apart (tests/parity/test_reference.py).
    """
    bits, eps = cfg.ternary.activation_bits, cfg.ternary.eps
    x32 = x.astype(np.float32)
    xq = T.quantize_activations(x32, bits, eps)
    qmax = np.float32(2 ** (bits - 1) - 1)
    steps = x32 * (qmax / np.maximum(np.abs(x32).max(axis=-1, keepdims=True), np.float32(eps)))
    margin = np.abs(steps - np.floor(steps) - 0.5).min(axis=-1)  # 0: exactly on a boundary
    return xq.astype(np.float64), margin


@dataclass
class _Pass:
    """What every step of one forward pass reads: the config, the weights as used, which of them
    are ternary, lambda, and where each token's activation quantization margin goes (B, T)."""
    cfg: RunConfig
    w: dict[str, np.ndarray]
    ternary: frozenset[str]
    lam: float
    margin: np.ndarray


def linear(x: np.ndarray, name: str, fp: _Pass) -> np.ndarray:
    """y = x @ W_used.T for the weight `name` (out, in); x (B, T, in) -> (B, T, out)."""
    if fp.cfg.ternary.activation_bits and name in fp.ternary:
        x, margin = _quantize_activations(x, fp.cfg)
        np.minimum(fp.margin, margin, out=fp.margin)
    w = fp.w[name]
    y = x.reshape(-1, w.shape[1]) @ w.T  # as 2-D: NumPy's stacked (3-D) matmul is far slower
    return y.reshape(x.shape[:-1] + (w.shape[0],))


# ---- the equations ---------------------------------------------------------------------------------
def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * gain over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Hugging Face (non-interleaved) RoPE on (B, heads, T, D): dimension i is paired with i + D/2
    (not with i + 1), and the pair at position p is rotated by the angle p * theta^(-2i/D)."""
    T_, D = x.shape[-2], x.shape[-1]
    inv_freq = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    angle = np.arange(T_, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(D) + causal mask) v. q (B, H, T, D); k, v (B, H_kv, T, D) -> (B, H, T, D)."""
    B, H, T_, D = q.shape
    group = H // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # kv head j serves heads j*group..
    scores = q @ k.transpose(0, 1, 3, 2) * D ** -0.5  # (B, H, T, T)
    future = np.triu(np.ones((T_, T_), bool), k=1)  # position t sees positions <= t only
    scores = np.where(future, -np.inf, scores)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def sub_norm(x: np.ndarray, gain: np.ndarray, eps: float, lam: float) -> np.ndarray:
    """SubLN blended in by the quantization warm-up: x + lam * (RMSNorm(x) - x)."""
    return x + lam * (rms_norm(x, gain, eps) - x)


# ---- blocks ----------------------------------------------------------------------------------------
def attention_block(x: np.ndarray, p: str, fp: _Pass) -> np.ndarray:
    """Self-attention of layer prefix `p` on its (already normed) input x (B, T, hidden)."""
    m, w = fp.cfg.model, fp.w
    B, T_, _ = x.shape
    H, H_kv, D = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    q = linear(x, p + "self_attn.q_proj.weight", fp).reshape(B, T_, H, D)
    k = linear(x, p + "self_attn.k_proj.weight", fp).reshape(B, T_, H_kv, D)
    v = linear(x, p + "self_attn.v_proj.weight", fp).reshape(B, T_, H_kv, D)
    if m.qk_norm:  # Qwen3: per head, over head_dim, before RoPE
        q = rms_norm(q, w[p + "self_attn.q_norm.weight"], m.rms_norm_eps)
        k = rms_norm(k, w[p + "self_attn.k_norm.weight"], m.rms_norm_eps)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, T, D)
    q, k = rope(q, m.rope_theta), rope(k, m.rope_theta)
    if m.qk_gain is not None:  # q_h <- g_h * q_h, one learned gain per query head, after RoPE
        q = q * w[p + "self_attn.q_gain"][:, None, None]
    o = causal_attention(q, k, v)
    o = o.transpose(0, 2, 1, 3).reshape(B, T_, H * D)  # heads concatenated, head-major
    if m.subln:
        o = sub_norm(o, w[p + "self_attn.attn_sub_norm.weight"], m.rms_norm_eps, fp.lam)
    return linear(o, p + "self_attn.o_proj.weight", fp)


def mlp_block(x: np.ndarray, p: str, fp: _Pass) -> np.ndarray:
    """SwiGLU down(silu(gate x) * up x) or relu^2 down(relu(up x)^2); x (B, T, hidden)."""
    m = fp.cfg.model
    up = linear(x, p + "mlp.up_proj.weight", fp)  # (B, T, intermediate)
    if m.hidden_act == "silu":
        gate = linear(x, p + "mlp.gate_proj.weight", fp)
        h = gate / (1.0 + np.exp(-gate)) * up  # silu(g) = g * sigmoid(g)
    elif m.hidden_act == "relu2":
        h = np.maximum(up, 0.0) ** 2
    else:  # validate() rejects others; an unknown one must not pass silently
        raise ValueError(f"unsupported hidden_act {m.hidden_act!r}")
    if m.subln:
        h = sub_norm(h, fp.w[p + "mlp.ffn_sub_norm.weight"], m.rms_norm_eps, fp.lam)
    return linear(h, p + "mlp.down_proj.weight", fp)


def decoder_layer(x: np.ndarray, i: int, fp: _Pass) -> np.ndarray:
    """Pre-norm block: the residual stream x (B, T, hidden) is never normed itself."""
    p, eps, w = f"model.layers.{i}.", fp.cfg.model.rms_norm_eps, fp.w
    x = x + attention_block(rms_norm(x, w[p + "input_layernorm.weight"], eps), p, fp)
    return x + mlp_block(rms_norm(x, w[p + "post_attention_layernorm.weight"], eps), p, fp)


def reference_forward(cfg: RunConfig, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                      quant_lambda: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(logits (B, T, vocab) float64, margin (B, T)): see `reference_logits`. margin[b, t] is how
    close any activation quantized for token (b, t) came to a rounding boundary, in steps (inf
    without activation quantization); a float32 backend may round those differently."""
    m = cfg.model
    check_tensor_set(parameter_shapes(m), {k: tuple(v.shape) for k, v in weights.items()}, "weights")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {ids.shape}")
    check_token_ids(ids, m.vocab_size)  # out-of-vocabulary ids raise, never wrap or clamp
    if not 0.0 <= quant_lambda <= 1.0:
        raise ValueError(f"quant_lambda must be in [0, 1], got {quant_lambda}")
    ternary = ternary_names(cfg)
    fp = _Pass(cfg, effective_weights(cfg, weights, ternary, quant_lambda), ternary, float(quant_lambda),
               np.full(ids.shape, np.inf))
    x = fp.w["model.embed_tokens.weight"][ids]  # (B, T, hidden); a lookup: no activation quantization
    for i in range(m.num_hidden_layers):
        x = decoder_layer(x, i, fp)
    x = rms_norm(x, fp.w["model.norm.weight"], m.rms_norm_eps)
    head = "model.embed_tokens.weight" if m.tie_word_embeddings else "lm_head.weight"
    logits = linear(x, head, fp)  # (B, T, vocab)
    if m.final_logit_softcapping:
        c = m.final_logit_softcapping
        logits = c * np.tanh(logits / c)
    return logits, fp.margin


def reference_logits(cfg: RunConfig, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                     quant_lambda: float = 1.0) -> np.ndarray:
    """Logits (B, T, vocab) float64 for input_ids (B, T), from latent weights under canonical names.

    quant_lambda is the ternary warm-up weight: it blends every ternary weight and every SubLN.
    """
    return reference_forward(cfg, weights, input_ids, quant_lambda)[0]
