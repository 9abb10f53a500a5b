"""Issue #11's attention options through `convert`: the stock exports refuse each by name (Qwen3 and
Llama rotate the whole head and have no value residual, XSA, gate or depth damping), packed keeps the
float gate and the value-residual mixes and gives back the logits (tolerance as in
tests/convert/test_export_record_options.py, fp16 floats)."""
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
ATTENTION = dict(value_residual=True, xsa_last_n=1, gated_attention=True, ln_scale_damping=True,
                 partial_rotary_factor=0.5)
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16))


def _ckpt(path, **model):
    cfg = RunConfig().with_overrides(tiny_sets(**model))
    model_ = Model(cfg, seed=0)
    with torch.no_grad():  # gates and mixes away from their init, so a dropped or misplaced one shows
        for i, layer in enumerate(model_.model.layers):
            if cfg.model.gated_attention:
                layer.self_attn.attn_gate.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(i))
        if cfg.model.value_residual:
            model_.model.value_residual_lambdas.copy_(torch.tensor([[0.8, 0.3]]))
    save(model_, cfg, path)
    return cfg, model_


def _logits(model):
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).numpy()


@pytest.mark.parametrize("fmt", ["hf", "mlx-lm", "hf-bitnet", "gguf"])
def test_stock_exports_refuse_each_attention_option_by_name(tmp_path, capsys, fmt):
    _ckpt(tmp_path / "ck", **ATTENTION)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), "--to", fmt, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ternary: error:") and not (tmp_path / "x").exists()
    for key in ATTENTION:
        assert f"model.{key} = " in err, (key, err)


def test_hf_export_of_full_rotary_is_not_refused_for_it(tmp_path, capsys):
    _ckpt(tmp_path / "ck", partial_rotary_factor=1.0)
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0


def test_packed_roundtrip_keeps_the_gate_and_mixes(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck", **ATTENTION)
    out = tmp_path / "m.tpk"
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(out)]) == 0
    _, latent = read_checkpoint(tmp_path / "ck")
    cfg2, parts = export.read_packed(out, dequantize_floats=False)
    assert cfg2.to_dict() == cfg.to_dict()
    assert not any("attn_gate" in n or "lambdas" in n for n in ternary_parameters(cfg))
    for name in ternary_parameters(cfg):
        codes, _ = quantize(latent[name], cfg.ternary.group_size, cfg.ternary.eps)
        np.testing.assert_array_equal(parts[name][0], codes)
    ref = _logits(model)
    c, w = export.load_packed(out)
    np.testing.assert_allclose(w["model.value_residual_lambdas"], [[0.8, 0.3]], atol=1e-3)
    d = np.abs(_logits(Model(export.effective_config(c), w)) - ref).max()
    assert 0 < d <= TOL * np.abs(ref).max(), d
