"""`inspect`, `convert --to packed|canonical` and the stock exports' refusals on a model with the
ternary record's options (a factored tied embedding: its float matrices embed_tokens (vocab,
embed_dim), embed_proj and embed_proj_rev come from float_matrices(cfg); a vocab bias, the
polynomial soft-cap, ramped RoPE, norms before the output projections).

Tolerances as in tests/convert/test_export.py. The int8 budget there counts two uses of float
matrices at 2 * 2^-7.99 each; this model has four (the embedding twice, embed_proj, embed_proj_rev),
so twice that: TOL + 8 / 254 ~ 4.4e-2 of max|logits| (measured: 2.3e-2, and 1.5e-3 with fp16, torch).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convert.cli import main
from convert.formats import inspect_ckpt
from convert.formats import packed as export
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import RunConfig
from shared.spec.params import float_matrices, ternary_parameters
from shared.spec.ternary import quantize
from ternary_cuda.checkpoint import save
from ternary_cuda.model import Model
from tests.variants import TINY, tiny_sets

TOL = 25 * 2.0 ** -11
TOL_INT8 = TOL + 8 / 254
RECORD = dict(embed_dim=32, vocab_bias=True, final_logit_softcapping=10.0, final_logit_softcapping_type="poly",
              rope_ramp_factor=2.0, out_proj_norm=True, hidden_act="relu2", qk_gain=2.25)
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16))


def _ckpt(path, **model):
    cfg = RunConfig().with_overrides(tiny_sets(**{**RECORD, **model}))
    model_ = Model(cfg, seed=0)
    with torch.no_grad():  # a non-zero bias, so a dropped or misplaced one shows
        model_.model.vocab_bias.copy_(torch.linspace(-1, 1, cfg.model.vocab_size))
    save(model_, cfg, path)
    return cfg, model_


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).numpy()


@pytest.mark.parametrize("floats", ["fp16", "int8"])
def test_packed_roundtrip_of_a_factored_model(tmp_path, floats):
    cfg, model = _ckpt(tmp_path / "ck")
    assert float_matrices(cfg) == ["model.embed_tokens.weight", "model.embed_proj.weight",
                                   "model.embed_proj_rev.weight"]
    out = tmp_path / "m.tpk"
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(out), "--floats", floats]) == 0
    _, latent = read_checkpoint(tmp_path / "ck")
    cfg2, parts = export.read_packed(out, dequantize_floats=False)
    assert cfg2.to_dict() == cfg.to_dict()
    for name in ternary_parameters(cfg):
        q, s = quantize(latent[name], cfg.ternary.group_size, cfg.ternary.eps)
        np.testing.assert_array_equal(parts[name][0], q)
    if floats == "int8":  # every float matrix, the factored embedding's included, as int8 rows
        for name in float_matrices(cfg):
            q, s = parts[name]
            assert q.dtype == np.int8 and q.shape == latent[name].shape and s.shape == (latent[name].shape[0],)
    ref = _logits(model)
    tol = (TOL if floats == "fp16" else TOL_INT8) * np.abs(ref).max()
    c, w = export.load_packed(out)
    d1 = np.abs(_logits(Model(export.effective_config(c), w)) - ref).max()
    c, w = export.load_packed(out, form="latent")
    d2 = np.abs(_logits(Model(c, w)) - ref).max()
    assert 0 < d1 <= tol and d2 <= tol, (d1, d2, tol)


def test_canonical_roundtrip_keeps_every_tensor_and_the_logits(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck", tie_word_embeddings=False)
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "c")]) == 0
    c1, w1 = read_checkpoint(tmp_path / "ck")
    c2, w2 = read_checkpoint(tmp_path / "c")
    assert c1.to_dict() == c2.to_dict() and c2.model.embed_dim == 32
    assert sorted(w1) == sorted(w2) and "model.embed_proj.weight" in w2 and "model.embed_proj_rev.weight" not in w2
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
    np.testing.assert_array_equal(_logits(Model(c2, w2)), _logits(model))


def test_inspect_counts_the_factored_embedding_and_names_the_options(tmp_path, capsys):
    cfg, _ = _ckpt(tmp_path / "ck")
    r = inspect_ckpt.inspect(tmp_path / "ck")
    _, w = read_checkpoint(tmp_path / "ck")
    assert r["parameters"]["total"] == sum(v.size for v in w.values())
    assert r["parameters"]["by_role"]["embedding"] == 256 * 32
    ternary_matrices = sum(w[n].size for n in ternary_parameters(cfg))
    assert r["parameters"]["by_role"]["matrix"] == ternary_matrices + 2 * 64 * 32  # + embed_proj, embed_proj_rev
    assert r["parameters"]["by_role"]["control"] == 256 + 2 * 4  # vocab_bias, q_gain
    assert r["config"]["options"] == {"hidden_act": "relu2", "qk_gain": 2.25, "final_logit_softcapping": 10.0,
                                      "embed_dim": 32, "vocab_bias": True, "final_logit_softcapping_type": "poly",
                                      "rope_ramp_factor": 2.0, "out_proj_norm": True}
    assert main(["inspect", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "  options:    hidden_act='relu2', qk_gain=2.25, final_logit_softcapping=10.0, embed_dim=32," in out
    assert main(["inspect", str(tmp_path / "ck"), "--json", "--no-measure"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["options"]["embed_dim"] == 32


def test_inspect_of_a_default_model_has_no_options_line(tmp_path, capsys):
    cfg = RunConfig().with_overrides(tiny_sets())
    save(Model(cfg, seed=0), cfg, tmp_path / "ck")
    assert inspect_ckpt.inspect(tmp_path / "ck")["config"]["options"] == {}
    assert main(["inspect", str(tmp_path / "ck")]) == 0
    assert "options:" not in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["hf", "mlx-lm", "hf-bitnet", "gguf"])
def test_stock_exports_refuse_the_record_options_by_name(tmp_path, capsys, fmt):
    _ckpt(tmp_path / "ck", hidden_act="silu", qk_gain=None)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), "--to", fmt, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ternary: error:") and not (tmp_path / "x").exists()
    for key in ("embed_dim", "vocab_bias", "final_logit_softcapping_type", "rope_ramp_factor", "out_proj_norm"):
        assert f"model.{key} = " in err, (key, err)
