"""A NumPy float64 reference of the whole model forward pass, written from the equations.

This is the third implementation of the model, after ternary_mlx/model.py and ternary_cuda/model.py.
The backends are checked against each other (tests/parity/test_logits.py), but that cannot catch a
mistake they share (a wrong RoPE convention, a missed norm, GQA heads grouped the wrong way) because
they mirror each other. This file shares no code with them: it is plain NumPy in float64, one
function per equation, so the float32 backends must land within rounding error of it.

The model (Qwen3 layout, Hugging Face names; see shared/spec/params.py for parameters and shapes):

    x = E_used[ids]                                          embedding lookup
    x = x @ P.T                                              with model.embed_dim: embed_proj P (hidden, embed_dim)
    optional x = RMSNorm(x) without gain (embed_norm);  x0 = x
    per layer:  x = x + Attn(RMSNorm(x));  x = x + MLP(RMSNorm(x))     pre-norm, residuals
    logits = RMSNorm(x) @ H_used.T,  H = E (tied) or lm_head   (tied with embed_dim: (RMSNorm(x) @ R.T) @ E.T,
                                                              R = embed_proj_rev (embed_dim, hidden))
    logits = logits + b (model.vocab_bias), then the optional soft-cap: c * tanh(logits / c), or the
    record's polynomial c * clamp(u - u^3/3 + u^5/15, -1, 1), u = clamp(logits / c, -2, 2)

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g (no g with rms_norm_weights = false). Attention:
grouped-query (query head h reads key/value head h // (heads / kv_heads), as Hugging Face's
repeat_kv), optional per-head RMSNorm of q and k, non-interleaved RoPE, causal
softmax(q k^T / sqrt(head_dim)). MLP: SwiGLU down(silu(gate x) * up x), or gateless down(a(up x))
with a = relu^2, relu, leaky relu or leaky relu^2. SubLN (BitNet) inserts RMSNorms before o_proj and
down_proj, blended in as x + lambda * (RMSNorm(x) - x); model.out_proj_norm puts a weightless RMSNorm
(gain 1, no blend) at the same place. RoPE frequencies are optionally ramped (model.rope_ramp_factor).

parameter-golf's block options: residual_mix starts each layer with x = m0 * x + m1 * x0;
branch_scales scales the two branches per channel (x + s_a * Attn(..), x + s_m * MLP(..)); with
unet_skips the first L // 2 layers push their outputs on a stack and decoder layer j first adds
skip_weights[j] * pop() while the stack is not empty. fused_qkv / fused_gate_up change only how a
backend computes the same projections, so they do not appear here.

Block plug-ins (shared/spec/blocks.py) act at four hook points, each called once: after the lookup
(and embed_proj), after embed_norm (the result is x0), before and after each layer. Their equations
are in shared/spec/reference_blocks/, one file each.
Depth and experts (issue #11): with num_unique_layers = U, applied layer i runs the stored block
i % U; stochastic depth multiplies both branches of applied layer i by layer_keep[i, b] (given, as
drawn in training; absent at evaluation); with moe_num_experts the MLP is `experts_block`.
Attention options (issue #11): value_residual mixes layer 0's values into every later layer's,
v = l0 * v_first + l1 * v with a learned pair per layer; xsa_last_n removes from each head's output,
in the last N layers, its component along its own token's unit value vector; gated_attention
multiplies each head's output by sigmoid(W x + b), x the attention's input; ln_scale_damping
multiplies both normed block inputs of layer i (from 0) by 1 / sqrt(i + 1); partial_rotary_factor
rotates only the first int(head_dim * factor) dims of each head, as a head of that width.

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
from shared.spec.blocks import reference_hook
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
    layer_keep: np.ndarray | None = None  # (L, B) stochastic depth's factors (training), None: every layer
    aux: list | None = None  # the experts' balance loss of each applied layer, when asked for


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


def rope_inv_freq(D: int, theta: float, ramp_factor: float | None) -> np.ndarray:
    """theta^(-2i/D) for the D/2 pairs; with a ramp factor f (parameter-golf's "yarn") each is divided
    by 1 + ramp_i (f - 1), ramp_i = clamp((2i/D - 0.25) / 0.75, 0, 1): the fastest quarter of the
    pairs keeps its frequency, the slowest are slowed by up to f."""
    two_i = np.arange(0, D, 2, dtype=np.float64)
    inv_freq = theta ** (-two_i / D)
    if ramp_factor is None:
        return inv_freq
    ramp = np.clip((two_i / D - 0.25) / 0.75, 0.0, 1.0)
    return inv_freq / (1.0 + ramp * (ramp_factor - 1.0))


def rope(x: np.ndarray, theta: float, ramp_factor: float | None = None, rotary_dims: int | None = None) -> np.ndarray:
    """Hugging Face (non-interleaved) RoPE on (B, heads, T, D): dimension i is paired with i + D/2
    (not with i + 1), and the pair at position p is rotated by the angle p * inv_freq_i
    (theta^(-2i/D) unless ramped, see `rope_inv_freq`). With `rotary_dims` R < D (partial RoPE) the
    first R dims are rotated as a head of width R (pairs i, i + R/2, theta^(-2i/R)) and the rest pass."""
    if rotary_dims is not None and rotary_dims < x.shape[-1]:
        rotated = rope(x[..., :rotary_dims], theta, ramp_factor)
        return np.concatenate([rotated, x[..., rotary_dims:]], axis=-1)
    T_, D = x.shape[-2], x.shape[-1]
    inv_freq = rope_inv_freq(D, theta, ramp_factor)  # (D/2,)
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


def exclusive_attention(o: np.ndarray, v: np.ndarray) -> np.ndarray:
    """XSA: o_h - (o_h . u) u with u = v / |v| the unit value vector of head h's own token (of its kv
    head, h // (H / H_kv)). o (B, H, T, D), v (B, H_kv, T, D). |v| is floored at 1e-12 (a zero value
    vector removes nothing)."""
    v = np.repeat(v, o.shape[1] // v.shape[1], axis=1)
    u = v / np.maximum(np.sqrt(np.sum(v * v, axis=-1, keepdims=True)), 1e-12)
    return o - np.sum(o * u, axis=-1, keepdims=True) * u


def norm(x: np.ndarray, name: str, fp: "_Pass") -> np.ndarray:
    """The RMSNorm whose gain is `name`; weightless (gain 1, no tensor) with rms_norm_weights = false."""
    m = fp.cfg.model
    return rms_norm(x, fp.w[name] if m.rms_norm_weights else 1.0, m.rms_norm_eps)


def sub_norm(x: np.ndarray, name: str, fp: "_Pass") -> np.ndarray:
    """SubLN (gain `name`) blended in by the quantization warm-up: x + lam * (RMSNorm(x) - x)."""
    return x + fp.lam * (norm(x, name, fp) - x)


# ---- blocks ----------------------------------------------------------------------------------------
def attention_block(x: np.ndarray, i: int, fp: _Pass, v_first: np.ndarray | None = None,
                    p: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention of applied layer i on its (already normed) input x (B, T, hidden), with the weights
    of prefix p (default model.layers.{i}.): (output, the layer's own value projection (B, H_kv, T, D),
    before the value residual mixes v_first into it)."""
    m, w, p = fp.cfg.model, fp.w, p or f"model.layers.{i}."
    B, T_, _ = x.shape
    H, H_kv, D = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    q = linear(x, p + "self_attn.q_proj.weight", fp).reshape(B, T_, H, D)
    k = linear(x, p + "self_attn.k_proj.weight", fp).reshape(B, T_, H_kv, D)
    v = linear(x, p + "self_attn.v_proj.weight", fp).reshape(B, T_, H_kv, D)
    if m.qk_norm:  # Qwen3: per head, over head_dim, before RoPE
        q, k = norm(q, p + "self_attn.q_norm.weight", fp), norm(k, p + "self_attn.k_norm.weight", fp)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, T, D)
    v_own = v
    if m.value_residual and i > 0:  # v = l0 * v_first + l1 * v
        lam = w["model.value_residual_lambdas"][i - 1]
        v = lam[0] * v_first + lam[1] * v
    rot = int(D * m.partial_rotary_factor)
    q, k = (rope(a, m.rope_theta, m.rope_ramp_factor, rot) for a in (q, k))
    if m.qk_gain is not None:  # q_h <- g_h * q_h, one learned gain per query head, after RoPE
        q = q * w[p + "self_attn.q_gain"][:, None, None]
    o = causal_attention(q, k, v)
    if i >= m.num_hidden_layers - m.xsa_last_n:  # the last xsa_last_n layers (none at 0)
        o = exclusive_attention(o, v)
    if m.gated_attention:  # head h times sigmoid(W_h . x + b_h), x the attention's input
        z = linear(x, p + "self_attn.attn_gate.weight", fp) + w[p + "self_attn.attn_gate.bias"]
        o = o * (1.0 / (1.0 + np.exp(-z))).transpose(0, 2, 1)[..., None]
    o = o.transpose(0, 2, 1, 3).reshape(B, T_, H * D)  # heads concatenated, head-major
    if m.subln:
        o = sub_norm(o, p + "self_attn.attn_sub_norm.weight", fp)
    if m.out_proj_norm:
        o = rms_norm(o, 1.0, m.rms_norm_eps)
    return linear(o, p + "self_attn.o_proj.weight", fp), v_own


