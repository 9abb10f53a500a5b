"""Parameter specs and the option table (shared/spec/params.py, shared/spec/options.py): one declaration, read
by init, ternary targeting, optimizer rules and the exporters' allowlist."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared.spec.config import ConfigError, ModelConfig
from shared.spec.init import init_weights
from shared.train.optim_rules import slots_for, uses_muon, uses_weight_decay
from shared.spec.options import EXPORT_FORMATS, OPTIONS, ROLES, inexpressible, option_table_markdown
from shared.spec.params import float_matrices, parameter_specs, ternary_parameters
from tests.variants import VARIANTS, tiny_config, variant_config


def test_every_option_is_a_model_config_field_with_its_default():
    fields_ = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for o in OPTIONS:
        assert o.key in fields_, o.key
        f = fields_[o.key]  # a list default (model.ngram_orders) comes from a factory: a fresh list each time
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default == o.default, o.key
        assert not o.is_default(o.example), f"{o.key}: the example must be a non-default value"
        assert o.exporters <= set(EXPORT_FORMATS), o.key


def test_canonical_order_of_the_base_model():
    names = list(parameter_specs(tiny_config(ternary=dict(group_size=64)).model))
    layer0 = [n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "model.norm.weight"
    assert layer0 == ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                      "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
                      "self_attn.k_norm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                      "mlp.up_proj.weight", "mlp.down_proj.weight"]


def test_options_insert_their_parameters_at_their_anchor():
    m = tiny_config(ternary=dict(group_size=64), subln=True, qk_gain=2.0, tie_word_embeddings=False).model
    names = list(parameter_specs(m))
    layer0 = [n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")]
    assert layer0[4:9] == ["self_attn.o_proj.weight", "self_attn.attn_sub_norm.weight", "self_attn.q_norm.weight",
                           "self_attn.k_norm.weight", "self_attn.q_gain"]
    assert layer0[-1] == "mlp.ffn_sub_norm.weight"
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]


def test_roles_init_decay_groups():
    cfg = tiny_config(ternary=dict(group_size=64), qk_gain=1.5, tie_word_embeddings=False,
                      train=dict(optimizer="muon", weight_decay=0.1))
    specs = parameter_specs(cfg.model)
    assert {s.role for s in specs.values()} == set(ROLES)
    gain = specs["model.layers.1.self_attn.q_gain"]
    assert (gain.role, gain.shape, gain.init, gain.init_value, gain.target) == ("control", (4,), "constant", 1.5, None)
    assert not gain.decay and gain.group == "scalar" and not uses_muon(gain, cfg.train)
    assert slots_for(gain, cfg.train) == ("exp_avg", "exp_avg_sq")
    q = specs["model.layers.1.self_attn.q_proj.weight"]
    assert q.decay and uses_muon(q, cfg.train) and uses_weight_decay(q, cfg.train) and slots_for(q, cfg.train) == ("momentum",)
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        assert uses_weight_decay(specs[n], cfg.train) and not uses_muon(specs[n], cfg.train), n
    assert not uses_weight_decay(specs["model.norm.weight"], cfg.train)
    w = init_weights(cfg.model, seed=0)
    assert np.array_equal(w["model.layers.1.self_attn.q_gain"], np.full(4, 1.5, np.float32))
    assert np.array_equal(w["model.norm.weight"], np.ones(64, np.float32))
    assert abs(w["model.layers.0.mlp.up_proj.weight"].std() / cfg.model.initializer_range - 1) < 0.1


def test_a_control_tensor_in_self_attn_is_not_ternary():
    """The old name rule made every non-norm `.self_attn.` tensor ternary (a q_gain would have been
    'ternary' and failed group_size validation with a misleading message)."""
    cfg = variant_config("qkgain1.5-gqa-G64")
    assert not any(n.endswith("q_gain") for n in ternary_parameters(cfg))
    assert len(ternary_parameters(cfg)) == 2 * 7
    assert float_matrices(cfg) == ["model.embed_tokens.weight"]


def test_adding_an_option_keeps_the_other_initial_weights():
    base = init_weights(variant_config("gqa-tied-silu-G64").model, seed=3)
    gain = init_weights(variant_config("qkgain1.5-gqa-G64").model, seed=3)
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert np.array_equal(base[k], gain[k]), k


@pytest.mark.parametrize("option", [o.key for o in OPTIONS])
def test_export_allowlist_refuses_by_name(option):
    o = next(x for x in OPTIONS if x.key == option)
    m = tiny_config(ternary=dict(group_size=64), **{**o.example_needs, option: o.example}).model
    for fmt in EXPORT_FORMATS:
        bad = [b for b in inexpressible(m, fmt) if b.startswith(f"model.{option} = ")]  # not the needs'
        if fmt in o.exporters:
            assert bad == [], (fmt, bad)
        else:
            assert len(bad) == 1 and bad[0].startswith(f"model.{option} = "), (fmt, bad)
    assert inexpressible(tiny_config(ternary=dict(group_size=64)).model, "hf") == []


def test_option_checks_name_the_key():
    with pytest.raises(ConfigError, match="model.qk_gain"):
        tiny_config(qk_gain=0.0)
    with pytest.raises(ConfigError, match="model.hidden_act.*relu2"):
        tiny_config(hidden_act="gelu")


def test_option_table_lists_every_option_and_its_parameters():
    table = option_table_markdown()
    for o in OPTIONS:
        assert f"`model.{o.key}`" in table
    assert "`self_attn.q_gain`" in table and "`lm_head.weight`" in table


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_specs_are_consistent(variant):
    cfg = variant_config(variant)
    specs = parameter_specs(cfg.model)
    assert all(s.role in ROLES for s in specs.values())
    assert all(len(s.shape) == 2 for s in specs.values() if s.target is not None)
    assert set(init_weights(cfg.model)) == set(specs)


def test_design_doc_carries_the_current_option_table():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    start, end = text.index("<!-- option-table:start -->\n"), text.index("<!-- option-table:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == option_table_markdown().strip(), \
        "docs/design.md 3.7 is out of date: paste shared.spec.options.option_table_markdown() there"


def test_readme_carries_the_current_option_table():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert option_table_markdown() in text, "README.md 'Model options' is out of date"
