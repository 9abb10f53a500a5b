"""Issue #11's attention options in the spec and the float64 reference: checks, parameter specs, the
initial weights of the configs that do not set them, and identities of the equations (an option at
a setting that makes it the identity gives the plain model's logits)."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.config import ConfigError, model_config_from_hf
from shared.spec.init import init_weights
from shared.spec.params import parameter_specs, ternary_parameters
from shared.spec.reference_model import exclusive_attention, reference_logits, rope
from tests.variants import ALL_TARGETS, tiny_config

IDS = np.random.default_rng(0).integers(0, 256, (2, 24))


@pytest.mark.parametrize("overrides,message", [
    (dict(xsa_last_n=-1), "model.xsa_last_n: must be >= 0"),
    (dict(xsa_last_n=3), "model.xsa_last_n: XSA on the last 3 layers, but model.num_hidden_layers = 2"),
    (dict(partial_rotary_factor=0.0), r"model.partial_rotary_factor: must be in \(0, 1\]"),
    (dict(partial_rotary_factor=1.5), r"model.partial_rotary_factor: must be in \(0, 1\]"),
    (dict(partial_rotary_factor=0.1), "int\\(16 \\* 0.1\\) = 1 rotary dims; need a positive even number"),
    (dict(partial_rotary_factor=0.3), None),
    (dict(value_residual=True, num_hidden_layers=1), "model.value_residual: needs model.num_hidden_layers >= 2"),
])
def test_checks_name_the_key(overrides, message):
    if message is None:  # int(16 * 0.3) = 4: even, accepted (Hugging Face rounds down the same way)
        assert tiny_config(**overrides).model.partial_rotary_factor == 0.3
        return
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_parameters_roles_and_inits():
    cfg = tiny_config(ternary=dict(targets=ALL_TARGETS), value_residual=True, gated_attention=True,
                      num_hidden_layers=3, train=dict(optimizer="muon"))
    specs = parameter_specs(cfg.model)
    lam = specs["model.value_residual_lambdas"]
    assert (lam.shape, lam.role, lam.init, lam.init_value, lam.target) == ((2, 2), "control", "constant", 0.5, None)
    gw, gb = specs["model.layers.2.self_attn.attn_gate.weight"], specs["model.layers.2.self_attn.attn_gate.bias"]
    assert (gw.shape, gw.role, gw.init, gw.target, gw.group) == ((4, 64), "control", "zeros", None, "scalar")
    assert (gb.shape, gb.init, gb.init_value) == ((4,), "constant", 4.0)
    assert not any("attn_gate" in n or "lambdas" in n for n in ternary_parameters(cfg))
    w = init_weights(cfg.model, seed=1)
    assert np.array_equal(w["model.value_residual_lambdas"], np.full((2, 2), 0.5, np.float32))
    assert np.array_equal(w["model.layers.0.self_attn.attn_gate.bias"], np.full(4, 4.0, np.float32))
    assert not w["model.layers.0.self_attn.attn_gate.weight"].any()
    names = list(specs)
    assert names[-2:] == ["model.norm.weight", "model.value_residual_lambdas"]  # after the layers


def test_options_without_parameters_keep_the_initial_weights_and_the_gate_keeps_what_precedes_it():
    base = init_weights(tiny_config().model, seed=2)
    same = init_weights(tiny_config(xsa_last_n=2, ln_scale_damping=True, partial_rotary_factor=0.5).model, seed=2)
    assert base.keys() == same.keys() and all(np.array_equal(base[k], same[k]) for k in base)
    gated = init_weights(tiny_config(gated_attention=True, value_residual=True).model, seed=2)
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight"):
        assert np.array_equal(base[k], gated[k]), k


def _logits(weights=None, seed=4, **model):
    cfg = tiny_config(ternary=dict(enabled=False), **model)
    w = init_weights(cfg.model, seed) if weights is None else weights
    return reference_logits(cfg, w, IDS), w


def test_value_residual_with_lambdas_0_1_is_the_plain_model_and_otherwise_is_not():
    plain, w = _logits()
    cfg = tiny_config(ternary=dict(enabled=False), value_residual=True)
    wv = {**w, "model.value_residual_lambdas": np.array([[0.0, 1.0]], np.float32)}
    np.testing.assert_allclose(reference_logits(cfg, wv, IDS), plain, atol=1e-12)
    assert np.abs(reference_logits(cfg, {**wv, "model.value_residual_lambdas": np.array([[0.5, 0.5]], np.float32)},
                                   IDS) - plain).max() > 1e-3


def test_gate_saturated_open_is_the_plain_model():
    plain, w = _logits()
    cfg = tiny_config(ternary=dict(enabled=False), gated_attention=True)
    wg = dict(w)
    for i in range(2):
        wg[f"model.layers.{i}.self_attn.attn_gate.weight"] = np.zeros((4, 64), np.float32)
        wg[f"model.layers.{i}.self_attn.attn_gate.bias"] = np.full(4, 60.0, np.float32)  # sigmoid = 1 - 1e-26
    np.testing.assert_allclose(reference_logits(cfg, wg, IDS), plain, atol=1e-12)
    wg["model.layers.1.self_attn.attn_gate.bias"] = np.array([60.0, -60.0, 60.0, 60.0], np.float32)  # head 1 shut
    assert np.abs(reference_logits(cfg, wg, IDS) - plain).max() > 1e-3


def test_ln_scale_damping_leaves_layer_0_alone():
    plain, w = _logits(num_hidden_layers=1)
    damped, _ = _logits(w, num_hidden_layers=1, ln_scale_damping=True)
    np.testing.assert_allclose(damped, plain, atol=1e-12)
    two, w2 = _logits()
    assert np.abs(_logits(w2, ln_scale_damping=True)[0] - two).max() > 1e-3


def test_xsa_output_is_orthogonal_to_its_own_value_and_grouped_like_repeat_kv():
    rng = np.random.default_rng(5)
    o, v = rng.standard_normal((2, 4, 5, 8)), rng.standard_normal((2, 2, 5, 8))
    out = exclusive_attention(o, v)
    for h in range(4):  # query head h reads kv head h // 2
        np.testing.assert_allclose(np.sum(out[:, h] * v[:, h // 2], axis=-1), 0.0, atol=1e-12)
        np.testing.assert_allclose(out[:, h] + np.sum(o[:, h] * v[:, h // 2], -1, keepdims=True)
                                   * v[:, h // 2] / np.sum(v[:, h // 2] ** 2, -1, keepdims=True), o[:, h], atol=1e-12)
    assert np.array_equal(exclusive_attention(o, np.zeros_like(v)), o)  # a zero value vector removes nothing
    plain, w = _logits()
    assert np.abs(_logits(w, xsa_last_n=1)[0] - plain).max() > 1e-3


def test_partial_rope_rotates_the_first_dims_as_a_narrower_head():
    x = np.random.default_rng(6).standard_normal((1, 2, 9, 16))
    out = rope(x, 10000.0, None, 8)
    assert np.array_equal(out[..., 8:], x[..., 8:])
    np.testing.assert_array_equal(out[..., :8], rope(x[..., :8], 10000.0))
    np.testing.assert_array_equal(rope(x, 10000.0, 2.0, 16), rope(x, 10000.0, 2.0))
    # the frequencies are theta^(-2j/8) over the 8 rotary dims: pair 1 at position 1 turns by 100^-1
    angle = np.arctan2(out[0, 0, 1, 5], out[0, 0, 1, 1]) - np.arctan2(x[0, 0, 1, 5], x[0, 0, 1, 1])
    assert np.isclose(np.mod(angle, 2 * np.pi), 10000.0 ** (-2 / 8))
    plain, w = _logits()
    assert np.abs(_logits(w, partial_rotary_factor=0.5)[0] - plain).max() > 1e-3


def test_hf_config_partial_rotary_factor_is_read_at_top_level_and_in_rope_parameters():
    """transformers >= 5 moves the key into rope_parameters; dropping it there would be a silent full RoPE."""
    assert model_config_from_hf({"model_type": "qwen3", "partial_rotary_factor": 0.5}).partial_rotary_factor == 0.5
    nested = {"model_type": "qwen3", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                         "partial_rotary_factor": 0.25}}
    assert model_config_from_hf(nested).partial_rotary_factor == 0.25
    assert model_config_from_hf({"model_type": "qwen3"}).partial_rotary_factor == 1.0