def mlp_block(x: np.ndarray, p: str, fp: _Pass, mlp: str = "mlp.") -> np.ndarray:
    """SwiGLU down(silu(gate x) * up x) or down(a(up x)) for a gateless activation a; x (B, T, hidden)."""
    m = fp.cfg.model
    up = linear(x, p + mlp + "up_proj.weight", fp)  # (B, T, intermediate)
    if m.hidden_act == "silu":
        gate = linear(x, p + mlp + "gate_proj.weight", fp)
        h = gate / (1.0 + np.exp(-gate)) * up  # silu(g) = g * sigmoid(g)
    elif m.hidden_act in ("relu", "relu2"):
        h = np.maximum(up, 0.0)
    elif m.hidden_act in ("leaky_relu", "leaky_relu2"):
        h = np.where(up >= 0.0, up, m.leaky_relu_slope * up)
    else:  # validate() rejects others; an unknown one must not pass silently
        raise ValueError(f"unsupported hidden_act {m.hidden_act!r}")
    if m.hidden_act.endswith("2"):  # relu2, leaky_relu2: squared
        h = h * h
    if m.subln:
        h = sub_norm(h, p + mlp + "ffn_sub_norm.weight", fp)
    if m.out_proj_norm:
        h = rms_norm(h, 1.0, m.rms_norm_eps)
    return linear(h, p + mlp + "down_proj.weight", fp)


