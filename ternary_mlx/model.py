"""The ternary decoder-only transformer in MLX (mirrors ternary_cuda/model.py).

Qwen3 layout with Hugging Face names: pre-norm blocks with residuals, grouped-query attention with
optional per-head q/k RMSNorm and non-interleaved RoPE, SwiGLU or a gateless (leaky) ReLU(^2) MLP,
tied or untied head, optional logit soft-cap; parameter-golf's block options (weightless norms, an
embedding norm, U-Net skips, residual mix, branch scales). With `ternary.enabled = false` and the
default options it is exactly Qwen3ForCausalLM.
The ternary record's options (factored embedding, vocab bias, polynomial soft-cap, ramped RoPE,
norms before the output projections) are in shared/spec/options.py too, and so are depth recurrence
(stored blocks applied cyclically), stochastic depth (masks from shared/spec/layer_drop.py) and the
mixture-of-experts MLP (ternary_mlx/experts.py), and issue #11's attention options (value
residual, XSA, a gate on the attention output, LN-scale damping, partial RoPE).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from shared.spec.checkpoint import check_tensor_set
from shared.spec.config import RunConfig
from shared.data.checks import check_token_ids
from shared.spec.init import init_weights
from shared.spec.params import float_qat_parameters, parameter_shapes, ternary_parameters
from ternary_mlx import cpu_math
from ternary_mlx.blocks import BlockHooks
from ternary_mlx.experts import MixtureMLP
from ternary_mlx.layers import (RMSNorm, SubLN, TernaryEmbedding, TernaryLinear, fused_linear, mark_float_qat,
                                mark_ternary)


def _linear(cfg: RunConfig, d_in: int, d_out: int) -> TernaryLinear:
    """A projection, float until `Model` marks the ones its parameter specs make ternary."""
    t = cfg.ternary
    return TernaryLinear(d_in, d_out, False, t.group_size, t.eps, t.activation_bits)


def rope(x: mx.array, theta: float, ramp_factor: float | None = None, rotary_dims: int | None = None,
         offset: int = 0) -> mx.array:
    """Hugging Face RoPE on (B, heads, T, head_dim): rotate the two halves (not interleaved pairs).
    With `ramp_factor`, the frequencies are parameter-golf's ramped ones (`rope_inv_freq`). With
    `rotary_dims` (partial RoPE) only the first rotary_dims dims turn, as a head of that width.
    `offset`: the position of the first of the T tokens (incremental decoding with a KV cache)."""
    if rotary_dims is not None and rotary_dims < x.shape[-1]:
        return mx.concatenate([rope(x[..., :rotary_dims], theta, ramp_factor, offset=offset), x[..., rotary_dims:]],
                              axis=-1)
    if cpu_math.use_cpu_math():  # MLX's CPU rope: ~16 ulp off (see _rope_tables)
        cos, sin = (t.astype(x.dtype) for t in _rope_tables(x.shape[-2], x.shape[-1], theta, ramp_factor, offset))
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    if ramp_factor is None:
        return mx.fast.rope(x, x.shape[-1], traditional=False, base=theta, scale=1.0, offset=offset)
    periods = 1.0 / rope_inv_freq(x.shape[-1], theta, ramp_factor)  # mx.fast.rope takes 1 / inv_freq
    return mx.fast.rope(x, x.shape[-1], traditional=False, base=None, scale=1.0, offset=offset, freqs=periods)


def _rope_tables(T: int, D: int, theta: float, ramp_factor: float | None, offset: int) -> tuple[mx.array, mx.array]:
    """(cos, sin), (T, D/2), of positions offset .. offset + T - 1, computed in float64 and rounded
    once to float32. MLX's CPU mx.fast.rope is off by up to ~16 ulp (measured at T = 64, |x| <= 7.4:
    3.1e-6; these tables: 5.7e-7), and tests/parity/test_reference.py's moe3-top2 row, whose logits
    amplify such errors, sat at its 1e-5 bound. The tables are constants of a compiled step (T and
    offset are static shapes and ints)."""
    two_i = np.arange(0, D, 2, dtype=np.float64)
    inv_freq = theta ** (-two_i / D)
    if ramp_factor is not None:
        inv_freq = inv_freq / (1.0 + np.clip((two_i / D - 0.25) / 0.75, 0.0, 1.0) * (ramp_factor - 1.0))
    angle = np.arange(offset, offset + T, dtype=np.float64)[:, None] * inv_freq[None, :]
    return mx.array(np.cos(angle).astype(np.float32)), mx.array(np.sin(angle).astype(np.float32))


def rope_inv_freq(D: int, theta: float, ramp_factor: float | None) -> mx.array:
    """theta^(-2i/D), divided by 1 + ramp_i (factor - 1), ramp_i = clamp((2i/D - 0.25) / 0.75, 0, 1),
    when ramped (float32)."""
    two_i = mx.arange(0, D, 2).astype(mx.float32)
    inv_freq = 1.0 / (theta ** (two_i / D))
    if ramp_factor is None:
        return inv_freq
    ramp = mx.clip((two_i / D - 0.25) / 0.75, 0.0, 1.0)
    return inv_freq / (ramp * (ramp_factor - 1.0) + 1.0)


def rms_norm_weightless(x: mx.array, eps: float) -> mx.array:
    """x / sqrt(mean(x^2) + eps), no gain (model.out_proj_norm)."""
    return mx.fast.rms_norm(x, None, eps)


def exclusive_attention(o: mx.array, v: mx.array) -> mx.array:
    """XSA: each head's output o (B, H, T, D) minus its component along the unit value vector of its
    own token, from its kv head in v (B, H_kv, T, D); grouped, never repeated (GQA)."""
    B, H, T, D = o.shape
    u = v / mx.maximum(mx.sqrt(mx.sum(v * v, axis=-1, keepdims=True)), 1e-12)  # a zero v removes nothing
    u = u[:, :, None]  # (B, H_kv, 1, T, D): query head h = j * group + g reads kv head j
    o = o.reshape(B, v.shape[1], H // v.shape[1], T, D)
    return (o - mx.sum(o * u, axis=-1, keepdims=True) * u).reshape(B, H, T, D)


def soft_cap(logits: mx.array, c: float, kind: str) -> mx.array:
    """tanh: c tanh(z / c); poly: c * clamp(u (1 - u^2/3 + u^4/15), -1, 1), u = clamp(z / c, -2, 2)."""
    if kind == "tanh":
        return c * mx.tanh(logits / c)
    u = mx.clip(logits / c, -2.0, 2.0)
    u2 = u * u
    return c * mx.clip(u * (1.0 - u2 / 3.0 + u2 * u2 / 15.0), -1.0, 1.0)


class Attention(nn.Module):
    def __init__(self, cfg: RunConfig, layer_index: int = 0):
        super().__init__()
        m = cfg.model
        self.n_heads, self.n_kv_heads, self.head_dim = m.num_attention_heads, m.num_key_value_heads, m.head_dim
        self.rope_theta, self.rope_ramp_factor = m.rope_theta, m.rope_ramp_factor
        self.q_proj = _linear(cfg, m.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = _linear(cfg, m.hidden_size, self.n_kv_heads * self.head_dim)
        self.v_proj = _linear(cfg, m.hidden_size, self.n_kv_heads * self.head_dim)
        self.o_proj = _linear(cfg, self.n_heads * self.head_dim, m.hidden_size)
        if m.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, m.rms_norm_eps, m.rms_norm_weights)
            self.k_norm = RMSNorm(self.head_dim, m.rms_norm_eps, m.rms_norm_weights)
        self.qk_norm = m.qk_norm
        if m.subln:
            self.attn_sub_norm = SubLN(self.n_heads * self.head_dim, m.rms_norm_eps, m.rms_norm_weights)
        self.subln = m.subln
        if m.qk_gain is not None:  # values come from the parameter spec's init (shared/spec/init.py)
            self.q_gain = mx.ones((self.n_heads,))
        self.has_q_gain = m.qk_gain is not None
        self.out_proj_norm_eps = m.rms_norm_eps if m.out_proj_norm else None
        self.fused_qkv = m.fused_qkv
        # issue #11's attention options (shared/spec/options.py)
        self.rotary_dims = int(self.head_dim * m.partial_rotary_factor)  # Hugging Face's rounding
        self.xsa = layer_index >= m.num_hidden_layers - m.xsa_last_n  # the last xsa_last_n layers
        if m.gated_attention:  # float; values from the spec's init (weight zeros, bias 4)
            self.attn_gate = nn.Linear(m.hidden_size, self.n_heads, bias=True)
        self.gated_attention = m.gated_attention

    def __call__(self, x: mx.array, v_mix: tuple | None = None, return_values: bool = False, kv=None):
        """x: the normed input; v_mix: (v_first, lambdas) of value_residual, or None. With
        `return_values`: (output, this layer's own values (B, H_kv, T, D), before any mix).
        kv: this applied layer's slot of a KVCache (ternary_mlx/kv_cache.py), or None (training)."""
        B, T, _ = x.shape
        parts = [self.q_proj, self.k_proj, self.v_proj]
        q, k, v = fused_linear(x, parts) if self.fused_qkv else [p(x) for p in parts]
        q = q.reshape(B, T, self.n_heads, self.head_dim)
        k = k.reshape(B, T, self.n_kv_heads, self.head_dim)
        v = v.reshape(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, T, head_dim)
        v_own = v
        if v_mix is not None:  # value residual: v = l0 * v_first + l1 * v
            v = v_mix[1][0] * v_mix[0] + v_mix[1][1] * v
        offset = 0 if kv is None else kv.offset
        q, k = (rope(a, self.rope_theta, self.rope_ramp_factor, self.rotary_dims, offset) for a in (q, k))
        v_now = v  # XSA reads each query's own (mixed) value, never the cached ones
        if kv is not None:
            k, v = kv.update(k, v)
        if self.has_q_gain:
            q = q * self.q_gain[:, None, None]  # one gain per query head
        mask = "causal" if kv is None or T > 1 else None  # one new token sees every cached position
        if kv is None and cpu_math.use_cpu_math():  # MLX's CPU sdpa: slow exp, the whole masked square
            o = cpu_math.causal_attention(q, k, v, self.head_dim ** -0.5)
        else:
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5, mask=mask)
        if self.xsa:
            o = exclusive_attention(o, v_now)
        if self.gated_attention:  # one gate per head and token, from the attention's input
            o = o * mx.sigmoid(self.attn_gate(x)).transpose(0, 2, 1)[..., None]
        o = o.transpose(0, 2, 1, 3).reshape(B, T, -1)
        if self.out_proj_norm_eps is not None:
            o = rms_norm_weightless(o, self.out_proj_norm_eps)
        out = self.o_proj(self.attn_sub_norm(o) if self.subln else o)
        return (out, v_own) if return_values else out


