"""Model options, declared once: config key, default, check, the parameters they add, and which
export formats can express them.

Everything that needs to know about an option reads this table: `shared.spec.config.ModelConfig` takes
its option fields from it, `shared.spec.params` builds the parameter list from the `params` rules
(name, shape, role, init, position), and every exporter refuses by name an option at a
non-default value that is not in its `exporters` set (an allowlist: a new option is refused
everywhere until a format declares it can express it).

An option can also change parameters it does not add (`edits`, `ParamEdit`): remove one (a
weightless RMSNorm has no gain) or give it another init rule (zero-initialised projections).

To add an option: one `ModelOption` row here, the forward pass in both model files and in
`shared/spec/reference_model.py`, and a row in `tests/variants.py`. A block plug-in declares its rows
in its own file instead and leaves the model files alone (shared/spec/blocks.py, docs/plugins.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from shared.spec.config import ModelConfig

# Parameter roles. The role decides the default weight decay and optimizer group (shared/spec/params.py).
MATRIX = "matrix"        # a projection (inside a block: ternary-capable), Muon under train.optimizer=muon
EMBEDDING = "embedding"  # the token embedding (also the head when tied)
HEAD = "head"            # an untied LM head
NORM = "norm"            # an RMSNorm gain
CONTROL = "control"      # a learned control vector or scalar (gains, mixes): float, AdamW, no decay
ROLES = (MATRIX, EMBEDDING, HEAD, NORM, CONTROL)

# Export formats. canonical (a checkpoint copy) and packed store the config and every tensor by
# name, so they express any option whose parameters are plain tensors.
EXPORT_FORMATS = ("canonical", "packed", "hf", "mlx-lm", "hf-bitnet", "gguf")
OURS = frozenset({"canonical", "packed"})
EVERYWHERE = frozenset(EXPORT_FORMATS)


@dataclass(frozen=True)
class ParamRule:
    """One parameter an option adds. `suffix` is the name inside a layer (`self_attn.q_norm.weight`)
    or, with scope "model", the whole name (`lm_head.weight`). The parameter sits right after
    `after` (and after those placed there before it), so the canonical order, and with it each
    tensor's random stream in shared/spec/init.py, stays what it was before the option existed."""
    suffix: str
    shape: Callable[["ModelConfig"], tuple[int, ...]]
    role: str
    after: str
    # "normal" (N(0, initializer_range)), "ones", "zeros", "option" (the value), "constant"
    # (`init_value`) or "first_row_ones" (row 0 ones, the other rows zeros: a mix that starts as the
    # identity on its first input)
    init: str = "normal"
    target: str | None = None  # the ternary target it belongs to (ternary.targets), if any
    scope: str = "layer"
    when: Callable[["ModelConfig"], bool] | None = None  # present only where this holds (another option)
    init_value: float = 0.0  # the value of init "constant"


@dataclass(frozen=True)
class ParamEdit:
    """A change an option makes to a parameter it does not add (the base layout's or another option's),
    named as in ParamRule. `remove`: the model has no such parameter (e.g. a weightless norm's gain).
    `init`: its init rule instead of its own: "zeros", "ones", or "option_std" (normal with the
    option's value as the standard deviation). Edits apply after every rule is placed, so the
    canonical order, and the random stream of every parameter before the first removed one, stay.
    `must_exist`: an edit of a parameter the model lacks is an error (false: nothing to do)."""
    suffix: str
    scope: str = "layer"
    remove: bool = False
    init: str | None = None
    must_exist: bool = True


@dataclass(frozen=True)
class ModelOption:
    key: str                 # the model.* config key
    type: Any                # the field's type hint
    default: Any
    doc: str                 # one line for the option table
    exporters: frozenset     # formats that can express a non-default value
    why_not: str = ""        # what the other formats lack (named in their refusal)
    check: Callable[[Any], str | None] = lambda v: None  # an error message for a bad value
    # an error message for a non-default value that the rest of the model config does not allow
    requires: Callable[[Any, "ModelConfig"], str | None] = lambda v, m: None
    params: Callable[[Any], tuple[ParamRule, ...]] = lambda v: ()  # parameters for a value
    edits: Callable[[Any], tuple[ParamEdit, ...]] = lambda v: ()  # changes to other parameters
    example: Any = None      # a non-default value, for the option table and the tests
    example_needs: dict = field(default_factory=dict)  # other model fields `example` requires

    def is_default(self, value: Any) -> bool:
        return value == self.default


