"""Parameter specs: every parameter of a model config with its name, shape, role, init rule,
weight-decay flag, optimizer group and ternary target. The one source of truth about parameters.

Names are the Hugging Face Qwen3/Llama ones; linear weights are (out, in) in both backends. The
base architecture is below; options add parameters through their declarations in
`shared/spec/options.py` (one place), never through special cases here or in the consumers: ternary
targeting, init, optimizer grouping, `inspect`, promote's counts and the exporters all read these
specs, and nothing guesses what a tensor is from its name or its number of dimensions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.spec.options import CONTROL, EMBEDDING, HEAD, MATRIX, NORM, OPTIONS, ParamRule

if TYPE_CHECKING:
    from shared.spec.config import ModelConfig, RunConfig

# The optimizer group of each role: block matrices ("matrix", Muon when train.optimizer = muon),
# the token embedding, an untied head, and the small float tensors ("scalar": gains, controls).
GROUP_OF_ROLE = {MATRIX: "matrix", EMBEDDING: "embed", HEAD: "head", NORM: "scalar", CONTROL: "scalar"}
DECAYED_ROLES = frozenset({MATRIX, EMBEDDING, HEAD})  # decoupled weight decay: matrices only


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    role: str
    init: str           # "normal", "ones", "zeros", "constant" or "first_row_ones" (shared/spec/init.py)
    init_value: float   # the value of a "constant" init, the standard deviation of a "normal" one
    target: str | None  # ternary target ("attn", "mlp", "embed", "lm_head"), or None: always float
    layer: int | None = None  # the decoder layer it belongs to; None: outside the layers
    decoder: bool = False  # in the decoder half: layer >= num_hidden_layers // 2 (train.decoder_lr_mult)

    @property
    def decay(self) -> bool:
        return self.role in DECAYED_ROLES

    @property
    def group(self) -> str:
        return GROUP_OF_ROLE[self.role]


def _rule(suffix: str, shape, role: str, target: str | None = None, init: str = "normal") -> ParamRule:
    return ParamRule(suffix, shape, role, after="", init=init, target=target)


def _q_out(m: "ModelConfig") -> int:
    return m.num_attention_heads * m.head_dim


def _kv_out(m: "ModelConfig") -> int:
    return m.num_key_value_heads * m.head_dim


_BASE_LAYER = (  # a pre-norm decoder layer; options add to it (shared/spec/options.py)
    _rule("input_layernorm.weight", lambda m: (m.hidden_size,), NORM, init="ones"),
    _rule("self_attn.q_proj.weight", lambda m: (_q_out(m), m.hidden_size), MATRIX, "attn"),
    _rule("self_attn.k_proj.weight", lambda m: (_kv_out(m), m.hidden_size), MATRIX, "attn"),
    _rule("self_attn.v_proj.weight", lambda m: (_kv_out(m), m.hidden_size), MATRIX, "attn"),
    _rule("self_attn.o_proj.weight", lambda m: (m.hidden_size, _q_out(m)), MATRIX, "attn"),
    _rule("post_attention_layernorm.weight", lambda m: (m.hidden_size,), NORM, init="ones"),
    _rule("mlp.up_proj.weight", lambda m: (m.intermediate_size, m.hidden_size), MATRIX, "mlp"),
    _rule("mlp.down_proj.weight", lambda m: (m.hidden_size, m.intermediate_size), MATRIX, "mlp"),
)
_BASE_MODEL = (  # outside the layers: the embedding comes first, the final norm after the layers
    _rule("model.embed_tokens.weight", lambda m: (m.vocab_size, m.embed_dim or m.hidden_size), EMBEDDING, "embed"),
    _rule("model.norm.weight", lambda m: (m.hidden_size,), NORM, init="ones"),
)


def _place(base: tuple[ParamRule, ...], scope: str, m: "ModelConfig") -> list[tuple[ParamRule, object]]:
    """(rule, option value) for `base` with every option's rules of `scope` inserted after their
    anchors, in table order."""
    out: list[tuple[ParamRule, object]] = [(r, None) for r in base]
    last_at: dict[str, str] = {}  # anchor -> the suffix placed there last (the next one goes after it)
    for opt in OPTIONS:
        value = getattr(m, opt.key)
        for r in opt.params(value):
            if r.scope != scope or (r.when is not None and not r.when(m)):
                continue
            names = [x.suffix for x, _ in out]
            anchor = last_at.get(r.after, r.after)
            if anchor not in names:
                raise ValueError(f"option model.{opt.key}: {r.suffix} is placed after {r.after!r}, "
                                 "which this model does not have")
            out.insert(names.index(anchor) + 1, (r, value))
            last_at[r.after] = r.suffix
    return out


def _edit(placed: list[tuple[ParamRule, object]], scope: str, m: "ModelConfig") -> list[tuple[ParamRule, object]]:
    """`placed` with every option's edits of `scope` applied: parameters removed, init rules replaced
    (an edited init reads its own option's value, as "option" and "option_std" do)."""
    out = list(placed)
    for opt in OPTIONS:
        value = getattr(m, opt.key)
        for e in opt.edits(value):
            if e.scope != scope:
                continue
            at = [i for i, (r, _) in enumerate(out) if r.suffix == e.suffix]
            if not at:
                if e.must_exist:
                    raise ValueError(f"option model.{opt.key}: this model has no {e.suffix}")
                continue
            r, _ = out[at[0]]
            if e.remove:
                del out[at[0]]
            elif e.init:
                out[at[0]] = (dataclasses.replace(r, init=e.init), value)
    return out


def _spec(name: str, r: ParamRule, m: "ModelConfig", option_value) -> ParamSpec:
    init, value = r.init, 0.0
    if init == "option":  # the option's value is the initial value (model.qk_gain = 1.5)
        init, value = "constant", float(option_value)
    elif init == "option_std":  # the option's value is the standard deviation (model.embed_init_std)
        init, value = "normal", float(option_value)
    elif init == "constant":  # a rule's own constant (gated_attention's bias of 4, a plug-in's scale)
        value = float(r.init_value)
    elif init == "normal":
        value = float(m.initializer_range)
    return ParamSpec(name, tuple(r.shape(m)), r.role, init, value, r.target)


def parameter_specs(m: "ModelConfig") -> dict[str, ParamSpec]:
    """Every parameter of the model, in canonical order (the order of shared/spec/init.py's streams)."""
    (embed, embed_value), *rest = _edit(_place(_BASE_MODEL, "model", m), "model", m)
    layer = _edit(_place(_BASE_LAYER, "layer", m), "layer", m)
    out = {embed.suffix: _spec(embed.suffix, embed, m, embed_value)}
    for i in range(m.num_unique_layers or m.num_hidden_layers):  # stored blocks (depth recurrence: fewer)
        for r, value in layer:
            name = f"model.layers.{i}.{r.suffix}"
            out[name] = dataclasses.replace(_spec(name, r, m, value), layer=i, decoder=i >= m.num_hidden_layers // 2)
    for r, value in rest:
        out[r.suffix] = _spec(r.suffix, r, m, value)
    return out


def parameter_shapes(m: "ModelConfig") -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, in canonical order, with its shape."""
    return {n: s.shape for n, s in parameter_specs(m).items()}


def ternary_parameters(cfg: "RunConfig") -> list[str]:
    """Names of the weights that are ternary under this config (in canonical order)."""
    if not cfg.ternary.enabled:
        return []
    return [n for n, s in parameter_specs(cfg.model).items() if s.target in cfg.ternary.targets]


def float_qat_parameters(cfg: "RunConfig") -> list[str]:
    """Names of the weights that ternary.float_qat rounds in the forward: the float matrices outside
    the blocks (the embedding, an untied head, and matrices no ternary target can reach, such as
    embed_proj), as parameter-golf's QATEmbedding / QATLinear; the ternary ones, the block matrices
    when ternary is off, norms and controls stay as they are."""
    if cfg.ternary.float_qat is None:
        return []
    tern = set(ternary_parameters(cfg))
    return [n for n, s in parameter_specs(cfg.model).items() if n not in tern
            and (s.role in (EMBEDDING, HEAD) or (s.role == MATRIX and s.target is None))]


def ternary_input_dims(cfg: "RunConfig") -> dict[str, int]:
    """Input dimension (the grouped axis) of each ternary weight; used to validate group_size."""
    specs = parameter_specs(cfg.model)
    return {n: specs[n].shape[-1] for n in ternary_parameters(cfg)}


def float_matrices(cfg: "RunConfig") -> list[str]:
    """Names of the matrices (projections, embedding, head) that stay in float under this config."""
    tern = set(ternary_parameters(cfg))
    return [n for n, s in parameter_specs(cfg.model).items() if s.role in DECAYED_ROLES and n not in tern]
