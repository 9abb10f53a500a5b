"""`convert --to packed` and the stock exports' refusals on a model with depth recurrence, stochastic
depth and experts (issue #11). Tolerance as in tests/convert/test_export.py (fp16 floats)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convert.cli import main
from convert.formats import packed as export
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import RunConfig
from shared.spec.params import ternary_parameters
from shared.spec.ternary import quantize
from ternary_cuda.checkpoint import save
from ternary_cuda.model import Model
from tests.variants import TINY, tiny_sets

TOL = 25 * 2.0 ** -11
DEPTH_EXPERTS = dict(num_hidden_layers=3, num_unique_layers=2, stochastic_depth=0.2, moe_num_experts=3, moe_top_k=2)
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16))


def _ckpt(path, **model):
    cfg = RunConfig().with_overrides(tiny_sets(**{**DEPTH_EXPERTS, **model}))
    model_ = Model(cfg, seed=0)
    save(model_, cfg, path)
    return cfg, model_


def _logits(model):
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).numpy()


def test_packed_roundtrip_keeps_the_experts_codes_and_the_logits(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck")
    names = ternary_parameters(cfg)
    assert "model.layers.1.mlp.experts.2.down_proj.weight" in names and "model.layers.2.mlp.up_proj.weight" not in names
    out = tmp_path / "m.tpk"
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(out), "--floats", "fp16"]) == 0
    _, latent = read_checkpoint(tmp_path / "ck")
    cfg2, parts = export.read_packed(out, dequantize_floats=False)
    assert cfg2.to_dict() == cfg.to_dict()
    for name in names:
        codes, _ = quantize(latent[name], cfg.ternary.group_size, cfg.ternary.eps)
        np.testing.assert_array_equal(parts[name][0], codes)
    ref = _logits(model)
    c, w = export.load_packed(out)
    assert np.abs(_logits(Model(export.effective_config(c), w)) - ref).max() <= TOL * np.abs(ref).max()


@pytest.mark.parametrize("fmt", ["hf", "mlx-lm", "hf-bitnet", "gguf"])
def test_stock_exports_refuse_recurrence_and_experts_by_name(tmp_path, capsys, fmt):
    _ckpt(tmp_path / "ck")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), "--to", fmt, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ternary: error:") and not (tmp_path / "x").exists()
    for key in ("num_unique_layers", "moe_num_experts", "moe_top_k"):
        assert f"model.{key} = " in err, (key, err)
    assert "model.stochastic_depth" not in err  # training only: the exported forward is the same