def _q_out(m) -> int:
    return m.num_attention_heads * m.head_dim


def _positive_or_none(what: str):
    return lambda v: None if v is None or v > 0 else f"must be positive ({what}), or absent for none"


def _one_of(*choices: str):
    def check(v):
        if v in choices:
            return None
        from shared.spec.config import _suggest
        return f"{v!r} is not supported; choose one of {', '.join(choices)}{_suggest(v, choices)}"
    return check


_GATE = ParamRule("mlp.gate_proj.weight", lambda m: (m.intermediate_size, m.hidden_size), MATRIX,
                  after="post_attention_layernorm.weight", target="mlp")
_HEAD = ParamRule("lm_head.weight", lambda m: (m.vocab_size, m.hidden_size), HEAD, after="model.norm.weight",
                  target="lm_head", scope="model")
_SUBLN = (ParamRule("self_attn.attn_sub_norm.weight", lambda m: (_q_out(m),), NORM,
                    after="self_attn.o_proj.weight", init="ones"),
          ParamRule("mlp.ffn_sub_norm.weight", lambda m: (m.intermediate_size,), NORM,
                    after="mlp.down_proj.weight", init="ones"))
_QK_NORM = (ParamRule("self_attn.q_norm.weight", lambda m: (m.head_dim,), NORM, after="self_attn.o_proj.weight",
                      init="ones"),
            ParamRule("self_attn.k_norm.weight", lambda m: (m.head_dim,), NORM, after="self_attn.o_proj.weight",
                      init="ones"))
_QK_GAIN = (ParamRule("self_attn.q_gain", lambda m: (m.num_attention_heads,), CONTROL,
                      after="self_attn.o_proj.weight", init="option"),)
# The record's factored embedding (parameter-golf EMBED_DIM): the lookup is embed_dim wide and
# projected up to hidden; the tied head projects the final hidden state back down first. Plain
# float matrices (never ternary), trained as the record trains them (Muon under train.optimizer=muon).
# Model-scope tensors other than the embedding follow the layers in canonical order, so embed_proj
# comes after them too and the layers keep their random streams (shared/spec/init.py).
_EMBED_PROJ = ParamRule("model.embed_proj.weight", lambda m: (m.hidden_size, m.embed_dim), MATRIX,
                        after="model.embed_tokens.weight", scope="model")
_EMBED_PROJ_REV = ParamRule("model.embed_proj_rev.weight", lambda m: (m.embed_dim, m.hidden_size), MATRIX,
                            after="model.norm.weight", scope="model", when=lambda m: m.tie_word_embeddings)
_VOCAB_BIAS = ParamRule("model.vocab_bias", lambda m: (m.vocab_size,), CONTROL, after="model.norm.weight",
                        init="zeros", scope="model")


def _embed_dim_params(value) -> tuple[ParamRule, ...]:
    return () if value is None else (_EMBED_PROJ, _EMBED_PROJ_REV)

_SKIPS = ParamRule("model.skip_weights", lambda m: (_skip_count(m), m.hidden_size), CONTROL,
                   after="model.embed_tokens.weight", init="ones", scope="model")
_RESID_MIX = ParamRule("resid_mix", lambda m: (2, m.hidden_size), CONTROL, after="mlp.down_proj.weight",
                       init="first_row_ones")
_BRANCH_SCALES = (ParamRule("attn_scale", lambda m: (m.hidden_size,), CONTROL, after="self_attn.o_proj.weight",
                            init="ones"),
                  ParamRule("mlp_scale", lambda m: (m.hidden_size,), CONTROL, after="mlp.down_proj.weight",
                            init="ones"))
