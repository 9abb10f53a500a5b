"""`ternary inspect` (convert/formats/inspect_ckpt.py) on a tiny torch checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from convert.formats import packed as export

from convert.formats import inspect_ckpt, packed_estimate
from convert.formats.packed_estimate import ESTIMATE_TOLERANCE, SAMPLE_BYTES, PackedEstimate
from convert.cli import main
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import RunConfig
from shared.spec.params import parameter_specs, ternary_parameters
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
    r = inspect_ckpt.inspect(tmp_path / "ck", packed="measure")
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
    assert s["packed_base3"] == (tmp_path / "m.tpk").stat().st_size and s["packed_base3_detail"]["measured"]
    assert export.read_header(tmp_path / "m.tpk")[0]["compress"] == "lzma"  # auto: a small payload is lzma
    export.to_packed(tmp_path / "ck", tmp_path / "m8.tpk", floats="int8")
    assert s["packed_base3_int8"] == (tmp_path / "m8.tpk").stat().st_size < s["packed_base3"]


def test_inspect_cli_text_and_json(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    assert main(["inspect", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "manifest:   OK" in out and "entropy" in out and "(estimated, lzma (xz 9e)" in out
    assert main(["inspect", str(tmp_path / "ck"), "--json", "--no-measure"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["manifest"] == "OK" and "packed_base3" not in r["sizes_bytes"]
    assert main(["inspect", str(tmp_path / "ck"), "--measure"]) == 0
    assert "(measured, lzma (xz 9e)" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "ck"), "--measure", "--no-measure"]) == 2
    assert "exclude each other" in capsys.readouterr().err


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


def _estimate(cfg, weights, floats, compress, sample_bytes):
    est = PackedEstimate(cfg, floats, compress, sample_bytes)
    for name in parameter_specs(cfg.model):
        est.add(name, weights[name])
    return est.result()


@pytest.mark.parametrize("extra", [[], ["model.tie_word_embeddings=false"]])
def test_packed_estimate_within_tolerance_of_the_file(tmp_path, extra):
    """The estimate against the file `convert --to packed` writes, for every codec, both float modes,
    unsampled (the default budget holds these models whole: exact) and sampled (4 and 16 KB budgets:
    within ESTIMATE_TOLERANCE)."""
    cfg = _ckpt(tmp_path / "ck", extra)
    _, w = read_checkpoint(tmp_path / "ck")
    for floats in ("fp16", "int8"):
        for compress in ("lzma", "zstd", "none"):
            blob, st = export.pack(cfg, w, compress, floats=floats)
            for sample in (SAMPLE_BYTES, 4096, 16384):
                e = _estimate(cfg, w, floats, compress, sample)
                assert e["raw_payload_bytes"] == st.raw_payload and e["header_bytes"] == st.header_bytes
                sampled = min(e["sampled"].values()) < 1
                assert sampled == (sample < SAMPLE_BYTES) or sample == 16384  # 4 KB always samples this model
                if compress == "none" or not sampled:  # nothing estimated: the file's size exactly
                    assert e["bytes"] == len(blob), (floats, compress, sample)
                assert abs(e["bytes"] - len(blob)) <= ESTIMATE_TOLERANCE * len(blob), (floats, compress, sample)


def test_inspect_estimates_without_building_the_file(tmp_path, monkeypatch):
    """The default report compresses samples, never the whole payload (that is --measure)."""
    cfg = _ckpt(tmp_path / "ck")
    calls = []
    real = packed_estimate.compress_payload
    monkeypatch.setattr(packed_estimate, "compress_payload", lambda raw, *a: calls.append(len(raw)) or real(raw, *a))
    monkeypatch.setattr(export, "pack", lambda *a, **k: pytest.fail("inspect built the packed file"))
    monkeypatch.setattr(packed_estimate, "SAMPLE_BYTES", 4096)
    monkeypatch.setattr(inspect_ckpt, "_estimators", lambda c: [packed_estimate.PackedEstimate(c, f, "auto", 4096)
                                                                for f in ("fp16", "int8")])
    r = inspect_ckpt.inspect(tmp_path / "ck")
    d = r["sizes_bytes"]["packed_base3_detail"]
    assert not d["measured"] and calls and max(calls) <= 4096 + 64 * len(parameter_specs(cfg.model))
    assert d["raw_payload_bytes"] > max(calls)