def chosen_experts(logits: np.ndarray, k: int) -> np.ndarray:
    """(..., E) -> (..., E) 0/1: expert e is chosen when fewer than k experts beat it; e' beats e with a
    larger router logit, or an equal one and e' < e (a tie goes to the lower index)."""
    E = logits.shape[-1]
    le, lj = logits[..., :, None], logits[..., None, :]  # [..., e, j]
    lower = np.arange(E)[None, :] < np.arange(E)[:, None]  # [e, j]: j < e
    beaten_by = ((lj > le) | ((lj == le) & lower)).sum(axis=-1)
    return (beaten_by < k).astype(np.float64)


def experts_block(x: np.ndarray, p: str, fp: _Pass) -> np.ndarray:
    """The mixture-of-experts MLP: router probabilities pi = softmax(x R^T) (R: mlp.router.weight, float),
    y = sum over the k chosen experts e of pi_e * MLP_e(x), MLP_e with the weights mlp.experts.{e}.*;
    the balance loss E * sum_e f_e P_e (f_e: share of the N*k assignments, P_e: mean pi_e over the N
    tokens) goes to fp.aux."""
    m = fp.cfg.model
    E, k = m.moe_num_experts, m.moe_top_k
    logits = x @ fp.w[p + "mlp.router.weight"].T  # (B, T, E)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    chosen = chosen_experts(logits, k)
    y = sum((probs * chosen)[..., e:e + 1] * mlp_block(x, f"{p}mlp.experts.{e}.", fp, "") for e in range(E))
    if fp.aux is not None:
        f = chosen.reshape(-1, E).mean(axis=0) / k
        fp.aux.append(E * float(np.sum(f * probs.reshape(-1, E).mean(axis=0))))
    return y