# Every RMSNorm gain; the optional ones (q/k-norm, SubLN) go only where the model has them.
_NORM_GAINS = (ParamEdit("input_layernorm.weight", remove=True),
               ParamEdit("post_attention_layernorm.weight", remove=True),
               *(ParamEdit(f"self_attn.{n}.weight", remove=True, must_exist=False)
                 for n in ("q_norm", "k_norm", "attn_sub_norm")),
               ParamEdit("mlp.ffn_sub_norm.weight", remove=True, must_exist=False),
               ParamEdit("model.norm.weight", scope="model", remove=True))
_ZERO_OUTPUT_PROJ = (ParamEdit("self_attn.o_proj.weight", init="zeros"),
                     ParamEdit("mlp.down_proj.weight", init="zeros"))
_ZERO_HEAD = (ParamEdit("lm_head.weight", scope="model", init="zeros"),)
_EMBED_STD = (ParamEdit("model.embed_tokens.weight", scope="model", init="option_std"),)
HIDDEN_ACTS = ("silu", "relu2", "relu", "leaky_relu", "leaky_relu2")
LEAKY_ACTS = ("leaky_relu", "leaky_relu2")


# ---- attention options (issue #11), as parameter-golf's 2026-03-20..23 records define them ----
# Value residual (ResFormer): one (lambda_first, lambda_own) pair per layer after the first, both 0.5
# (the record's vr_lambda; its first layer holds a pair it never reads, so ours has none). Model
# scope, after the layers, so every layer keeps its random stream.
_VALUE_RESIDUAL = ParamRule("model.value_residual_lambdas", lambda m: (m.num_hidden_layers - 1, 2), CONTROL,
                            after="model.norm.weight", init="constant", init_value=0.5, scope="model")
# Gated attention: a float Linear(hidden -> heads) with a bias, weight zeros and bias 4 (each gate
# starts at sigmoid(4) ~ 0.98); the record trains it with the scalars (AdamW, no decay), so CONTROL:
# never ternary, never Muon.
_ATTN_GATE = (ParamRule("self_attn.attn_gate.weight", lambda m: (m.num_attention_heads, m.hidden_size), CONTROL,
                        after="self_attn.o_proj.weight", init="zeros"),
              ParamRule("self_attn.attn_gate.bias", lambda m: (m.num_attention_heads,), CONTROL,
                        after="self_attn.o_proj.weight", init="constant", init_value=4.0))


def _non_negative_int(v) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else f"must be >= 0, got {v!r}"


def _rotary_fraction(v) -> str | None:
    return None if isinstance(v, (int, float)) and 0 < v <= 1 else f"must be in (0, 1], got {v!r}"


def _rotary_dims_problem(v, m) -> str | None:
    """Hugging Face rotates int(head_dim * factor) dims; RoPE rotates pairs, so that must be even."""
    dims = int(m.head_dim * v)
    if dims >= 2 and dims % 2 == 0:
        return None
    return (f"int(head_dim * {v}) = int({m.head_dim} * {v}) = {dims} rotary dims; "
            "need a positive even number (RoPE rotates pairs)")


def _skip_count(m) -> int:
    """U-Net skips: the first L // 2 layers push, the rest pop; one weight per pairing."""
    L = m.num_hidden_layers
    return min(L // 2, L - L // 2)


def _needs(ok: Callable[[Any], bool], what: str):
    return lambda v, m: None if ok(m) else what


def _slope(v) -> str | None:
    return None if isinstance(v, (int, float)) and 0 < v < 1 else f"must be in (0, 1), got {v!r}"


# ---- depth and experts (issue #11) ----
def _stored_blocks_fit(v, m) -> str | None:
    # XSA and LN-scale damping are set per stored block from its index; shared blocks would need the
    # applied index (not defined yet). The value residual's mixes are per applied layer, so it combines.
    for key, on in (("xsa_last_n", m.xsa_last_n), ("ln_scale_damping", m.ln_scale_damping)):
        if on:
            return f"is not defined with model.{key} yet (it depends on the applied layer's index)"
    if v < m.num_hidden_layers:
        return None
    return (f"must be below model.num_hidden_layers = {m.num_hidden_layers} (the applied depth); as many "
            "stored blocks as applied layers is no sharing: leave it absent")


def _drop_probability(v) -> str | None:
    return None if isinstance(v, (int, float)) and 0 <= v < 1 else f"must be in [0, 1), got {v!r}"


def _expert_count(v) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v >= 2):
        return None
    return f"must be 0 (a plain MLP) or at least 2 experts, got {v!r}"


