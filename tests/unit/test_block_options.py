"""parameter-golf's block options (shared/spec/options.py): parameters, init, refusals, and fused
projections that compute the unfused math. Logits of every variant row against the reference are in
tests/parity; here: what a row cannot show."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.config import ConfigError
from shared.spec.init import init_weights
from shared.spec.params import parameter_specs
from shared.spec.reference_model import reference_logits
from ternary_cuda.model import Model as TorchModel
from ternary_mlx.model import Model as MLXModel
from tests.parity.helpers import mlx_logits, torch_logits, varied_weights
from tests.parity.test_gradients import mlx_grads, torch_grads
from tests.variants import tiny_config

TORCH_RMS_EPS = 1.1920929e-07  # torch.finfo(torch.float32).eps: F.rms_norm's eps without one given
NORM_GAINS = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
              "self_attn.k_norm.weight", "self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight")


def pg_baseline_like(**extra):
    """parameter-golf's baseline GPT as options (train_gpt.py: 9 layers at 512; here tiny, an odd
    number of layers so that the last decoder layer gets no skip)."""
    model = dict(num_hidden_layers=5, rms_norm_weights=False, embed_norm=True, unet_skips=True, residual_mix=True,
                 branch_scales=True, hidden_act="relu2", qk_gain=1.5, final_logit_softcapping=30.0,
                 tie_word_embeddings=True, zero_init_output_proj=True, embed_init_std=0.005, rms_norm_eps=TORCH_RMS_EPS)
    return tiny_config(ternary=dict(enabled=False), **{**model, **extra})


def test_pg_baseline_like_config_builds_and_matches_the_reference():
    cfg = pg_baseline_like()
    specs = parameter_specs(cfg.model)
    layer0 = sorted(n.removeprefix("model.layers.0.") for n in specs if n.startswith("model.layers.0."))
    assert layer0 == ["attn_scale", "mlp.down_proj.weight", "mlp.up_proj.weight", "mlp_scale", "resid_mix",
                      "self_attn.k_proj.weight", "self_attn.o_proj.weight", "self_attn.q_gain",
                      "self_attn.q_proj.weight", "self_attn.v_proj.weight"]
    assert sorted(n for n in specs if not n.startswith("model.layers.")) == ["model.embed_tokens.weight",
                                                                             "model.skip_weights"]
    assert specs["model.skip_weights"].shape == (2, 64) and specs["model.skip_weights"].role == "control"
    w0 = init_weights(cfg.model, seed=1)
    assert not w0["model.layers.3.self_attn.o_proj.weight"].any()
    assert not w0["model.layers.3.mlp.down_proj.weight"].any()
    assert abs(w0["model.embed_tokens.weight"].std() / 0.005 - 1) < 0.05
    ids = np.random.default_rng(4).integers(0, 256, (2, 33))
    for cls, run in ((MLXModel, mlx_logits), (TorchModel, torch_logits)):
        model = cls(cfg, seed=1)
        assert sorted(model.numpy_weights()) == sorted(specs)
        w = varied_weights(cfg, model.numpy_weights(), np.random.default_rng(2))
        # an embedding at std 0.1, not 0.005: tied logits of a tiny embedding are too small to tell
        w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] * np.float32(20.0)
        model.load_numpy(w)
        got, want = run(model, ids), reference_logits(cfg, w, ids)
        assert np.abs(want).max() > 0.5
        assert np.abs(got - want).max() < 1e-5, cls


def test_weightless_norms_are_unit_gains():
    """rms_norm_weights = false removes every gain the model has (q/k-norm, SubLN included) and
    computes what unit gains compute; the reference reads no gain tensor."""
    cfg_w = tiny_config(subln=True, ternary=dict(group_size=64))
    cfg_0 = tiny_config(subln=True, rms_norm_weights=False, ternary=dict(group_size=64))
    with_gains, without = init_weights(cfg_w.model, seed=2), parameter_specs(cfg_0.model)
    removed = sorted(set(with_gains) - set(without))
    assert set(without) < set(with_gains)
    assert removed == sorted(n for n in with_gains if n == "model.norm.weight" or n.endswith(NORM_GAINS))
    ids = np.random.default_rng(0).integers(0, 256, (2, 9))
    kept = {k: with_gains[k] for k in without}
    for lam in (1.0, 0.5):
        np.testing.assert_array_equal(reference_logits(cfg_0, kept, ids, lam),
                                      reference_logits(cfg_w, with_gains, ids, lam))
        m = MLXModel(cfg_0, kept)
        m.set_quant_lambda(lam)
        assert np.abs(mlx_logits(m, ids) - reference_logits(cfg_w, with_gains, ids, lam)).max() < 1e-5


def test_init_rules_of_the_new_parameters():
    m = tiny_config(num_hidden_layers=4, unet_skips=True, residual_mix=True, branch_scales=True).model
    w = init_weights(m, seed=0)
    mix = w["model.layers.2.resid_mix"]
    assert mix.shape == (2, 64) and (mix[0] == 1).all() and (mix[1] == 0).all()
    assert (w["model.layers.3.attn_scale"] == 1).all() and (w["model.layers.0.mlp_scale"] == 1).all()
    assert w["model.skip_weights"].shape == (2, 64) and (w["model.skip_weights"] == 1).all()
    odd = parameter_specs(tiny_config(num_hidden_layers=3, unet_skips=True).model)
    assert odd["model.skip_weights"].shape == (1, 64)  # min(3 // 2, 3 - 3 // 2)


def test_init_edits_keep_every_other_stream():
    """Zero init and the embedding std change those tensors only: every other initial weight is
    bit-identical to the config without them (each tensor's stream is keyed by its position)."""
    base = init_weights(tiny_config(tie_word_embeddings=False).model, seed=3)
    edited = init_weights(tiny_config(tie_word_embeddings=False, zero_init_output_proj=True, zero_init_lm_head=True,
                                      embed_init_std=0.05).model, seed=3)
    assert list(base) == list(edited)
    zeroed = {n for n in base if n.endswith(("o_proj.weight", "down_proj.weight")) or n == "lm_head.weight"}
    assert len(zeroed) == 5
    for n in base:
        if n in zeroed:
            assert not edited[n].any(), n
        elif n == "model.embed_tokens.weight":  # the same draws at another scale
            np.testing.assert_allclose(edited[n], base[n] / np.float32(0.1) * np.float32(0.05), rtol=1e-6)
        else:
            assert np.array_equal(base[n], edited[n]), n


@pytest.mark.parametrize("overrides,match", [
    (dict(zero_init_lm_head=True), "model.zero_init_lm_head: the head is tied"),
    (dict(fused_gate_up=True, hidden_act="relu2"), "model.fused_gate_up: needs hidden_act silu"),
    (dict(leaky_relu_slope=0.2), "model.leaky_relu_slope: applies to hidden_act leaky_relu"),
    (dict(leaky_relu_slope=1.5, hidden_act="leaky_relu"), r"model.leaky_relu_slope: must be in \(0, 1\)"),
    (dict(unet_skips=True, num_hidden_layers=1), "model.unet_skips: needs model.num_hidden_layers >= 2"),
    (dict(embed_init_std=0.0), "model.embed_init_std: must be positive"),
    (dict(hidden_act="gelu"), "model.hidden_act.*leaky_relu2"),
])
def test_refusals_name_the_option(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)


FUSED_CASES = {"G64": dict(group_size=64), "pertensor": dict(group_size=0),
               "act8-G32": dict(group_size=32, activation_bits=8), "float": dict(enabled=False)}


@pytest.mark.parametrize("ternary", FUSED_CASES.values(), ids=list(FUSED_CASES))
def test_fused_projections_compute_the_unfused_model(ternary):
    """fused_qkv / fused_gate_up: same parameters, same logits and gradients (each part keeps its
    own scales: at group_size 0 the concatenation is not one tensor with one scale)."""
    plain = tiny_config(ternary=ternary)
    fused = tiny_config(ternary=ternary, fused_qkv=True, fused_gate_up=True)
    assert parameter_specs(plain.model) == parameter_specs(fused.model)
    w = varied_weights(plain, init_weights(plain.model, seed=4), np.random.default_rng(5))
    ids = np.random.default_rng(6).integers(0, 256, (2, 17))
    for cls, run, grads in ((MLXModel, mlx_logits, mlx_grads), (TorchModel, torch_logits, torch_grads)):
        a, b = cls(plain, w), cls(fused, w)
        la, lb = run(a, ids), run(b, ids)
        assert np.abs(la).max() > 0.5
        # a BLAS may block one concatenated matmul differently from three: 2.9e-6 measured with
        # Debian's OpenBLAS preloaded for MLX (CI); a shared scale would move weights by > 0.01
        assert np.abs(la - lb).max() < 1e-5, cls
        (loss_a, ga), (loss_b, gb) = grads(a, ids), grads(b, ids)
        assert abs(loss_a - loss_b) < 1e-5 and sorted(ga) == sorted(gb)
        for k in ga:
            assert np.abs(ga[k] - gb[k]).max() <= 1e-5 * np.abs(ga[k]).max(), (cls, k)


def test_one_scale_for_the_concatenation_would_differ():
    """The check above can tell: at group_size 0, quantizing q/k/v as one tensor (one scale) changes
    the logits, so a fused path that did that would fail it."""
    from shared.spec import ternary as T
    cfg = tiny_config(ternary=dict(group_size=0))
    w = init_weights(cfg.model, seed=4)
    p = "model.layers.0.self_attn."
    parts = [w[p + n + "_proj.weight"] * s for n, s in (("q", 1.0), ("k", 3.0), ("v", 0.3))]
    one = T.dequantize(*T.quantize(np.concatenate(parts), 0), 0)
    own = np.concatenate([T.dequantize(*T.quantize(x, 0), 0) for x in parts])
    assert np.abs(one - own).max() > 0.01


def test_model_options_reach_both_backends_the_same_way():
    """The pg block in MLX and torch from the same seed: identical parameter trees and close logits
    (a second check of the twins on the option the variant table's rows combine)."""
    cfg = pg_baseline_like(tie_word_embeddings=False, zero_init_lm_head=True)
    a, b = MLXModel(cfg, seed=8), TorchModel(cfg, seed=8)
    wa, wb = a.numpy_weights(), b.numpy_weights()
    assert sorted(wa) == sorted(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not wa["lm_head.weight"].any()
    w = varied_weights(cfg, wa, np.random.default_rng(9))
    a.load_numpy(w)
    b.load_numpy(w)
    ids = np.random.default_rng(1).integers(0, 256, (2, 20))
    assert np.abs(mlx_logits(a, ids) - torch_logits(b, ids)).max() < 1e-5


def test_init_and_speed_options_export_to_hf_and_weightless_norms_are_refused(tmp_path, capsys):
    """Options that change only the initialisation or the speed are expressible everywhere: the hf
    export writes the model's tensors as they are. A weightless model is refused by name."""
    from safetensors.numpy import load_file

    from convert.cli import main
    from shared.spec.checkpoint import write_checkpoint
    cfg = tiny_config(ternary=dict(enabled=False), tie_word_embeddings=False, fused_qkv=True, fused_gate_up=True,
                      zero_init_output_proj=True, zero_init_lm_head=True, embed_init_std=0.05)
    w = varied_weights(cfg, init_weights(cfg.model, seed=0), np.random.default_rng(0))
    write_checkpoint(tmp_path / "ck", cfg, w, writer={"backend": "test"})
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0, \
        capsys.readouterr().err
    exported = {}
    for f in sorted((tmp_path / "hf").glob("*.safetensors")):
        exported.update(load_file(str(f)))
    assert sorted(exported) == sorted(w) and all(np.array_equal(exported[k], w[k]) for k in w)

    bare = tiny_config(ternary=dict(enabled=False), rms_norm_weights=False)
    write_checkpoint(tmp_path / "bare", bare, init_weights(bare.model, seed=0), writer={"backend": "test"})
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "bare"), "--to", "hf", "--out", str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "model.rms_norm_weights = False" in err and err.startswith("ternary: error:")
    assert not (tmp_path / "hf2").exists()