class MLP(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        m = cfg.model
        self.act, self.slope, self.fused_gate_up = m.hidden_act, m.leaky_relu_slope, m.fused_gate_up
        if self.act == "silu":
            self.gate_proj = _linear(cfg, m.hidden_size, m.intermediate_size)
        self.up_proj = _linear(cfg, m.hidden_size, m.intermediate_size)
        self.down_proj = _linear(cfg, m.intermediate_size, m.hidden_size)
        if m.subln:
            self.ffn_sub_norm = SubLN(m.intermediate_size, m.rms_norm_eps, m.rms_norm_weights)
        self.subln = m.subln
        self.out_proj_norm_eps = m.rms_norm_eps if m.out_proj_norm else None

    def _down(self, h):
        if self.out_proj_norm_eps is not None:
            h = rms_norm_weightless(h, self.out_proj_norm_eps)
        return self.down_proj(self.ffn_sub_norm(h) if self.subln else h)

    def __call__(self, x: mx.array) -> mx.array:
        if self.act == "silu":
            parts = [self.gate_proj, self.up_proj]
            gate, up = fused_linear(x, parts) if self.fused_gate_up else [p(x) for p in parts]
            if cpu_math.use_cpu_math():  # MLX's CPU sigmoid: a slow exp (ternary_mlx/cpu_math.py)
                return self._down(cpu_math.swiglu(gate, up))
            return self._down(nn.silu(gate) * up)
        u = self.up_proj(x)
        if self.act in ("relu", "relu2"):
            u = nn.relu(u)
        else:  # leaky_relu, leaky_relu2
            u = nn.leaky_relu(u, negative_slope=self.slope)
        return self._down(mx.square(u) if self.act.endswith("2") else u)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: RunConfig, layer_index: int = 0):
        super().__init__()
        m = cfg.model
        self.input_layernorm = RMSNorm(m.hidden_size, m.rms_norm_eps, m.rms_norm_weights)
        self.self_attn = Attention(cfg, layer_index)
        # model.ln_scale_damping: both normed inputs times 1 / sqrt(layer_index + 1), index from 0
        self.damping = 1.0 / (layer_index + 1) ** 0.5 if m.ln_scale_damping else None
        self.post_attention_layernorm = RMSNorm(m.hidden_size, m.rms_norm_eps, m.rms_norm_weights)
        self.mlp = MixtureMLP(cfg, MLP) if m.moe_num_experts else MLP(cfg)
        self.moe = bool(m.moe_num_experts)
        self.residual_mix, self.branch_scales = m.residual_mix, m.branch_scales
        # values come from the parameter specs' init (shared/spec/init.py)
        if m.residual_mix:
            self.resid_mix = mx.zeros((2, m.hidden_size))
        if m.branch_scales:
            self.attn_scale, self.mlp_scale = mx.ones((m.hidden_size,)), mx.ones((m.hidden_size,))

    def __call__(self, x: mx.array, x0: mx.array | None = None, keep: mx.array | None = None,
                 aux: list | None = None, v_mix: tuple | None = None, return_values: bool = False,
                 kv=None):
        """x: the residual stream; x0: the embedding output (read by residual_mix only); keep (B, 1, 1):
        stochastic depth's factor on both branches (training only); aux: collects the experts' balance loss;
        v_mix, return_values and kv: see Attention (with return_values: (new stream, the layer's own values))."""
        if self.residual_mix:
            if x0 is None:
                raise ValueError("model.residual_mix: a layer needs x0, the embedding output")
            x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        # residuals around pre-normed blocks (S1, S2)
        a, v_own = self.self_attn(self._damp(self.input_layernorm(x)), v_mix, return_values=True, kv=kv)
        if keep is not None:
            a = keep * a
        h = x + (self.attn_scale * a if self.branch_scales else a)
        g = self._damp(self.post_attention_layernorm(h))
        f = self.mlp(g, aux) if self.moe else self.mlp(g)
        if keep is not None:
            f = keep * f
        out = h + (self.mlp_scale * f if self.branch_scales else f)
        return (out, v_own) if return_values else out

    def _damp(self, x):
        return x if self.damping is None else x * self.damping