def _top_k(v) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else f"must be >= 1, got {v!r}"


def _experts_fit(v, m) -> str | None:
    """The expert MLPs are the plain MLP repeated; what would need per-expert variants is refused."""
    if m.subln:
        return "model.subln is not supported with experts (each expert would need its own ffn_sub_norm)"
    if m.fused_gate_up:
        return "model.fused_gate_up is not supported with experts (each expert runs its own projections)"
    if m.zero_init_output_proj:
        return "model.zero_init_output_proj is not supported with experts (it names mlp.down_proj.weight)"
    return None


def _top_k_fits(v, m) -> str | None:
    if not m.moe_num_experts:
        return "needs model.moe_num_experts (experts to choose from)"
    return None if v <= m.moe_num_experts else f"must not exceed model.moe_num_experts = {m.moe_num_experts}"


def _moe_params(n: int) -> tuple[ParamRule, ...]:
    """The router (a float CONTROL matrix: AdamW, no decay, never ternary or fp8-rounded), then expert
    e's gate (SwiGLU only), up and down projections, ternary under the mlp target."""
    if not n:
        return ()
    inter = lambda m: (m.intermediate_size, m.hidden_size)  # noqa: E731
    rules = [ParamRule("mlp.router.weight", lambda m: (m.moe_num_experts, m.hidden_size), CONTROL,
                       after="mlp.down_proj.weight")]
    for e in range(n):
        p = f"mlp.experts.{e}."
        rules += [ParamRule(p + "gate_proj.weight", inter, MATRIX, after="mlp.down_proj.weight", target="mlp",
                            when=lambda m: m.hidden_act == "silu"),
                  ParamRule(p + "up_proj.weight", inter, MATRIX, after="mlp.down_proj.weight", target="mlp"),
                  ParamRule(p + "down_proj.weight", lambda m: (m.hidden_size, m.intermediate_size), MATRIX,
                            after="mlp.down_proj.weight", target="mlp")]
    return tuple(rules)


_PLAIN_MLP = (ParamEdit("mlp.gate_proj.weight", remove=True, must_exist=False),
              ParamEdit("mlp.up_proj.weight", remove=True), ParamEdit("mlp.down_proj.weight", remove=True))


