"""The memory a training step needs, estimated from the config alone and printed before the first
step (both backends print the same line: shared/train/runner.py). Bytes, not measured: a peak RSS
also holds the framework, the data windows and allocator slack.

- weights, gradients: every parameter in float32 (the latent weights and their gradients);
- optimizer: slots per parameter (shared.train.optim_rules.slots_for: AdamW 2, Muon 1, EMA +1), the
  moments at train.optimizer_state_dtype (4 or 2 bytes), the EMA float32;
- ternary weights: the effective weight of every ternary matrix, float32, kept for the backward
  (train.activation_checkpointing: those of the matrices outside the layers and of one layer, the
  one being recomputed);
- teacher: its parameters at train.teacher_dtype (4 or 2 bytes);
- activations: what the backward keeps per micro-batch token and applied layer, float32: the
  inputs and outputs of the norms and projections, 6 x hidden + 2 x (query width + key-value
  width) + 4 x intermediate (MoE: times moe_top_k), plus the attention probabilities, heads x
  seq_len (an upper estimate: a fused attention keeps fewer); with train.activation_checkpointing,
  each applied layer's input (hidden) plus one layer's whole set, the layer being recomputed;
- logits: float32 (tokens, vocab) tensors alive at once, for the tokens of one loss chunk
  (train.loss_chunk_tokens; 0: the whole micro-batch): 3 for the student (logits, softmax,
  gradient), 2 more with a teacher (its logits and softmax).
"""
from __future__ import annotations


import math

from shared.spec.config import RunConfig
from shared.spec.params import parameter_shapes, ternary_parameters
from shared.train.loop import count_parameters
from shared.train.promote import optimizer_state_bytes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
GIB = 2 ** 30


def activation_floats_per_token_layer(cfg: RunConfig) -> int:
    """The float32 values the backward keeps per token and applied layer (see the module docstring)."""
    m = cfg.model
    q_width = m.num_attention_heads * m.head_dim
    kv_width = m.num_key_value_heads * m.head_dim
    mlp = 4 * m.intermediate_size * (m.moe_top_k if m.moe_num_experts else 1)
    return 6 * m.hidden_size + 2 * (q_width + kv_width) + mlp + m.num_attention_heads * cfg.train.seq_len


def activation_bytes(cfg: RunConfig) -> int:
    """What the backward keeps of the decoder layers for one micro-batch (see the module docstring)."""
    m, t = cfg.model, cfg.train
    tokens, per_layer = t.batch_size * t.seq_len, activation_floats_per_token_layer(cfg)
    if t.activation_checkpointing:
        return 4 * tokens * (m.num_hidden_layers * m.hidden_size + per_layer)
    return 4 * tokens * m.num_hidden_layers * per_layer


def ternary_weight_bytes(cfg: RunConfig) -> int:
    """The float32 effective ternary weights kept for the backward (see the module docstring)."""
    shapes, names = parameter_shapes(cfg.model), ternary_parameters(cfg)
    if not cfg.train.activation_checkpointing:
        return 4 * sum(math.prod(shapes[n]) for n in names)
    per_layer: dict[str, int] = {}  # stored layer index -> its ternary elements
    outside = 0
    for n in names:
        if n.startswith("model.layers."):
            index = n.split(".")[2]
            per_layer[index] = per_layer.get(index, 0) + math.prod(shapes[n])
        else:
            outside += math.prod(shapes[n])
    return 4 * (outside + max(per_layer.values(), default=0))


def _loss_tokens(t) -> tuple[int, int]:
    """(tokens of one micro-batch, tokens whose logits exist at once): gradient accumulation frees each
    micro-batch's activations; train.loss_chunk_tokens bounds the logits."""
    tokens = t.batch_size * t.seq_len
    return tokens, min(t.loss_chunk_tokens or tokens, tokens)


def memory_budget(cfg: RunConfig, teacher_cfg: RunConfig | None = None) -> dict[str, int]:
    """Bytes per item: weights, gradients, optimizer, ternary_weights, teacher, activations, logits, total."""
    t = cfg.train
    n_params = count_parameters(cfg)[0]
    tokens, chunk = _loss_tokens(t)
    budget = {
        "weights": 4 * n_params,
        "gradients": 4 * n_params,
        "optimizer": optimizer_state_bytes(cfg),
        "ternary_weights": ternary_weight_bytes(cfg),
        "teacher": 0,
        "activations": activation_bytes(cfg),
        "logits": 4 * chunk * cfg.model.vocab_size * (3 if teacher_cfg is None else 5),
    }
    if teacher_cfg is not None:
        budget["teacher"] = DTYPE_BYTES[t.teacher_dtype] * count_parameters(teacher_cfg)[0]
    budget["total"] = sum(budget.values())
    return budget


def budget_line(cfg: RunConfig, teacher_cfg: RunConfig | None = None) -> str:
    """One log line: each item in GiB, and how the logits and the teacher are held."""
    b, t = memory_budget(cfg, teacher_cfg), cfg.train
    tokens, chunk = _loss_tokens(t)
    notes = {"teacher": f" ({t.teacher_dtype})" if teacher_cfg is not None else "",
             "optimizer": f" ({t.optimizer_state_dtype} moments)" if t.optimizer_state_dtype != "float32" else "",
             "activations": f" ({tokens} tokens x {cfg.model.num_hidden_layers} layers"
                            f"{', checkpointed' if t.activation_checkpointing else ''})",
             "logits": f" ({chunk} of {tokens} tokens at once)"}
    parts = [f"{k.replace('_', ' ')} {v / GIB:.2f}{notes.get(k, '')}" for k, v in b.items() if k != "total"]
    return f"memory budget (estimate, GiB): {', '.join(parts)}; total {b['total'] / GIB:.2f}"