class Decoder(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        m, t = cfg.model, cfg.ternary
        self.embed_tokens = TernaryEmbedding(m.embed_dim or m.hidden_size, m.vocab_size, False, t.group_size,
                                             t.eps, t.activation_bits)
        if m.embed_dim is not None:  # the factored embedding: up after the lookup, down before a tied head
            self.embed_proj = _linear(cfg, m.embed_dim, m.hidden_size)
            if m.tie_word_embeddings:
                self.embed_proj_rev = _linear(cfg, m.hidden_size, m.embed_dim)
        self.factored = m.embed_dim is not None
        if m.vocab_bias:  # added to the logits by Model.head_logits; values from the spec's init (zeros)
            self.vocab_bias = mx.zeros((m.vocab_size,))
        self.has_vocab_bias = m.vocab_bias
        stored = m.num_unique_layers or m.num_hidden_layers
        self.layers = [DecoderLayer(cfg, i) for i in range(stored)]
        self.depth = m.num_hidden_layers  # applied layers; with num_unique_layers, layer i runs block i % U
        if m.value_residual:  # row i - 1: layer i's (l0, l1); values from the spec's init (0.5)
            shape = parameter_shapes(m)["model.value_residual_lambdas"]
            self.value_residual_lambdas = mx.zeros(shape)
        self.value_residual = m.value_residual
        self.norm = RMSNorm(m.hidden_size, m.rms_norm_eps, m.rms_norm_weights)
        self.embed_norm = RMSNorm(m.hidden_size, m.rms_norm_eps, weighted=False) if m.embed_norm else None
        # U-Net: the first L // 2 layers are the encoder (see shared/spec/options.py)
        self.n_encoder = m.num_hidden_layers // 2 if m.unet_skips else 0
        if m.unet_skips:
            self.skip_weights = mx.ones(parameter_shapes(m)["model.skip_weights"])
        self.plugins = BlockHooks(self, cfg)  # block plug-ins: model.NAME (shared/spec/blocks.py)
        self.checkpoint_layers = False  # the trainer sets train.activation_checkpointing (see _apply_layer)

    def __call__(self, input_ids: mx.array, layer_keep: mx.array | None = None,
                 aux: list | None = None, cache=None) -> mx.array:
        """layer_keep (L, B): stochastic depth's factors per applied layer and sequence; aux: see DecoderLayer.
        cache: a KVCache (ternary_mlx/kv_cache.py): input_ids are the tokens after the cached ones."""
        if cache is not None:
            cache.begin(input_ids)
        x = self.embed_tokens(input_ids)
        if self.factored:
            x = self.embed_proj(x)
        x = self.plugins.embedding(x, input_ids, cache)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.plugins.stream(x, input_ids, cache)
        x0, skips, v_first = x, [], None
        for i in range(self.depth):
            layer = self.layers[i % len(self.layers)]
            if i >= self.n_encoder and skips:  # decoder layer j = i - n_encoder pops the latest push
                x = x + self.skip_weights[i - self.n_encoder] * skips.pop()
            x = self.plugins.layer_input(x, input_ids, i, cache)
            keep = None if layer_keep is None else layer_keep[i][:, None, None]
            kv = None if cache is None else cache.layer(i)  # one slot per applied layer (depth recurrence)
            if self.value_residual and i == 0:  # applied layer 0's values feed every later layer
                x, v_first = self._apply_layer(layer, x, x0, keep, aux, None, True, kv)
            else:
                v_mix = (v_first, self.value_residual_lambdas[i - 1]) if self.value_residual else None
                x = self._apply_layer(layer, x, x0, keep, aux, v_mix, False, kv)
            x = self.plugins.layer_output(x, input_ids, i, cache)
            if i < self.n_encoder:
                skips.append(x)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.norm(x)

    def _apply_layer(self, layer, x, x0, keep, aux, v_mix, return_values: bool, kv):
        """One decoder layer; with checkpoint_layers (train.activation_checkpointing), through
        nn.utils.checkpoint (mx.checkpoint over the layer's parameters): the backward keeps the layer's
        inputs only and recomputes its inside (activations, ternarized weights). Decoding (kv) never
        checkpoints."""
        if not (self.checkpoint_layers and kv is None):
            return layer(x, x0, keep, aux, v_mix, return_values=return_values, kv=kv)
        given = [x, x0, keep, *(v_mix or ())]  # mx.checkpoint takes arrays only: None stays outside
        present = [a is not None for a in given]

        def run(*arrays):
            it = iter(arrays)
            x_, x0_, keep_, *mix = [next(it) if p else None for p in present]
            return layer(x_, x0_, keep_, aux, tuple(mix) if v_mix is not None else None, return_values=return_values)

        return nn.utils.checkpoint(layer, run)(*[a for a in given if a is not None])


class Model(nn.Module):
    """model(input_ids (B, T) int) -> logits (B, T, vocab) float32.

    Built from `weights` (canonical names, strictly checked) or, without them, from the shared
    NumPy initialisation with `seed`, so both backends start from identical weights.
    """

    def __init__(self, config: RunConfig, weights: dict[str, np.ndarray] | None = None, seed: int = 0):
        super().__init__()
        m = config.model
        self.config = config
        self.model = Decoder(config)
        if not m.tie_word_embeddings:
            self.lm_head = _linear(config, m.hidden_size, m.vocab_size)
        self.tied, self.softcap = m.tie_word_embeddings, m.final_logit_softcapping
        self.softcap_type = m.final_logit_softcapping_type
        self.check_ids = True  # trainers that validate ids on the host switch this off (no device sync)
        mark_ternary(self, ternary_parameters(config))
        mark_float_qat(self, float_qat_parameters(config), config.ternary.float_qat)
        self.load_numpy(weights if weights is not None else init_weights(m, seed))

    def __call__(self, input_ids: mx.array, layer_keep: mx.array | None = None, with_aux: bool = False,
                 cache=None):
        """Logits; layer_keep (L, B): stochastic depth's factors (shared/spec/layer_drop.py; training only).
        with_aux: (logits, the experts' balance loss averaged over the applied layers; 0 without experts).
        cache: a KVCache (ternary_mlx/kv_cache.py; decoding): the logits of input_ids after the cached tokens."""
        if self.check_ids:
            check_token_ids(np.array(input_ids), self.config.model.vocab_size)
        aux = [] if with_aux else None
        logits = self.head_logits(self.model(input_ids, layer_keep, aux, cache))
        if not with_aux:
            return logits
        return logits, (sum(aux) / len(aux) if aux else mx.array(0.0))

    def head_logits(self, h: mx.array) -> mx.array:
        """Final-normed hidden state -> logits: the head (tied: through embed_proj_rev when the
        embedding is factored), the vocab bias, the soft-cap."""
        if self.tied:
            logits = self.model.embed_tokens.as_linear(self.model.embed_proj_rev(h) if self.model.factored else h)
        else:
            logits = self.lm_head(h)
        if self.model.has_vocab_bias:
            logits = logits + self.model.vocab_bias
        if self.softcap:
            logits = soft_cap(logits, self.softcap, self.softcap_type)
        return logits

    def set_quant_lambda(self, lam) -> None:
        """Gradual quantization: every ternary weight uses W + lam * (W_t - W) (a float, or a
        scalar array/tensor when the value must change inside a compiled step)."""
        for _, mod in self.named_modules():
            if isinstance(mod, (TernaryLinear, SubLN)):  # SubLN is blended in with the same lambda
                # object.__setattr__: an array stored the Module way would join `model.state`
                # and shift the leaves of a compiled step's inputs/outputs.
                object.__setattr__(mod, "_quant_lambda", lam if hasattr(lam, "shape") else float(lam))

    def ternary_modules(self) -> dict[str, TernaryLinear]:
        """Canonical weight name -> module, for the weights that are ternary."""
        return {f"{n}.weight": mod for n, mod in self.named_modules()
                if isinstance(mod, TernaryLinear) and mod.ternary}

    # ---- weights as NumPy, canonical names --------------------------------------------------
    def numpy_weights(self) -> dict[str, np.ndarray]:
        flat = dict(tree_flatten(self.parameters()))
        return {k: np.array(v.astype(mx.float32)) for k, v in flat.items()}

    def load_numpy(self, weights: dict[str, np.ndarray]) -> None:
        """Strict: every expected tensor present, nothing extra, every shape matching (S10)."""
        check_tensor_set(parameter_shapes(self.config.model), {k: tuple(v.shape) for k, v in weights.items()},
                         "weights")
        self.load_weights([(k, mx.array(np.asarray(v, np.float32))) for k, v in weights.items()], strict=True)
        mx.eval(self.parameters())
