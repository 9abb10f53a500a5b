"""`ternary inspect` (convert/formats/inspect_ckpt.py) on a tiny torch checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np

from convert.formats import packed as export

from convert.formats import inspect_ckpt
from convert.cli import main
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import RunConfig
from shared.spec.params import ternary_parameters
from shared.spec.ternary import quantize
from ternary_cuda.checkpoint import save
from tests.variants import tiny_sets
from ternary_cuda.model import Model

BASE = tiny_sets()


def _ckpt(path, extra=()):
    cfg = RunConfig().with_overrides(BASE + list(extra))
    save(Model(cfg, seed=0), cfg, path)
    return cfg


def test_inspect_report_matches_reference(tmp_path):
    cfg = _ckpt(tmp_path / "ck")
    r = inspect_ckpt.inspect(tmp_path / "ck")
    assert r["manifest"] == "OK"
    assert r["config"]["layers"] == 2 and r["config"]["group_size"] == 32 and r["config"]["ternary"]
    _, w = read_checkpoint(tmp_path / "ck")
    tern = ternary_parameters(cfg)
    assert r["parameters"]["total"] == sum(v.size for v in w.values())
    assert r["parameters"]["ternary"] == sum(w[n].size for n in tern)
    assert [x["name"] for x in r["ternary_weights"]] == tern
    counts = np.zeros(3)
    for x in r["ternary_weights"]:
        q, s = quantize(w[x["name"]], 32)
        assert math.isclose(x["codes"]["0"], float((q == 0).mean()))
        assert math.isclose(x["scale"]["max"], float(s.max()))
        counts += np.bincount(q.reshape(-1) + 1, minlength=3)
    p = counts / counts.sum()
    assert math.isclose(r["codes"]["entropy_bits_per_weight"], float(-(p * np.log2(p)).sum()), rel_tol=1e-9)
    s = r["sizes_bytes"]
    n, nt = r["parameters"]["total"], r["parameters"]["ternary"]
    assert s["float32"] == 4 * n and s["bf16"] == 2 * n
    assert s["packed_2bit"] == nt // 4 + 2 * sum(x["scale"]["count"] for x in r["ternary_weights"]) + 2 * (n - nt)
    export.to_packed(tmp_path / "ck", tmp_path / "m.tpk")
    assert s["packed_base3_lzma"] == (tmp_path / "m.tpk").stat().st_size
    export.to_packed(tmp_path / "ck", tmp_path / "m8.tpk", floats="int8")
    assert s["packed_base3_int8_lzma"] == (tmp_path / "m8.tpk").stat().st_size < s["packed_base3_lzma"]


def test_inspect_cli_text_and_json(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    assert main(["inspect", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "manifest:   OK" in out and "entropy" in out and "LZMA" in out
    assert main(["inspect", str(tmp_path / "ck"), "--json", "--no-measure"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["manifest"] == "OK" and "packed_base3_lzma" not in r["sizes_bytes"]


def test_inspect_reports_damage(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    b = bytearray(f.read_bytes()); b[-1] ^= 1; f.write_bytes(bytes(b))
    assert main(["inspect", str(tmp_path / "ck")]) == 2
    assert "ERROR:" in capsys.readouterr().out and "sha256" in f"{inspect_ckpt.inspect(tmp_path / 'ck')['manifest']}"
    assert main(["inspect", str(tmp_path / "nope")]) == 2


def test_inspect_float_model(tmp_path, capsys):
    _ckpt(tmp_path / "ck", ["ternary.enabled=false"])
    r = inspect_ckpt.inspect(tmp_path / "ck")
    assert r["parameters"]["ternary"] == 0 and r["ternary_weights"] == []
    assert main(["inspect", str(tmp_path / "ck")]) == 0
    assert "ternary off" in capsys.readouterr().out
