"""Canonical parameter names and shapes, derived from a config.

Names are the Hugging Face Qwen3/Llama ones; linear weights are (out, in) in both backends.
Options that change the parameter set, in one place:
- `model.hidden_act = "relu2"`: the MLP has `up_proj` and `down_proj` only (no `gate_proj`).
- `model.qk_norm = false` (Llama): no `self_attn.q_norm` / `self_attn.k_norm`.
- `model.tie_word_embeddings = true`: no `lm_head.weight` (the head reads `model.embed_tokens.weight`).
- `model.subln = true`: `self_attn.attn_sub_norm.weight` (heads * head_dim, before `o_proj`) and
  `mlp.ffn_sub_norm.weight` (intermediate_size, before `down_proj`), Hugging Face BitNet's names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import ModelConfig, RunConfig


def parameter_shapes(m: "ModelConfig") -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, in canonical order, with its shape."""
    d, hd = m.hidden_size, m.head_dim or m.hidden_size // m.num_attention_heads
    q_out, kv_out = m.num_attention_heads * hd, m.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (m.vocab_size, d)}
    for i in range(m.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (q_out, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, q_out)
        if m.subln:
            shapes[p + "self_attn.attn_sub_norm.weight"] = (q_out,)
        if m.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        if m.hidden_act == "silu":
            shapes[p + "mlp.gate_proj.weight"] = (m.intermediate_size, d)
        shapes[p + "mlp.up_proj.weight"] = (m.intermediate_size, d)
        shapes[p + "mlp.down_proj.weight"] = (d, m.intermediate_size)
        if m.subln:
            shapes[p + "mlp.ffn_sub_norm.weight"] = (m.intermediate_size,)
    shapes["model.norm.weight"] = (d,)
    if not m.tie_word_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, d)
    return shapes


def target_of(name: str) -> str | None:
    """Which ternary target a parameter belongs to ('attn', 'mlp', 'embed', 'lm_head'), if any."""
    if name.endswith("_norm.weight") or name.endswith("layernorm.weight") or name == "model.norm.weight":
        return None
    if ".self_attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    if name == "model.embed_tokens.weight":
        return "embed"
    if name == "lm_head.weight":
        return "lm_head"
    return None


def ternary_parameters(cfg: "RunConfig") -> list[str]:
    """Names of the weights that are ternary under this config."""
    if not cfg.ternary.enabled:
        return []
    return [n for n in parameter_shapes(cfg.model) if target_of(n) in cfg.ternary.targets]


def ternary_input_dims(cfg: "RunConfig") -> dict[str, int]:
    """Input dimension (the grouped axis) of each ternary weight; used to validate group_size."""
    shapes = parameter_shapes(cfg.model)
    return {n: shapes[n][-1] for n in ternary_parameters(cfg)}