def decoder_layer(x: np.ndarray, x0: np.ndarray, i: int, fp: _Pass, v_first: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Applied layer i as a pre-norm block: the residual stream x (B, T, hidden) is never normed itself.
    x0: the embedding output, mixed in by residual_mix; v_first: applied layer 0's values (value_residual).
    It runs the stored block i % U (model.num_unique_layers = U; U = L without depth recurrence).
    Returns the new stream and this layer's own values."""
    m, w = fp.cfg.model, fp.w
    p = f"model.layers.{i % (m.num_unique_layers or m.num_hidden_layers)}."
    keep = 1.0 if fp.layer_keep is None else fp.layer_keep[i].astype(np.float64)[:, None, None]
    if m.residual_mix:
        mix = w[p + "resid_mix"]  # (2, hidden)
        x = mix[0] * x + mix[1] * x0
    damp = 1.0 / np.sqrt(i + 1.0) if m.ln_scale_damping else 1.0  # layer index from 0: layer 0 undamped
    attn, v_own = attention_block(norm(x, p + "input_layernorm.weight", fp) * damp, i, fp, v_first, p)
    attn = keep * attn  # stochastic depth: 0 (dropped) or 1 / (1 - p_i) (kept) per sequence
    x = x + (w[p + "attn_scale"] * attn if m.branch_scales else attn)
    h = norm(x, p + "post_attention_layernorm.weight", fp) * damp
    mlp = keep * (experts_block if m.moe_num_experts else mlp_block)(h, p, fp)
    return x + (w[p + "mlp_scale"] * mlp if m.branch_scales else mlp), v_own


def layers(x: np.ndarray, fp: _Pass, ids: np.ndarray) -> np.ndarray:
    """Every layer in turn, with unet_skips' encoder pushes and decoder pops (last in, first out),
    and the block plug-ins' layer hooks (shared/spec/blocks.py)."""
    m = fp.cfg.model
    L = m.num_hidden_layers
    n_enc = L // 2 if m.unet_skips else 0
    x0, stack, v_first = x, [], None
    for i in range(L):
        if i >= n_enc and stack:
            x = x + fp.w["model.skip_weights"][i - n_enc] * stack.pop()
        x = reference_hook("layer_input", x, ids, i, fp)
        x, v_own = decoder_layer(x, x0, i, fp, v_first)
        v_first = v_own if i == 0 else v_first
        x = reference_hook("layer_output", x, ids, i, fp)
        if i < n_enc:
            stack.append(x)
    return x


def reference_forward(cfg: RunConfig, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                      quant_lambda: float = 1.0, layer_keep: np.ndarray | None = None,
                      aux: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits (B, T, vocab) float64, margin (B, T)): see `reference_logits`. margin[b, t] is how
    close any activation quantized for token (b, t) came to a rounding boundary, in steps (inf
    without activation quantization); a float32 backend may round those differently.
    layer_keep (L, B): stochastic depth's factors (shared/spec/layer_drop.py), as in training; aux: a
    list that receives each applied layer's expert balance loss (model.moe_num_experts)."""
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
               np.full(ids.shape, np.inf), layer_keep, aux)
    x = fp.w["model.embed_tokens.weight"][ids]  # (B, T, embed width); a lookup: no activation quantization
    if m.embed_dim is not None:
        x = linear(x, "model.embed_proj.weight", fp)  # (B, T, hidden)
    x = reference_hook("embedding", x, ids, None, fp)
    if m.embed_norm:
        x = rms_norm(x, 1.0, m.rms_norm_eps)  # weightless
    x = reference_hook("stream", x, ids, None, fp)
    x = norm(layers(x, fp, ids), "model.norm.weight", fp)
    return head_logits(x, fp), fp.margin


def head_logits(x: np.ndarray, fp: _Pass) -> np.ndarray:
    """The final-normed hidden state (B, T, hidden) -> logits (B, T, vocab): the head, the vocab bias
    and the soft-cap."""
    m = fp.cfg.model
    if m.tie_word_embeddings:
        if m.embed_dim is not None:
            x = linear(x, "model.embed_proj_rev.weight", fp)  # (B, T, embed_dim)
        logits = linear(x, "model.embed_tokens.weight", fp)
    else:
        logits = linear(x, "lm_head.weight", fp)
    if m.vocab_bias:
        logits = logits + fp.w["model.vocab_bias"]
    if m.final_logit_softcapping:
        logits = soft_cap(logits, m.final_logit_softcapping, m.final_logit_softcapping_type)
    return logits


def soft_cap(z: np.ndarray, c: float, kind: str) -> np.ndarray:
    """tanh: c tanh(z / c). poly (the ternary record's): c * clamp(u - u^3/3 + u^5/15, -1, 1) with
    u = clamp(z / c, -2, 2); the polynomial is tanh's series with 1/15 for its 2/15, so it rises to 1
    at |u| ~ 1.7 and the clamp flattens it there."""
    if kind == "tanh":
        return c * np.tanh(z / c)
    if kind != "poly":  # validate() rejects others; an unknown one must not pass silently
        raise ValueError(f"unsupported final_logit_softcapping_type {kind!r}")
    u = np.clip(z / c, -2.0, 2.0)
    return c * np.clip(u - u ** 3 / 3.0 + u ** 5 / 15.0, -1.0, 1.0)


def reference_logits(cfg: RunConfig, weights: dict[str, np.ndarray], input_ids: np.ndarray,
                     quant_lambda: float = 1.0) -> np.ndarray:
    """Logits (B, T, vocab) float64 for input_ids (B, T), from latent weights under canonical names.

    quant_lambda is the ternary warm-up weight: it blends every ternary weight and every SubLN.
    """
    return reference_forward(cfg, weights, input_ids, quant_lambda)[0]
