"""The one table of tiny model variants that every parity suite and per-backend test runs over.

Adding a row tests an option everywhere: logits against the NumPy reference and across backends,
ternary codes, gradients, checkpoint cross-loading, the per-backend parameter trees (all rows) and
the first training steps (FAST_VARIANTS). A row is (model overrides, ternary overrides) on top of
`TINY` and `TINY_TERNARY`, the one tiny base config, which every test that builds a tiny model
starts from: `tiny_config` / `variant_config` (a RunConfig), `tiny_dict` (the sections as dicts,
for RunConfig.from_dict) or `tiny_sets` (section.key=value strings, for with_overrides and --set).
"""
from __future__ import annotations

import tomli_w

from shared.spec.config import DataConfig, ModelConfig, RunConfig, TernaryConfig, TrainConfig

# The tiny base: 2 layers x 64, 4 query / 2 key-value heads, vocabulary 256. initializer_range 0.1
# (not 0.02) so that logits are O(1) and attention is far from uniform: small weights hide mistakes.
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.1)
# The initializer range a real run starts from (ModelConfig's default), for the tests whose bounds
# were measured there (a loss of ln V at initialisation, lossy exports): they pass it as an override.
DEFAULT_INIT = ModelConfig().initializer_range
# The base's ternary settings (group size 32 divides every input dimension of TINY), under the
# ternary overrides a test or a row gives.
TINY_TERNARY = dict(group_size=32)
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
    # Cases of the per-suite tables that this table replaced (per-backend model tests, gradients,
    # checkpoint cross-loading), each a combination not covered above:
    "gqa-tied-silu-G32": (dict(), dict(group_size=32)),  # the base itself: tiny_config()
    "gqa-untied-relu2-no-qknorm-G32": (dict(tie_word_embeddings=False, hidden_act="relu2", qk_norm=False),
                                       dict(group_size=32)),
    "gqa-headdim32-embed-head-G32": (dict(head_dim=32), dict(group_size=32, targets=ALL_TARGETS)),
    "gqa-untied-relu2-embed-head-G64": (dict(tie_word_embeddings=False, hidden_act="relu2"),
                                        dict(group_size=64, targets=ALL_TARGETS)),
    "gqa-untied-relu2-softcap30-pertensor-embed-head": (
        dict(tie_word_embeddings=False, hidden_act="relu2", final_logit_softcapping=30.0),
        dict(group_size=0, targets=ALL_TARGETS)),
    "float-gqa-untied-no-qknorm": (dict(tie_word_embeddings=False, qk_norm=False), dict(enabled=False)),
    "qkgain1.5-gqa-G64": (dict(qk_gain=1.5), dict(group_size=64)),
    # The parameter-golf ternary record's options (issue #10). These logits reach ~2.5, so a cap of 1
    # runs the polynomial through all three ranges (|z/c| below ~1.69, up to the clamp at 2, beyond);
    # a ramp factor of 4 moves the slower RoPE frequencies far enough to show within 64 positions.
    "record-tied-embed32-bias-poly1-ramp4-outnorm-relu2-embed-head-G32": (
        dict(embed_dim=32, vocab_bias=True, final_logit_softcapping=1.0, final_logit_softcapping_type="poly",
             rope_ramp_factor=4.0, out_proj_norm=True, hidden_act="relu2", qk_gain=2.25),
        dict(group_size=32, targets=ALL_TARGETS)),
    "record-untied-embed16-bias-softcap30-outnorm-pertensor": (
        dict(embed_dim=16, tie_word_embeddings=False, vocab_bias=True, final_logit_softcapping=30.0,
             out_proj_norm=True), dict(group_size=0)),
    "float-record-tied-embed16-poly1.5-ramp2-headdim32": (
        dict(embed_dim=16, final_logit_softcapping=1.5, final_logit_softcapping_type="poly",
             rope_ramp_factor=2.0, head_dim=32), dict(enabled=False)),
    # parameter-golf's block options. 5 layers: two U-Net skips popped last in, first out, and a
    # last decoder layer with none left.
    "pg-block-L5-weightless-unet-mix-scales-relu2-G64": (
        dict(num_hidden_layers=5, rms_norm_weights=False, embed_norm=True, unet_skips=True, residual_mix=True,
             branch_scales=True, hidden_act="relu2", qk_gain=1.5, final_logit_softcapping=30.0),
        dict(group_size=64)),
    "float-relu-embednorm-mix-scales-untied": (
        dict(hidden_act="relu", embed_norm=True, residual_mix=True, branch_scales=True, qk_norm=False,
             tie_word_embeddings=False), dict(enabled=False)),
    "leakyrelu-subln-weightless-G32": (dict(hidden_act="leaky_relu", subln=True, rms_norm_weights=False),
                                       dict(group_size=32)),
    "leakyrelu2-fusedqkv-zeroinit-untied-pertensor": (
        dict(hidden_act="leaky_relu2", leaky_relu_slope=0.2, fused_qkv=True, zero_init_output_proj=True,
             zero_init_lm_head=True, tie_word_embeddings=False, embed_init_std=0.05), dict(group_size=0)),
    "fused-qkv-gateup-act8-G64": (dict(fused_qkv=True, fused_gate_up=True), dict(group_size=64, activation_bits=8)),
    "fused-qkv-gateup-pertensor-embed-head": (dict(fused_qkv=True, fused_gate_up=True),
                                              dict(group_size=0, targets=ALL_TARGETS)),
    # ternary.float_qat = "fp8": the float embedding and head pass through e4m3 rounding
    "fp8qat-gqa-untied-G64": (dict(tie_word_embeddings=False), dict(group_size=64, float_qat="fp8")),
    "fp8qat-float-tied": (dict(), dict(enabled=False, float_qat="fp8")),
    "fp8qat-record-embed16-bias-outnorm-G32": (dict(embed_dim=16, vocab_bias=True, out_proj_norm=True),
                                               dict(group_size=32, float_qat="fp8")),
    # Block plug-ins (shared/spec/blocks.py): BigramHash, n-gram embeddings, SmearGate. 64 buckets for a
    # 256 vocabulary, so buckets collide; the n-gram at layer 1 is the U-Net decoder's, after its skip.
    "plugin-bigram64-smear-embednorm-G32": (dict(bigram_hash_buckets=64, smear=True, embed_norm=True),
                                            dict(group_size=32)),
    "plugin-bigram64-dim16-fp8qat-untied-G64": (dict(bigram_hash_buckets=64, bigram_hash_dim=16,
                                                     tie_word_embeddings=False), dict(group_size=64, float_qat="fp8")),
    "plugin-ngram23-h2-gated-layer1-unet-mix-G32": (
        dict(ngram_orders=[2, 3], ngram_heads=2, ngram_buckets=64, ngram_dim=32, ngram_gated=True, ngram_layer=1,
             unet_skips=True, residual_mix=True), dict(group_size=32)),
    "float-plugin-ngram3-gated-embedding-smear-bigram-embed16": (
        dict(ngram_orders=[3], ngram_buckets=32, ngram_dim=16, ngram_gated=True, smear=True,
             bigram_hash_buckets=16, embed_dim=16), dict(enabled=False)),
    # the ternary record's SMEAR after every layer, with U-Net pushes of smeared outputs (3 layers)
    "plugin-smearmean-L3-unet-relu2-G32": (dict(smear_running_mean=True, num_hidden_layers=3, unet_skips=True,
                                                hidden_act="relu2"), dict(group_size=32)),
    # Depth and experts (issue #11). Depth recurrence: 5 applied layers over 2 stored blocks (0 1 0 1 0)
    # with U-Net skips over the applied depth and the blocks' own mixes and scales; stochastic depth
    # only trains differently, so its rows check that evaluation is the plain forward.
    "recur-L5-U2-unet-mix-scales-relu2-G64": (
        dict(num_hidden_layers=5, num_unique_layers=2, unet_skips=True, residual_mix=True, branch_scales=True,
             hidden_act="relu2"), dict(group_size=64)),
    "float-recur-L3-U1-stochdepth0.3": (dict(num_hidden_layers=3, num_unique_layers=1, stochastic_depth=0.3),
                                        dict(enabled=False)),
    # The SKC-600 report's mixture: 3 experts, top-1; and top-2 of 3 gateless experts, per tensor
    "moe3-top1-silu-G64": (dict(moe_num_experts=3), dict(group_size=64)),
    "moe3-top2-relu2-untied-pertensor-embed-head": (
        dict(moe_num_experts=3, moe_top_k=2, hidden_act="relu2", tie_word_embeddings=False),
        dict(group_size=0, targets=ALL_TARGETS)),
    # issue #11's three parts together: value residual over shared blocks (its mixes are per applied
    # layer), the attention gate and a block plug-in; experts with XSA and LN-scale damping
    "recur-L3-U2-vres-gate-bigram64-G32": (
        dict(num_hidden_layers=3, num_unique_layers=2, value_residual=True, gated_attention=True,
             bigram_hash_buckets=64), dict(group_size=32)),
    "moe3-top1-xsa1-lnscale-smear-G64": (dict(moe_num_experts=3, xsa_last_n=1, ln_scale_damping=True, smear=True),
                                         dict(group_size=64)),
    "moe2-recur-L3-U2-stochdepth0.5-mix-G32": (
        dict(moe_num_experts=2, num_hidden_layers=3, num_unique_layers=2, stochastic_depth=0.5,
             residual_mix=True), dict(group_size=32)),
    # issue #11's attention options. Every one on the GQA base (4 query / 2 kv heads), XSA on the
    # last layer only, half the head rotated; then value residual under fused_qkv with XSA on every
    # layer of an MHA U-Net (v_first also feeds the decoder layers); then a float row of partial RoPE
    # with ramped frequencies over 8 of 32 dims and the gate under SubLN; then three layers, XSA on
    # two. (No 8-bit activations: test_logits compares MLX and torch without the reference's
    # rounding margins, and at three layers one flipped rounding already moved a logit by 0.07.)
    "attn-vres-xsa1-gate-lnscale-rope0.5-G32": (
        dict(value_residual=True, xsa_last_n=1, gated_attention=True, ln_scale_damping=True,
             partial_rotary_factor=0.5), dict(group_size=32)),
    "attn-mha-L3-unet-mix-vres-fusedqkv-xsa3-pertensor": (
        dict(num_hidden_layers=3, num_key_value_heads=4, unet_skips=True, residual_mix=True, value_residual=True,
             fused_qkv=True, xsa_last_n=3, hidden_act="relu2"), dict(group_size=0)),
    "float-attn-headdim32-rope0.25-ramp4-gate-subln-lnscale-untied": (
        dict(head_dim=32, partial_rotary_factor=0.25, rope_ramp_factor=4.0, gated_attention=True, subln=True,
             ln_scale_damping=True, tie_word_embeddings=False), dict(enabled=False)),
    "attn-L3-vres-xsa2-gate-qkgain-G64": (
        dict(num_hidden_layers=3, value_residual=True, xsa_last_n=2, gated_attention=True, qk_gain=1.5),
        dict(group_size=64)),
}
# A short list for the slower suites (training steps): one row per parameter-set shape. (The tied
# record row with a ternary embedding is not here: by its fourth step one down_proj weight that sits
# on a rounding boundary takes different codes in the two backends, weights equal to 1e-6, and the
# losses part by ~2e-4; the two record rows here train the same parameter sets.)
FAST_VARIANTS = ["gqa-tied-silu-G64", "mha-untied-relu2-G32", "float-gqa-untied", "subln-gqa-silu-G64",
                 "record-untied-embed16-bias-softcap30-outnorm-pertensor",
                 "float-record-tied-embed16-poly1.5-ramp2-headdim32", "plugin-ngram23-h2-gated-layer1-unet-mix-G32",
                 "moe2-recur-L3-U2-stochdepth0.5-mix-G32",
                 "attn-vres-xsa1-gate-lnscale-rope0.5-G32"]  # the attention gate and value-residual mixes


