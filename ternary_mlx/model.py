"""The ternary decoder-only transformer in MLX (mirrors ternary_cuda/model.py).

Qwen3 layout with Hugging Face names: pre-norm blocks with residuals, grouped-query attention with
optional per-head q/k RMSNorm and non-interleaved RoPE, SwiGLU or relu^2 MLP, tied or untied head,
optional logit soft-cap. With `ternary.enabled = false` it is exactly Qwen3ForCausalLM.
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
from ternary_mlx.layers import RMSNorm, SubLN, TernaryEmbedding, TernaryLinear, mark_float_qat


def _linear(cfg: RunConfig, d_in: int, d_out: int) -> TernaryLinear:
    """A projection, float until `Model` marks the ones its parameter specs make ternary."""
    t = cfg.ternary
    return TernaryLinear(d_in, d_out, False, t.group_size, t.eps, t.activation_bits)


def mark_ternary(model, names: list[str]) -> None:
    """Make the weights the config's parameter specs call ternary (shared/spec/params.py) ternary."""
    modules = dict(model.named_modules())
    for name in names:
        mod = modules.get(name.removesuffix(".weight"))
        if not isinstance(mod, TernaryLinear):
            raise ValueError(f"{name}: the spec makes it ternary but the model has no TernaryLinear for it")
        mod.ternary = True


def rope(x: mx.array, theta: float) -> mx.array:
    """Hugging Face RoPE on (B, heads, T, head_dim): rotate the two halves (not interleaved pairs)."""
    return mx.fast.rope(x, x.shape[-1], traditional=False, base=theta, scale=1.0, offset=0)


class Attention(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        m = cfg.model
        self.n_heads, self.n_kv_heads, self.head_dim = m.num_attention_heads, m.num_key_value_heads, m.head_dim
        self.rope_theta = m.rope_theta
        self.q_proj = _linear(cfg, m.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = _linear(cfg, m.hidden_size, self.n_kv_heads * self.head_dim)
        self.v_proj = _linear(cfg, m.hidden_size, self.n_kv_heads * self.head_dim)
        self.o_proj = _linear(cfg, self.n_heads * self.head_dim, m.hidden_size)
        if m.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, m.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, m.rms_norm_eps)
        self.qk_norm = m.qk_norm
        if m.subln:
            self.attn_sub_norm = SubLN(self.n_heads * self.head_dim, m.rms_norm_eps)
        self.subln = m.subln
        if m.qk_gain is not None:  # values come from the parameter spec's init (shared/spec/init.py)
            self.q_gain = mx.ones((self.n_heads,))
        self.has_q_gain = m.qk_gain is not None

    def __call__(self, x: mx.array) -> mx.array:
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, T, head_dim)
        q, k = rope(q, self.rope_theta), rope(k, self.rope_theta)
        if self.has_q_gain:
            q = q * self.q_gain[:, None, None]  # one gain per query head
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5, mask="causal")
        o = o.transpose(0, 2, 1, 3).reshape(B, T, -1)
        return self.o_proj(self.attn_sub_norm(o) if self.subln else o)


class MLP(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        m = cfg.model
        self.act = m.hidden_act
        if self.act == "silu":
            self.gate_proj = _linear(cfg, m.hidden_size, m.intermediate_size)
        self.up_proj = _linear(cfg, m.hidden_size, m.intermediate_size)
        self.down_proj = _linear(cfg, m.intermediate_size, m.hidden_size)
        if m.subln:
            self.ffn_sub_norm = SubLN(m.intermediate_size, m.rms_norm_eps)
        self.subln = m.subln

    def _down(self, h):
        return self.down_proj(self.ffn_sub_norm(h) if self.subln else h)

    def __call__(self, x: mx.array) -> mx.array:
        if self.act == "silu":
            return self._down(nn.silu(self.gate_proj(x)) * self.up_proj(x))
        return self._down(mx.square(nn.relu(self.up_proj(x))))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.model.hidden_size, cfg.model.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.model.hidden_size, cfg.model.rms_norm_eps)
        self.mlp = MLP(cfg)

    def __call__(self, x: mx.array) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x))  # residuals around pre-normed blocks (S1, S2)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        m, t = cfg.model, cfg.ternary
        self.embed_tokens = TernaryEmbedding(m.hidden_size, m.vocab_size, False, t.group_size, t.eps,
                                             t.activation_bits)
        self.layers = [DecoderLayer(cfg) for _ in range(m.num_hidden_layers)]
        self.norm = RMSNorm(m.hidden_size, m.rms_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


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
        self.check_ids = True  # trainers that validate ids on the host switch this off (no device sync)
        mark_ternary(self, ternary_parameters(config))
        mark_float_qat(self, float_qat_parameters(config), config.ternary.float_qat)
        self.load_numpy(weights if weights is not None else init_weights(m, seed))

    def __call__(self, input_ids: mx.array) -> mx.array:
        if self.check_ids:
            check_token_ids(np.array(input_ids), self.config.model.vocab_size)
        h = self.model(input_ids)
        logits = self.model.embed_tokens.as_linear(h) if self.tied else self.lm_head(h)
        if self.softcap:
            logits = self.softcap * mx.tanh(logits / self.softcap)
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
