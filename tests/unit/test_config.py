"""Config dataclasses, presets and canonical names (shared/spec/config.py, shared/spec/presets.py, shared/spec/params.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.spec.config import ConfigError, ModelConfig, RunConfig, model_config_from_hf
from shared.spec.params import parameter_shapes, parameter_specs, ternary_input_dims, ternary_parameters
from shared.spec.presets import PRESETS, get_preset
from tests.variants import TINY, tiny_dict

REPO_ROOT = Path(__file__).resolve().parents[2]

# Published Hugging Face config.json values (Qwen/Qwen3-*/config.json).
QWEN3_PUBLISHED = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}
QWEN3_COMMON = dict(head_dim=128, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=40960, hidden_act="silu", model_type="qwen3", qk_norm=True)


def _tiny(**model) -> dict:
    """The tiny config's sections as dicts, with group size 8 (a divisor of the odd shapes below)."""
    return tiny_dict(ternary=dict(group_size=8), **model)


# ---- presets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_resolves_validates_and_round_trips(name, tmp_path):
    preset = PRESETS[name]
    assert preset.note.strip() and "\n" not in preset.note
    cfg = get_preset(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.validate() is cfg
    m = cfg.model
    assert isinstance(m.head_dim, int) and m.head_dim > 0
    assert m.num_attention_heads % m.num_key_value_heads == 0
    # TOML: text -> file -> load gives the same resolved config.
    f = tmp_path / f"{name}.toml"
    f.write_text(cfg.to_toml())
    assert RunConfig.load_toml(f).to_dict() == cfg.to_dict()
    cfg.save_toml(tmp_path / "saved.toml")
    assert RunConfig.load_toml(tmp_path / "saved.toml").to_dict() == cfg.to_dict()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # JSON (what checkpoints store).
    assert RunConfig.from_json(cfg.to_json()).to_dict() == cfg.to_dict()
    assert json.loads(cfg.to_json()) == cfg.to_dict()


@pytest.mark.parametrize("name", sorted(QWEN3_PUBLISHED))
def test_qwen3_presets_match_published_config(name):
    m = get_preset(name).model
    for k, v in {**QWEN3_PUBLISHED[name], **QWEN3_COMMON}.items():
        assert getattr(m, k) == v, (name, k)


def test_qwen3_family_is_all_listed():
    assert set(QWEN3_PUBLISHED) <= set(PRESETS)


def test_pg_ternary_preset():
    cfg = get_preset("pg-ternary")
    m = cfg.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads) == (10, 768, 8, 4)
    assert m.hidden_act == "relu2"
    assert m.intermediate_size == 3072 == 4 * m.hidden_size
    assert m.vocab_size == 8192
    assert cfg.ternary.group_size == 128
    assert m.head_dim == 96


def test_smoke_and_mac_ablation_exist():
    assert get_preset("smoke").model.num_hidden_layers >= 1
    assert get_preset("mac-ablation").model.hidden_act == "relu2"


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'smoke'"):
        get_preset("smok")
    with pytest.raises(ConfigError, match=r"did you mean 'qwen3-0.6b'"):
        get_preset("qwen3-0.6")


def test_presets_are_not_shared_mutable_state():
    a = get_preset("smoke")
    a.model.hidden_size = 4096
    a.ternary.targets.append("embed")
    b = get_preset("smoke")
    assert b.model.hidden_size != 4096
    assert "embed" not in b.ternary.targets


# ---- overrides -----------------------------------------------------------------------------------
def test_override_values_are_parsed_as_toml_literals():
    base = RunConfig()
    cfg = base.with_overrides(["train.lr=3e-4", "model.hidden_act=relu2", 'ternary.targets=["attn"]',
                               "train.steps=7", "model.tie_word_embeddings=false",
                               "ternary.activation_bits=8"])
    assert cfg.train.lr == 3e-4 and type(cfg.train.lr) is float
    assert cfg.model.hidden_act == "relu2"
    assert cfg.ternary.targets == ["attn"]
    assert cfg.train.steps == 7 and type(cfg.train.steps) is int
    assert cfg.model.tie_word_embeddings is False
    assert cfg.ternary.activation_bits == 8
    # The original is untouched.
    assert base.train.lr == RunConfig().train.lr and base.model.hidden_act == "silu"