def tiny_dict(ternary: dict | None = None, train: dict | None = None, data: dict | None = None,
              **model) -> dict:
    """The sections of a tiny config as plain dicts (what RunConfig.from_dict reads): `TINY` with
    `model` overrides, `TINY_TERNARY` with `ternary` overrides, train.seq_len 64 with `train`
    overrides, and `data` if given."""
    d = {"model": {**TINY, **model}, "ternary": {**TINY_TERNARY, **(ternary or {})},
         "train": {"seq_len": 64, **(train or {})}}
    if data:
        d["data"] = dict(data)
    return d


def tiny_config(ternary: dict | None = None, train: dict | None = None, data: dict | None = None,
                **model) -> RunConfig:
    """A validated tiny RunConfig (see `tiny_dict`): `TINY` with `model` overrides, and so on."""
    d = tiny_dict(ternary, train, data, **model)
    return RunConfig(model=ModelConfig(**d["model"]), ternary=TernaryConfig(**d["ternary"]),
                     train=TrainConfig(**d["train"]), data=DataConfig(**d.get("data", {}))).validate()


def _literal(value) -> str:
    """`value` as the TOML literal that RunConfig.with_overrides (and the CLI's --set) reads back."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def tiny_sets(ternary: dict | None = None, train: dict | None = None, data: dict | None = None,
              **model) -> list[str]:
    """The same tiny config as `section.key=value` strings, for RunConfig.with_overrides and the
    CLI's --set: every field that `tiny_dict` gives."""
    return [f"{section}.{k}={_literal(v)}" for section, fields in tiny_dict(ternary, train, data, **model).items()
            for k, v in fields.items()]


def variant_config(name: str, ternary: dict | None = None, train: dict | None = None, **model) -> RunConfig:
    """The config of row `name`, with extra overrides on top."""
    model_kw, tern_kw = VARIANTS[name]
    return tiny_config(ternary={**tern_kw, **(ternary or {})}, train=train, **{**model_kw, **model})
