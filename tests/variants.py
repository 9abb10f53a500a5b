"""The one table of tiny model variants that every parity suite and per-backend test runs over.

Adding a row tests an option everywhere: logits against the NumPy reference and across backends,
ternary codes, gradients, checkpoint cross-loading and the first training steps. A row is
(model overrides, ternary overrides) on top of `TINY`, the one tiny base config.
"""
from __future__ import annotations

from shared.config import ModelConfig, RunConfig, TernaryConfig, TrainConfig

# The tiny base: 2 layers x 64, 4 query / 2 key-value heads, vocabulary 256. initializer_range 0.1
# (not 0.02) so that logits are O(1) and attention is far from uniform: small weights hide mistakes.
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.1)
ALL_TARGETS = ["attn", "mlp", "embed", "lm_head"]

# name -> (model overrides, ternary overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "gqa-tied-silu-G64": (dict(), dict(group_size=64)),
    "mha-untied-relu2-G32": (dict(num_key_value_heads=4, tie_word_embeddings=False, hidden_act="relu2"),
                             dict(group_size=32)),
    "gqa-untied-softcap30-G128-w128": (dict(hidden_size=128, intermediate_size=256, tie_word_embeddings=False,
                                            final_logit_softcapping=30.0), dict(group_size=128)),
    "mha-tied-relu2-softcap30-pertensor": (dict(num_key_value_heads=4, hidden_act="relu2",
                                                final_logit_softcapping=30.0), dict(group_size=0)),
    "float-gqa-untied": (dict(tie_word_embeddings=False), dict(enabled=False)),
    "float-mha-tied-relu2-softcap30": (dict(num_key_value_heads=4, hidden_act="relu2",
                                            final_logit_softcapping=30.0), dict(enabled=False)),
    "gqa-no-qknorm-G64": (dict(qk_norm=False), dict(group_size=64)),
    "gqa-headdim32-G64": (dict(head_dim=32), dict(group_size=64)),  # head_dim != hidden / heads
    "ternary-embed-head-tied-G64": (dict(), dict(group_size=64, targets=ALL_TARGETS)),
    "ternary-embed-head-untied-pertensor": (dict(tie_word_embeddings=False),
                                            dict(group_size=0, targets=ALL_TARGETS)),
    "act8-gqa-G64": (dict(), dict(group_size=64, activation_bits=8)),
    "subln-gqa-silu-G64": (dict(subln=True), dict(group_size=64)),
    "subln-relu2-float": (dict(subln=True, hidden_act="relu2"), dict(enabled=False)),
    "qkgain1.5-gqa-G64": (dict(qk_gain=1.5), dict(group_size=64)),
}
# A short list for the slower suites (training steps, checkpoints): one row per parameter-set shape.
FAST_VARIANTS = ["gqa-tied-silu-G64", "mha-untied-relu2-G32", "float-gqa-untied", "subln-gqa-silu-G64"]


def tiny_config(ternary: dict | None = None, train: dict | None = None, **model) -> RunConfig:
    """A validated tiny RunConfig: `TINY` with `model` overrides, TernaryConfig(**ternary)."""
    return RunConfig(model=ModelConfig(**{**TINY, **model}), ternary=TernaryConfig(**(ternary or {})),
                     train=TrainConfig(**{"seq_len": 64, **(train or {})})).validate()


def variant_config(name: str, ternary: dict | None = None, train: dict | None = None, **model) -> RunConfig:
    """The config of row `name`, with extra overrides on top."""
    model_kw, tern_kw = VARIANTS[name]
    return tiny_config(ternary={**tern_kw, **(ternary or {})}, train=train, **{**model_kw, **model})