# In table order; rules placed at the same `after` keep this order.
OPTIONS: tuple[ModelOption, ...] = (
    ModelOption("tie_word_embeddings", bool, True,
                "the LM head reads model.embed_tokens.weight; false adds lm_head.weight",
                EVERYWHERE, params=lambda v: () if v else (_HEAD,), example=False),
    ModelOption("hidden_act", str, "silu",
                "silu: SwiGLU MLP down(silu(gate(x)) * up(x)); without gate_proj: relu2 down(relu(up(x))^2), "
                "relu down(relu(up(x))), leaky_relu down(leaky(up(x))), leaky_relu2 down(leaky(up(x))^2), "
                "leaky(u) = max(u, slope * u)",
                OURS, "a SwiGLU MLP only", check=_one_of(*HIDDEN_ACTS),
                params=lambda v: (_GATE,) if v == "silu" else (), example="relu2"),
    ModelOption("leaky_relu_slope", float, 0.01,
                "the negative slope of hidden_act leaky_relu / leaky_relu2",
                OURS, "no leaky ReLU MLP", check=_slope,
                requires=_needs(lambda m: m.hidden_act in LEAKY_ACTS, "applies to hidden_act leaky_relu or "
                                "leaky_relu2 only"), example=0.5, example_needs=dict(hidden_act="leaky_relu")),
    ModelOption("subln", bool, False,
                "BitNet sub-norms before o_proj and down_proj, blended in by the ternary warm-up lambda",
                OURS, "no sub-norms before o_proj / down_proj", params=lambda v: _SUBLN if v else (), example=True),
    ModelOption("qk_norm", bool, True,
                "Qwen3's per-head RMSNorm on q and k (false: Llama)",
                OURS, "q and k always normalised", params=lambda v: _QK_NORM if v else (), example=False),
    ModelOption("qk_gain", float | None, None,
                "a learned per-head gain on q after q/k-norm and RoPE (parameter-golf's q_gain); "
                "the value is its initial value",
                OURS, "no per-head query gain", check=_positive_or_none("the initial gain"),
                params=lambda v: () if v is None else _QK_GAIN, example=1.5),
    ModelOption("final_logit_softcapping", float | None, None,
                "logits = c * tanh(logits / c) (Gemma-2's key name; final_logit_softcapping_type picks the curve)",
                OURS, "no logit soft-cap", check=_positive_or_none("the cap c"), example=30.0),
    ModelOption("rms_norm_weights", bool, True,
                "false: every RMSNorm is weightless, x / sqrt(mean(x^2) + eps) (parameter-golf's norms)",
                OURS, "every RMSNorm has a gain; unit gains would be exact, but no exporter writes them",
                edits=lambda v: () if v else _NORM_GAINS, example=False),
    ModelOption("embed_norm", bool, False,
                "a weightless RMSNorm on the embedding output; its output is also residual_mix's x0",
                OURS, "no norm on the embedding output", example=True),
    ModelOption("unet_skips", bool, False,
                "the first L // 2 layers push their outputs; decoder layer i first adds "
                "skip_weights[i] * pop() (last in, first out) while any are left",
                OURS, "no skip connections between layers", params=lambda v: (_SKIPS,) if v else (),
                requires=_needs(lambda m: m.num_hidden_layers >= 2, "needs model.num_hidden_layers >= 2"),
                example=True),
    ModelOption("residual_mix", bool, False,
                "each layer starts with x = resid_mix[0] * x + resid_mix[1] * x0 (x0: the embedding output)",
                OURS, "no mix of the embedding into each layer", params=lambda v: (_RESID_MIX,) if v else (),
                example=True),
    ModelOption("branch_scales", bool, False,
                "x + attn_scale * attn(norm(x)) and x + mlp_scale * mlp(norm(x)), per channel",
                OURS, "no scales on the attention / MLP branches", params=lambda v: _BRANCH_SCALES if v else (),
                example=True),
    ModelOption("zero_init_output_proj", bool, False,
                "o_proj and down_proj start at zero (initialisation only)",
                EVERYWHERE, edits=lambda v: _ZERO_OUTPUT_PROJ if v else (), example=True),
    ModelOption("zero_init_lm_head", bool, False,
                "the untied lm_head starts at zero (initialisation only)",
                EVERYWHERE, edits=lambda v: _ZERO_HEAD if v else (),
                requires=_needs(lambda m: not m.tie_word_embeddings, "the head is tied (model.tie_word_embeddings"
                                " = true): there is no lm_head.weight"),
                example=True, example_needs=dict(tie_word_embeddings=False)),
    ModelOption("embed_init_std", float | None, None,
                "model.embed_tokens.weight starts as N(0, std) instead of N(0, initializer_range)",
                EVERYWHERE, check=_positive_or_none("the standard deviation"),
                edits=lambda v: () if v is None else _EMBED_STD, example=0.005),
    ModelOption("fused_qkv", bool, False,
                "speed only: one matmul over the concatenated effective q/k/v weights (each keeps its own "
                "ternary scales, also per tensor at group_size 0: the same math)",
                EVERYWHERE, example=True),
    ModelOption("fused_gate_up", bool, False,
                "speed only: one matmul over the concatenated effective gate/up weights (each keeps its own "
                "ternary scales, also per tensor at group_size 0: the same math)",
                EVERYWHERE, requires=_needs(lambda m: m.hidden_act == "silu", "needs hidden_act silu "
                                            "(the other MLPs have no gate_proj)"), example=True),
    # ---- the parameter-golf ternary record's model (issue #10) ----
    ModelOption("embed_dim", int | None, None,
                "the record's factored embedding: model.embed_tokens.weight is (vocab, embed_dim), "
                "model.embed_proj.weight maps the lookup up to hidden and, when tied, "
                "model.embed_proj_rev.weight maps the final hidden state down before the tied head",
                OURS, "an embedding as wide as the hidden state", check=_positive_or_none("the embedding width"),
                params=_embed_dim_params, example=32),
    ModelOption("vocab_bias", bool, False,
                "a learned bias model.vocab_bias (vocab,), zeros, added to the logits before the soft-cap",
                OURS, "no bias on the logits", params=lambda v: (_VOCAB_BIAS,) if v else (), example=True),
    ModelOption("final_logit_softcapping_type", str, "tanh",
                "tanh: c * tanh(z / c); poly: the record's c * clamp(u - u^3/3 + u^5/15, -1, 1), "
                "u = clamp(z / c, -2, 2); needs model.final_logit_softcapping",
                OURS, "a tanh soft-cap only", check=_one_of("tanh", "poly"), example="poly",
                example_needs=dict(final_logit_softcapping=30.0)),
    ModelOption("rope_ramp_factor", float | None, None,
                "parameter-golf's ROPE_TYPE=yarn (not Hugging Face's YaRN: no attention temperature, no "
                "wavelength bands): inv_freq_j /= 1 + ramp_j * (factor - 1), "
                "ramp_j = clamp((2j/head_dim - 0.25) / 0.75, 0, 1); factor = YARN_MAX_LEN / TRAIN_SEQ_LEN",
                OURS, "plain RoPE frequencies only", check=_positive_or_none("the factor"), example=2.0),
    ModelOption("out_proj_norm", bool, False,
                "a weightless RMSNorm on the input of o_proj and down_proj (the record's NormedTernaryLinear; "
                "SubLN's position without its gain or warm-up blend)",
                OURS, "no norm before o_proj / down_proj", example=True),
    # ---- depth and experts (issue #11; docs/design.md 3.7) ----
    ModelOption("num_unique_layers", int | None, None,
                "depth recurrence: only blocks model.layers.0 .. U-1 are stored and applied layer i (of "
                "num_hidden_layers) runs block i % U; per-block tensors (resid_mix, branch scales) are shared "
                "with the block, unet_skips' skip_weights stay one per applied pairing",
                OURS, "one stored block per layer", check=_positive_or_none("the stored blocks"),
                requires=_stored_blocks_fit, example=1),
    ModelOption("stochastic_depth", float, 0.0,
                "training only: applied layer i of L drops both residual branches for a sequence with "
                "probability p (i + 1) / L and scales a kept layer's branches by 1 / (1 - p_i); masks drawn "
                "in NumPy (shared/spec/layer_drop.py); evaluation and generation run every layer unscaled",
                EVERYWHERE, check=_drop_probability, example=0.2),
    ModelOption("moe_num_experts", int, 0,
                "a top-k mixture-of-experts MLP: router softmax p = softmax(x R^T); the k most probable "
                "experts (ties: the lower index) each add p_e * expert_e(x), every expert an MLP of hidden_act; "
                "train.moe_aux_loss weights the load-balancing loss",
                OURS, "one MLP per layer", check=_expert_count, requires=_experts_fit, params=_moe_params,
                edits=lambda v: _PLAIN_MLP if v else (), example=3),
    ModelOption("moe_top_k", int, 1,
                "experts per token of the mixture-of-experts MLP (gates are the full softmax's "
                "probabilities, not renormalised over the k)",
                OURS, "one MLP per layer", check=_top_k, requires=_top_k_fits, example=2,
                example_needs=dict(moe_num_experts=3)),
    # ---- attention options (issue #11) ----
    ModelOption("value_residual", bool, False,
                "ResFormer: layer i > 0 attends to v = l0 * v_first + l1 * v (v_first: layer 0's value "
                "projection), l = value_residual_lambdas[i - 1], both 0.5 at init",
                OURS, "no value residual", params=lambda v: (_VALUE_RESIDUAL,) if v else (),
                requires=_needs(lambda m: m.num_hidden_layers >= 2, "needs model.num_hidden_layers >= 2"),
                example=True),
    ModelOption("xsa_last_n", int, 0,
                "exclusive self attention on the last N layers: each head's output loses its component "
                "along its own token's value vector, o - (o . v_hat) v_hat (GQA: v of the head's kv head)",
                OURS, "plain attention output only", check=_non_negative_int,
                requires=lambda v, m: None if v <= m.num_hidden_layers else
                f"XSA on the last {v} layers, but model.num_hidden_layers = {m.num_hidden_layers}", example=1),
    ModelOption("gated_attention", bool, False,
                "each head's output times sigmoid(attn_gate(x)), x the attention's (normed) input; "
                "a float per-head gate, weight zeros and bias 4 at init",
                OURS, "no gate on the attention output", params=lambda v: _ATTN_GATE if v else (), example=True),
    ModelOption("ln_scale_damping", bool, False,
                "layer i (from 0) multiplies both normed block inputs by 1 / sqrt(i + 1) (parameter-golf's LN_SCALE)",
                OURS, "block inputs are not damped by depth", example=True),
    ModelOption("partial_rotary_factor", float, 1.0,
                "RoPE on the first int(head_dim * factor) dims of each head only, theta^(-2j/dims) over those "
                "dims (Hugging Face's key; parameter-golf's ROPE_DIMS); the rest pass unrotated",
                OURS, "RoPE on the whole head (Qwen3 and Llama rotate every dim)", check=_rotary_fraction,
                requires=_rotary_dims_problem, example=0.5),
)
# The block plug-ins' rows (shared/spec/blocks.py) follow the built-in ones.
from shared.spec.blocks import plugin_options  # noqa: E402 (blocks' declarations import this module's names)
OPTIONS = OPTIONS + plugin_options()
OPTION_BY_KEY = {o.key: o for o in OPTIONS}
if len(OPTION_BY_KEY) != len(OPTIONS):
    raise ValueError("model options declared twice: "
                     + ", ".join(sorted({o.key for o in OPTIONS if [p.key for p in OPTIONS].count(o.key) > 1})))