def test_override_int_for_float_field_becomes_float():
    cfg = RunConfig().with_overrides(["train.lr=1"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_override_typo_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"'hiden_size'.*did you mean 'hidden_size'"):
        RunConfig().with_overrides(["model.hiden_size=3"])


@pytest.mark.parametrize("assignment,key", [("train.steps=abc", "train.steps"),
                                            ("model.tie_word_embeddings=3", "model.tie_word_embeddings"),
                                            ("model.hidden_size=1.5", "model.hidden_size"),
                                            ("train.lr=fast", "train.lr"),
                                            ("ternary.targets=attn", "ternary.targets")])
def test_override_wrong_type_names_the_key(assignment, key):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides([assignment])
    assert key in str(e.value)


def test_override_unknown_section_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        RunConfig().with_overrides(["trian.lr=1e-3"])


@pytest.mark.parametrize("bad", ["train.lr", "lr=3e-4", "a.b.c=1"])
def test_override_malformed(bad):
    with pytest.raises(ConfigError):
        RunConfig().with_overrides([bad])


def test_override_hidden_size_rederives_a_derived_head_dim():
    base = RunConfig().validate()
    assert base.model.head_dim == base.model.hidden_size // base.model.num_attention_heads
    cfg = base.with_overrides(["model.hidden_size=512"])
    assert cfg.model.head_dim == 512 // base.model.num_attention_heads
    cfg = base.with_overrides(["model.num_attention_heads=8", "model.num_key_value_heads=2"])
    assert cfg.model.head_dim == base.model.hidden_size // 8


def test_override_explicit_head_dim_in_the_same_list_wins():
    cfg = RunConfig().with_overrides(["model.head_dim=32", "model.hidden_size=512"])
    assert cfg.model.head_dim == 32
    cfg = RunConfig().with_overrides(["model.hidden_size=512", "model.head_dim=32"])
    assert cfg.model.head_dim == 32


# For each Qwen3 preset: a width whose hidden_size // heads is not 128, so a re-derivation shows.
_QWEN_NEW_WIDTH = [
    ("qwen3-0.6b", 512),
    ("qwen3-1.7b", 1024),
    ("qwen3-4b", 2048),
    ("qwen3-8b", 2048),
]


@pytest.mark.parametrize("name,width", _QWEN_NEW_WIDTH)
def test_override_hidden_size_keeps_an_explicit_head_dim(name, width):
    base = get_preset(name)
    assert width // base.model.num_attention_heads != 128
    cfg = base.with_overrides([f"model.hidden_size={width}"])
    assert cfg.model.hidden_size == width
    assert cfg.model.head_dim == 128


# ---- validation ----------------------------------------------------------------------------------
def test_tiny_config_is_valid():
    cfg = RunConfig.from_dict(_tiny())
    assert cfg.model.head_dim == TINY["hidden_size"] // TINY["num_attention_heads"]


def test_heads_not_dividing_hidden_size():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(_tiny(hidden_size=30, num_attention_heads=4))
    assert "num_attention_heads" in str(e.value) and "hidden_size" in str(e.value)


def test_heads_not_dividing_hidden_size_is_fine_with_explicit_head_dim():
    cfg = RunConfig.from_dict(_tiny(hidden_size=24, num_attention_heads=4, head_dim=8))
    assert parameter_shapes(cfg.model)["model.layers.0.self_attn.q_proj.weight"] == (32, 24)


def test_kv_heads_not_dividing_heads():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        RunConfig.from_dict(_tiny(num_attention_heads=4, num_key_value_heads=3))


def test_group_size_not_dividing_an_input_dim_names_the_weight():
    # Every input dimension is 64 (hidden) except down_proj's (intermediate 40); 8 divides 64 and 40,
    # 16 only 64.
    assert TINY["hidden_size"] == 64
    d = _tiny(intermediate_size=40)
    RunConfig.from_dict(d)
    d["ternary"]["group_size"] = 16
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    msg = str(e.value)
    assert "group_size" in msg and "model.layers.0.mlp.down_proj.weight" in msg and "40" in msg


def test_group_size_zero_means_per_tensor_and_is_always_valid():
    d = _tiny(intermediate_size=41)
    d["ternary"]["group_size"] = 0
    assert RunConfig.from_dict(d).ternary.group_size == 0


def test_tied_embeddings_need_both_embed_and_lm_head():
    d = _tiny(tie_word_embeddings=True)
    d["ternary"]["targets"] = ["attn", "embed"]
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    assert "lm_head" in str(e.value) and "embed" in str(e.value)
    d["ternary"]["targets"] = ["attn", "embed", "lm_head"]
    RunConfig.from_dict(d)
    d["model"]["tie_word_embeddings"] = False
    d["ternary"]["targets"] = ["embed"]
    RunConfig.from_dict(d)


def _float_fields() -> list[str]:
    """section.key of every float (or optional float) field of the run config."""
    import dataclasses
    import typing
    from shared.spec.config import _SECTIONS
    keys = []
    for section, cls in _SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            if hint is float or float in typing.get_args(hint):
                keys.append(f"{section}.{name}")
    assert {"train.lr", "model.rope_theta", "ternary.eps", "train.time_budget_s"} <= set(keys)
    return keys


@pytest.mark.parametrize("key", _float_fields())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_naming_the_key(key, value):
    """Issue 13: `train.lr=nan` was accepted (TOML reads nan and inf as floats)."""
    base = RunConfig.from_dict(_tiny())
    with pytest.raises(ConfigError, match=rf"{key}: expected a finite number, got {value}"):
        base.with_overrides([f"{key}={value}"])
    d = _tiny()
    section, name = key.split(".")
    d.setdefault(section, {})[name] = float(value)
    with pytest.raises(ConfigError, match=rf"{key}: expected a finite number"):
        RunConfig.from_json(json.dumps(d))  # checkpoints' config.json: Python's json reads NaN too


# Each bad value and the one key its message must name (issue 13: some messages grouped several keys).
ONE_KEY = [("train.steps", "-1"), ("train.batch_size", "0"), ("train.seq_len", "0"), ("train.grad_accum", "0"),
           ("train.log_every", "0"), ("train.eval_tokens", "0"), ("train.lr", "0.0"), ("train.lr", "-0.001"),
           ("train.muon_lr", "0.0"), ("train.adam_eps", "0.0"), ("train.distill_temperature", "0.0"),
           ("train.eval_every", "-1"), ("train.checkpoint_every", "-1"), ("train.warmup_steps", "-1"),
           ("train.grad_clip", "-1.0"), ("train.weight_decay", "-0.1"), ("train.min_delta", "-0.1"),
           ("train.warmdown_frac", "1.5"), ("train.min_lr_frac", "-0.5"), ("train.distill_alpha", "2.0"),
           ("train.beta1", "1.0"), ("train.beta2", "-0.1"), ("train.muon_momentum", "1.0"),
           ("train.ema_decay", "1.0"), ("train.ema_start_frac", "1.0"), ("train.ema_start_frac", "-0.1"),
           ("train.decoder_lr_mult", "-0.5"), ("train.patience", "0"), ("train.time_budget_s", "0.0"),
           ("model.rope_theta", "0.0"), ("model.rms_norm_eps", "-1e-06"), ("model.initializer_range", "-0.1"),
           ("ternary.warmup_steps", "-1"), ("ternary.eps", "0.0")]


@pytest.mark.parametrize("key,value", ONE_KEY)
def test_each_validation_failure_names_its_key_and_value(key, value):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(_tiny()).with_overrides([f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(f"{key} must be ") and msg.endswith(f", got {value}"), msg
    others = {k for k, _ in ONE_KEY if k != key and k.split(".")[1] != key.split(".")[1]}
    assert not [k for k in others if k in msg], msg


def test_unknown_target_suggests():
    d = _tiny()
    d["ternary"]["targets"] = ["atn"]
    with pytest.raises(ConfigError, match=r"did you mean 'attn'"):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("model", [dict(head_dim=7), dict(hidden_size=12, num_attention_heads=4)])
def test_odd_head_dim(model):
    d = _tiny(**model)
    d["ternary"]["group_size"] = 0
    with pytest.raises(ConfigError, match="head_dim"):
        RunConfig.from_dict(d)


def test_unknown_key_in_a_section_and_unknown_section():
    with pytest.raises(ConfigError, match=r"did you mean 'intermediate_size'"):
        RunConfig.from_dict({"model": {"intermediate_sise": 8}})
    with pytest.raises(ConfigError, match=r"did you mean 'ternary'"):
        RunConfig.from_dict({"ternery": {}})


def test_unknown_hidden_act():
    with pytest.raises(ConfigError, match="hidden_act"):
        RunConfig.from_dict(_tiny(hidden_act="gelu"))


def test_toml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nhidden_size = 3\n")
    with pytest.raises(ConfigError, match="TOML"):
        RunConfig.load_toml(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[model]\nnum_hidden_layer = 3\n")
    with pytest.raises(ConfigError) as e:
        RunConfig.load_toml(typo)
    assert "typo.toml" in str(e.value) and "did you mean 'num_hidden_layers'" in str(e.value)


# ---- Hugging Face config.json --------------------------------------------------------------------
def _qwen3_06b_config_json() -> dict:
    """Qwen/Qwen3-0.6B config.json as transformers 5 writes it (rope_parameters, dtype, layer_types)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_types": ["full_attention"] * 28,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "pad_token_id": None,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": True,
        "transformers_version": "5.0.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }


def test_hf_qwen3_config_loads():
    m = model_config_from_hf(_qwen3_06b_config_json())
    assert isinstance(m, ModelConfig)
    assert m.rope_theta == 1000000.0  # from rope_parameters (the dataclass default is 1e4)
    assert ModelConfig().rope_theta != 1000000.0
    for k, v in {**QWEN3_PUBLISHED["qwen3-0.6b"], **QWEN3_COMMON}.items():
        assert getattr(m, k) == v, k
    assert RunConfig(model=m).validate().model == get_preset("qwen3-0.6b").model


def test_hf_transformers4_style_config_loads():
    d = _qwen3_06b_config_json()
    del d["rope_parameters"], d["layer_types"], d["dtype"]
    d.update(rope_theta=1000000.0, rope_scaling=None, torch_dtype="bfloat16")
    assert model_config_from_hf(d).rope_theta == 1000000.0


def test_hf_llama_config_has_no_qk_norm():
    d = _qwen3_06b_config_json()
    d.update(model_type="llama", architectures=["LlamaForCausalLM"], mlp_bias=False)
    m = model_config_from_hf(d)
    assert m.qk_norm is False and m.model_type == "llama"
    assert not [n for n in parameter_shapes(RunConfig(model=m).validate().model) if "q_norm" in n]


def test_hf_config_from_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                   num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                                   head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                                   tie_word_embeddings=True, rope_theta=1000000.0)
    cfg.save_pretrained(tmp_path)  # writes the config.json a user would have
    hf = json.loads((tmp_path / "config.json").read_text())
    m = model_config_from_hf(hf)
    assert m.rope_theta == 1000000.0
    assert RunConfig(model=m).validate().model == get_preset("qwen3-0.6b").model


@pytest.mark.parametrize("change,word", [
    ({"foo_bar": 1}, "foo_bar"),
    ({"attention_bias": True}, "attention_bias"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"layer_types": ["sliding_attention"] * 28}, "layer_types"),
    ({"model_type": "mistral"}, "mistral"),
    ({"hidden_size": "1024"}, "hidden_size"),
])
def test_hf_config_rejects(change, word):
    d = _qwen3_06b_config_json()
    d.update(change)
    with pytest.raises(ConfigError) as e:
        model_config_from_hf(d, where="Qwen3-0.6B/config.json")
    assert word in str(e.value) and "Qwen3-0.6B/config.json" in str(e.value)


def test_hf_config_input_is_not_mutated():
    d = _qwen3_06b_config_json()
    model_config_from_hf(d)
    assert d == _qwen3_06b_config_json()


# ---- canonical names -----------------------------------------------------------------------------
def _model(**kw) -> ModelConfig:
    return RunConfig.from_dict(_tiny(**kw)).model


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("act", ["silu", "relu2"])
@pytest.mark.parametrize("qk_norm", [True, False])
def test_parameter_name_counts(tie, act, qk_norm):
    layers = 3
    m = _model(tie_word_embeddings=tie, hidden_act=act, qk_norm=qk_norm, num_hidden_layers=layers)
    names = list(parameter_shapes(m))
    per_layer = 2 + 4 + (2 if qk_norm else 0) + (3 if act == "silu" else 2)  # norms, attn, qk, mlp
    assert len(names) == 1 + layers * per_layer + 1 + (0 if tie else 1)
    assert len(set(names)) == len(names)
    assert names[0] == "model.embed_tokens.weight"
    assert ("lm_head.weight" in names) is (not tie)
    assert names[-1] == ("model.norm.weight" if tie else "lm_head.weight")
    assert any("gate_proj" in n for n in names) is (act == "silu")
    assert any(n.endswith("q_norm.weight") or n.endswith("k_norm.weight") for n in names) is qk_norm
    for i in range(layers):
        for suffix in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.o_proj", "post_attention_layernorm", "mlp.up_proj", "mlp.down_proj"):
            assert f"model.layers.{i}.{suffix}.weight" in names
    assert not any(f"model.layers.{layers}." in n for n in names)


def test_qwen3_06b_shapes_and_parameter_count():
    m = get_preset("qwen3-0.6b").model
    shapes = parameter_shapes(m)
    L = "model.layers.0."
    assert shapes[L + "self_attn.q_proj.weight"] == (2048, 1024)  # 16 heads x 128 > hidden 1024
    assert shapes[L + "self_attn.k_proj.weight"] == (1024, 1024)  # 8 kv heads x 128
    assert shapes[L + "self_attn.v_proj.weight"] == (1024, 1024)
    assert shapes[L + "self_attn.o_proj.weight"] == (1024, 2048)
    assert shapes[L + "self_attn.q_norm.weight"] == (128,)
    assert shapes[L + "self_attn.k_norm.weight"] == (128,)
    assert shapes[L + "mlp.gate_proj.weight"] == (3072, 1024)
    assert shapes[L + "mlp.down_proj.weight"] == (1024, 3072)
    assert shapes["model.embed_tokens.weight"] == (151936, 1024)
    assert "lm_head.weight" not in shapes

    total = sum(_prod(s) for s in shapes.values())
    # Independent formula: embedding + per layer (attention, MLP, norms) + final norm; tied head.
    v, d, i, n_layers, h, kv, hd = 151936, 1024, 3072, 28, 16, 8, 128
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = 3 * d * i
    norms = 2 * d + 2 * hd
    expected = v * d + n_layers * (attn + mlp + norms) + d
    assert expected == 596_049_920  # the published Qwen3-0.6B count (tied embeddings)
    assert total == expected


def test_qwen3_8b_has_an_untied_head():
    shapes = parameter_shapes(get_preset("qwen3-8b").model)
    assert shapes["lm_head.weight"] == (151936, 4096)


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def test_spec_targets_and_ternary_parameters():
    specs = parameter_specs(RunConfig.from_dict(_tiny()).with_overrides(["model.tie_word_embeddings=false"]).model)
    assert specs["model.layers.1.self_attn.q_proj.weight"].target == "attn"
    assert specs["model.layers.1.mlp.down_proj.weight"].target == "mlp"
    assert specs["model.embed_tokens.weight"].target == "embed"
    assert specs["lm_head.weight"].target == "lm_head"
    for n in ("model.norm.weight", "model.layers.0.input_layernorm.weight",
              "model.layers.0.post_attention_layernorm.weight", "model.layers.0.self_attn.q_norm.weight",
              "model.layers.0.self_attn.k_norm.weight"):
        assert specs[n].target is None, n
    cfg = RunConfig.from_dict(_tiny())
    names = ternary_parameters(cfg)
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert all(n.endswith("_proj.weight") for n in names)
    dims = ternary_input_dims(cfg)
    assert dims["model.layers.1.mlp.down_proj.weight"] == TINY["intermediate_size"]
    assert dims["model.layers.1.self_attn.o_proj.weight"] == TINY["hidden_size"]
    cfg.ternary.enabled = False
    assert ternary_parameters(cfg) == []


# ---- import hygiene ------------------------------------------------------------------------------
def test_shared_imports_no_framework():
    code = (
        "import importlib, pkgutil, sys\n"
        "import shared\n"
        "mods = [m.name for m in pkgutil.walk_packages(shared.__path__, 'shared.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('mlx', 'torch'))\n"
        "print(len(mods), bad)\n"
        "sys.exit(1 if bad or len(mods) < 6 else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ttt_chunk_multiple_of_seq_len_binds_only_when_ttt_is_on():
    # the default chunk (2048 tokens) must not refuse a run whose seq_len does not divide it
    RunConfig.from_dict(tiny_dict(train=dict(seq_len=96)))
    with pytest.raises(ConfigError, match="ttt_chunk_tokens must be a positive multiple"):
        RunConfig.from_dict(tiny_dict(train=dict(seq_len=96, ttt="full")))
    with pytest.raises(ConfigError, match="ttt_chunk_tokens"):
        RunConfig.from_dict(tiny_dict(train=dict(ttt_chunk_tokens=0)))
