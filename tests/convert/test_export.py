"""`ternary convert --to canonical|packed` (convert/export.py) on tiny torch models (CPU).

Tolerance of the logits check: the packed file keeps the codes exactly and rounds each scale to
fp16 (normal range, so relative error <= 2^-11) and each float parameter (norm gains, the tied
embedding) to fp16 (same bound). Every weight the forward pass uses therefore moves by at most
2^-11 relative; to first order the logits move by at most (number of weights on the path) * 2^-11
relative to their magnitude. Per layer that is 7 projections + 4 norms; with 2 layers, the
embedding, the final norm and the head, about 25 * 2^-11 ~ 1.2e-2, and errors of independent
signs add far less. We assert max|dlogits| <= 2^-11 * 25 * max|logits|, and that it is not exactly
zero where scales were rounded (so the test would notice fp32 scales sneaking in).
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from convert import export
from convert.cli import main
from shared.checkpoint import read_checkpoint
from shared.config import RunConfig
from shared.naming import parameter_shapes, ternary_parameters
from shared.ternary import quantize
from ternary_cuda.checkpoint import save
from ternary_cuda.model import Model

BASE = ["model.vocab_size=128", "model.hidden_size=64", "model.intermediate_size=128",
        "model.num_hidden_layers=2", "ternary.group_size=32"]
TOL = 25 * 2.0 ** -11


def _ckpt(path, extra=(), with_state=False):
    cfg = RunConfig().with_overrides(BASE + list(extra))
    model = Model(cfg, seed=0)
    kw = {}
    if with_state:
        w = model.numpy_weights()
        kw = dict(optimizer_state={k + ".m": np.zeros_like(v) for k, v in w.items()},
                  optimizer_meta={"step": 3}, trainer_state={"step": 3})
    save(model, cfg, path, **kw)
    return cfg, model


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).numpy()


IDS = np.random.default_rng(0).integers(0, 128, size=(2, 16))


@pytest.mark.parametrize("extra", [[], ["model.tie_word_embeddings=false", "ternary.targets=[\"attn\",\"mlp\",\"lm_head\"]"],
                                   ["ternary.group_size=0", "model.hidden_act=relu2"]],
                         ids=["grouped-tied", "untied-head-ternary", "per-tensor-relu2"])
def test_packed_roundtrip_codes_and_logits(tmp_path, extra):
    cfg, model = _ckpt(tmp_path / "ck", extra)
    out = tmp_path / "m.tpk"
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(out)]) == 0
    _, latent = read_checkpoint(tmp_path / "ck")
    cfg2, parts = export.read_packed(out)
    assert cfg2.to_dict() == cfg.to_dict()
    for name in ternary_parameters(cfg):  # codes bit-exact, scales = fp16 of the reference scales
        q, s = quantize(latent[name], cfg.ternary.group_size, cfg.ternary.eps)
        np.testing.assert_array_equal(parts[name][0], q)
        np.testing.assert_array_equal(parts[name][1], s.astype(np.float16).astype(np.float32))
    ref = _logits(model, IDS)
    tol = TOL * np.abs(ref).max()
    # dequantized weights + ternary off
    c, w = export.load_packed(out)
    d1 = np.abs(_logits(Model(export.effective_config(c), w), IDS) - ref).max()
    # latent weights + the original config (projection re-applied)
    c, w = export.load_packed(out, form="latent")
    d2 = np.abs(_logits(Model(c, w), IDS) - ref).max()
    assert d1 <= tol and d2 <= tol, (d1, d2, tol)
    assert d1 > 0  # fp16 scales do change the result a little


def test_packed_activation_bits_needs_latent_form(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck", ["ternary.activation_bits=8"])
    export.to_packed(tmp_path / "ck", tmp_path / "m.tpk")
    c, w = export.load_packed(tmp_path / "m.tpk")
    with pytest.raises(Exception, match="activation"):
        export.effective_config(c)
    c, w = export.load_packed(tmp_path / "m.tpk", form="latent")
    ref = _logits(model, IDS)
    # an fp16-rounded scale can move an activation across an 8-bit rounding boundary: a looser bar
    assert np.abs(_logits(Model(c, w), IDS) - ref).max() <= 0.05 * np.abs(ref).max()


def test_packed_sizes_and_uncompressed(tmp_path, capsys):
    cfg, _ = _ckpt(tmp_path / "ck")
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(tmp_path / "a.tpk")]) == 0
    text = capsys.readouterr().out
    assert "bits each" in text and "codes alone" in text
    st_none = export.to_packed(tmp_path / "ck", tmp_path / "b.tpk", compress="none")
    st_lzma = export.to_packed(tmp_path / "ck", tmp_path / "a.tpk", compress="lzma", force=True)
    n = st_lzma.ternary_weights
    assert n == sum(np.prod(s) for k, s in parameter_shapes(cfg.model).items()
                    if k in ternary_parameters(cfg))
    assert st_none.codes_bytes == sum((int(np.prod(s)) + 4) // 5 for k, s in
                                      parameter_shapes(cfg.model).items()
                                      if k in ternary_parameters(cfg))
    assert st_lzma.bytes < st_none.bytes == (tmp_path / "b.tpk").stat().st_size
    assert 1.58 < st_none.code_bits_per_weight < 1.61
    # both load to the same weights
    for (k, a), b in zip(export.load_packed(tmp_path / "a.tpk")[1].items(), export.load_packed(tmp_path / "b.tpk")[1].values()):
        np.testing.assert_array_equal(a, b)


def test_packed_refuses_to_overwrite(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    (tmp_path / "x.tpk").write_bytes(b"keep")
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(tmp_path / "x.tpk")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "x.tpk").read_bytes() == b"keep"


def _damage(blob: bytes, how: str) -> bytes:
    hl = struct.unpack("<Q", blob[8:16])[0]
    if how == "magic":
        return b"XXXXXXX\n" + blob[8:]
    if how == "truncated-header":
        return blob[:16 + hl // 2]
    if how == "truncated-payload":
        return blob[:-10]
    if how == "flipped-payload":
        b = bytearray(blob); b[-5] ^= 0xFF; return bytes(b)
    if how == "header-json":
        b = bytearray(blob); b[20] = ord("}"); return bytes(b)
    if how == "huge-header":
        return blob[:8] + struct.pack("<Q", 1 << 40) + blob[16:]
    if how == "empty":
        return b""
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["magic", "truncated-header", "truncated-payload", "flipped-payload",
                                 "header-json", "huge-header", "empty"])
def test_damaged_packed_files_give_clean_errors(tmp_path, how):
    _ckpt(tmp_path / "ck")
    export.to_packed(tmp_path / "ck", tmp_path / "m.tpk")
    bad = tmp_path / "bad.tpk"
    bad.write_bytes(_damage((tmp_path / "m.tpk").read_bytes(), how))
    with pytest.raises(export.PackedError):
        export.load_packed(bad)


def test_consistent_checksum_but_bad_table_is_caught(tmp_path):
    """A header edited with a valid checksum (e.g. a wrong shape) still fails cleanly."""
    _ckpt(tmp_path / "ck")
    export.to_packed(tmp_path / "ck", tmp_path / "m.tpk", compress="none")
    blob = (tmp_path / "m.tpk").read_bytes()
    hl = struct.unpack("<Q", blob[8:16])[0]
    header = json.loads(blob[16:16 + hl])
    entry = next(e for e in header["tensors"] if e["kind"] == "ternary")
    entry["codes"][0] += header["raw_payload_bytes"]  # span past the payload
    hb = json.dumps(header).encode()
    (tmp_path / "bad.tpk").write_bytes(blob[:8] + struct.pack("<Q", len(hb)) + hb + blob[16 + hl:])
    with pytest.raises(export.PackedError, match="outside the payload"):
        export.load_packed(tmp_path / "bad.tpk")
    entry["codes"][0] -= header["raw_payload_bytes"]
    entry["shape"] = [1, 1]  # a shape the config does not have
    hb = json.dumps(header).encode()
    (tmp_path / "bad.tpk").write_bytes(blob[:8] + struct.pack("<Q", len(hb)) + hb + blob[16 + hl:])
    with pytest.raises(export.PackedError, match="wrong shape"):
        export.load_packed(tmp_path / "bad.tpk")


def test_canonical_drops_state_and_verifies(tmp_path, capsys):
    cfg, _ = _ckpt(tmp_path / "ck", with_state=True)
    assert (tmp_path / "ck" / "optimizer.safetensors").exists()
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "c")]) == 0
    assert "dropped optimizer.json, optimizer.safetensors, trainer_state.json" in capsys.readouterr().out
    names = sorted(f.name for f in (tmp_path / "c").iterdir())
    assert names == ["config.json", "manifest.json", "model.safetensors"]
    c1, w1 = read_checkpoint(tmp_path / "ck")
    c2, w2 = read_checkpoint(tmp_path / "c")
    assert c1.to_dict() == c2.to_dict()
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
    # existing output needs --force; a damaged source is a clean error
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "c")]) == 2
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "c"), "--force"]) == 0
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"broken")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "d")]) == 2
    assert "model.safetensors" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_option_mismatch_is_a_usage_error(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--out", str(tmp_path / "c"),
                 "--compress", "none"]) == 2
    assert "--compress" in capsys.readouterr().err


def test_ternary_disabled_packs_floats_only(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck", ["ternary.enabled=false"])
    st = export.to_packed(tmp_path / "ck", tmp_path / "m.tpk")
    assert st.ternary_weights == 0 and st.codes_bytes == 0
    c, w = export.load_packed(tmp_path / "m.tpk")
    ref = _logits(model, IDS)
    assert np.abs(_logits(Model(c, w), IDS) - ref).max() <= TOL * np.abs(ref).max()