def combination_problem(m: "ModelConfig") -> str | None:
    """An error for options whose values contradict each other (each row's check sees its own value)."""
    if m.final_logit_softcapping_type != "tanh" and m.final_logit_softcapping is None:
        return (f"model.final_logit_softcapping_type = {m.final_logit_softcapping_type!r} shapes a soft-cap, "
                "but model.final_logit_softcapping (the cap c) is not set")
    if m.out_proj_norm and m.subln:
        return ("model.out_proj_norm and model.subln both normalise the input of o_proj and down_proj; "
                "choose one")
    return None


def non_default(m: "ModelConfig") -> list[ModelOption]:
    return [o for o in OPTIONS if not o.is_default(getattr(m, o.key))]


def inexpressible(m: "ModelConfig", fmt: str) -> list[str]:
    """`model.KEY = VALUE (the format has ...)` for every non-default option `fmt` cannot express."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    return [f"model.{o.key} = {getattr(m, o.key)!r} ({o.why_not or 'not expressible'})"
            for o in non_default(m) if fmt not in o.exporters]


_INIT_WORDS = {"zeros": "starts at zero", "ones": "starts at one", "option_std": "starts as N(0, value)"}


def _param_cell(o: ModelOption) -> str:
    """`name`s the option adds, then "removes ..." and "init ...: name" for its edits."""
    def names(xs) -> str:
        return ", ".join(f"`{n}`" for n in sorted(set(xs)))
    values = (o.default, o.example)
    parts = [names(r.suffix for v in values for r in o.params(v))]
    edits = [e for v in values for e in o.edits(v)]
    parts.append("removes " + names(e.suffix for e in edits if e.remove) if any(e.remove for e in edits) else "")
    for init in sorted({e.init for e in edits if e.init}):
        parts.append(f"{_INIT_WORDS.get(init, 'init ' + init)}: " + names(e.suffix for e in edits if e.init == init))
    return "; ".join(p for p in parts if p) or "-"


def option_table_markdown() -> str:
    """The option table for docs/design.md (tests check that the document carries this table)."""
    rows = ["| key | default | parameters it adds or changes | exported by | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for o in OPTIONS:
        fmts = ", ".join(f for f in EXPORT_FORMATS if f in o.exporters)
        rows.append(f"| `model.{o.key}` | `{o.default!r}` | {_param_cell(o)} | {fmts} | {o.doc} |")
    return "\n".join(rows)
