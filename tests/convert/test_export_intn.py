"""`ternary convert --to packed --floats int6|int5|mixed` and `--compress zstd-22`
(convert/formats/packed_codecs.py): the row rule at each bit width, the 1.1558 record's mixed rule
chosen from the parameter specs, sizes, the reader's strictness and the command line's refusals.

Bounds: a row-coded element is off by at most s / 2 with s = fp16-up(max|row| / Q) <= max|row| / Q *
(1 + 2^-10), Q = 31 (int6) or 15 (int5). A rule with the wrong Q (another bit width) or a scale
that is not the row's absmax over Q breaks either that bound or "the largest code is exactly Q"."""
from __future__ import annotations

import numpy as np
import pytest

from convert.formats import packed as export
from convert.formats.packed_codecs import float_matrix_storage, quantize_rows
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import float_matrices, parameter_specs
from tests.convert.test_export import BASE, _ckpt, _rewrite
from tests.e2e.test_train_cli import assert_user_error, run

# wide enough that attention (q/o 128 x 128) and MLP (256 x 128) matrices pass the record's
# 8192-element floor while k/v (64 x 128 = 8192) stay under it; ternary off: every matrix is float
FLOAT_WIDE = ["model.hidden_size=128", "model.intermediate_size=256", "model.tie_word_embeddings=false",
              "ternary.enabled=false"]


@pytest.mark.parametrize("kind", ["int8", "int6", "int5"])
def test_row_rule_error_bound_and_full_range(kind):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((40, 96)) * rng.uniform(0.01, 3, (40, 1))).astype(np.float32)
    w[3] = 0  # a zero row: s = 0, q = 0
    q, s = quantize_rows(w, kind, "w")
    Q = {"int8": 127, "int6": 31, "int5": 15}[kind]  # 2^(bits-1) - 1, written out: not the module's table
    s64 = s.astype(np.float64)
    amax = np.abs(w.astype(np.float64)).max(axis=1)
    assert q.dtype == np.int8 and s.dtype == np.float16 and s[3] == 0 and not q[3].any()
    assert np.abs(q).max() == Q and (np.abs(q).max(axis=1)[amax > 0] == Q).all()  # every row reaches Q
    assert (amax / Q <= s64).all() and (s64 <= amax / Q * (1 + 2.0 ** -10)).all()
    err = np.abs(q * s64[:, None] - w)
    assert (err <= s64[:, None] / 2 * (1 + 1e-6)).all()
    assert err.max() > s64.max() / 8  # really quantized to Q steps, not stored more finely


def test_mixed_rule_by_role_and_target():
    cfg = RunConfig().with_overrides(BASE + FLOAT_WIDE)
    specs = parameter_specs(cfg.model)
    got = {n: float_matrix_storage("mixed", specs[n]) for n in float_matrices(cfg)}
    L0 = "model.layers.0."
    assert got["model.embed_tokens.weight"] == "fp16"  # the record's fp16 embedding
    assert got["lm_head.weight"] == "int8"
    assert got[L0 + "self_attn.q_proj.weight"] == got[L0 + "self_attn.o_proj.weight"] == "int6"
    assert got[L0 + "self_attn.k_proj.weight"] == "fp16"  # 64 x 128 = 8192 values: the record's small floor
    assert {got[L0 + f"mlp.{p}_proj.weight"] for p in ("gate", "up", "down")} == {"int5"}
    assert {float_matrix_storage("int5", specs[n]) for n in got} == {"int5"}  # uniform modes: every matrix


def _roundtrip(tmp_path, floats, compress="none"):
    """(path, stats) of the FLOAT_WIDE model (made once per test) packed with `floats`."""
    if not (tmp_path / "ck").exists():
        _ckpt(tmp_path / "ck", FLOAT_WIDE)
    out = tmp_path / f"{floats}-{compress}.tpk"
    st = export.to_packed(tmp_path / "ck", out, floats=floats, compress=compress)
    return out, st


@pytest.mark.parametrize("floats", ["int6", "int5", "mixed"])
def test_packed_file_stores_and_loads_each_mode(tmp_path, floats):
    out, st = _roundtrip(tmp_path, floats)
    h, _ = export.read_header(out)
    assert (h["version"], h["floats"]) == (export.QUANT_VERSION, floats)
    cfg, latent = read_checkpoint(tmp_path / "ck")
    specs = parameter_specs(cfg.model)
    _, parts = export.read_packed(out, dequantize_floats=False)
    _, weights = export.load_packed(out)
    kinds = {}
    for name in float_matrices(cfg):
        kind = float_matrix_storage(floats, specs[name])
        kinds[kind] = kinds.get(kind, 0) + 1
        w = latent[name].astype(np.float64)
        if kind == "fp16":
            assert np.array_equal(weights[name], latent[name].astype(np.float16).astype(np.float32))
            continue
        q, s = parts[name]
        assert np.abs(q).max() == {"int8": 127, "int6": 31, "int5": 15}[kind]
        assert np.array_equal(weights[name], (q * s[:, None]).astype(np.float32))
        assert (np.abs(weights[name] - w) <= s[:, None].astype(np.float64) / 2 * (1 + 1e-6)).all()
    assert st.float_kinds == kinds and (floats != "mixed" or set(kinds) == {"fp16", "int8", "int6", "int5"})


def test_bytes_fall_with_the_bit_width(tmp_path):
    """zstd-22 on the same model: fewer bits per code, fewer bytes (the record's reason for int5 MLPs)."""
    b = {f: _roundtrip(tmp_path, f, "zstd-22")[1].bytes for f in ("fp16", "int8", "int6", "int5", "mixed")}
    assert b["int5"] < b["int6"] < b["int8"] < b["fp16"], b
    assert b["int5"] < b["mixed"] < b["fp16"], b
    assert export.read_header(tmp_path / "int6-zstd-22.tpk")[0]["compress"] == "zstd"  # the codec, not the level
    old = _roundtrip(tmp_path, "int8", "zstd")[0]
    assert export.read_header(old)[0]["version"] == export.VERSION  # int8 files are written as before


def test_reader_refuses_bad_codes_kinds_and_versions(tmp_path):
    src, _ = _roundtrip(tmp_path, "mixed")
    bad = tmp_path / "bad.tpk"
    h, _ = export.read_header(src)
    int5 = next(e for e in h["tensors"] if e.get("dtype") == "int5")
    int6 = next(e for e in h["tensors"] if e.get("dtype") == "int6")

    def retype(name, dtype):
        return lambda hh: next(e for e in hh["tensors"] if e["name"] == name).update(dtype=dtype)
    cases = [
        (None, lambda hh, raw: raw.__setitem__(int5["data"][0], 16), r"int5 code 16 outside \[-15, 15\]"),
        (None, lambda hh, raw: raw.__setitem__(int6["data"][0], 256 - 32), r"int6 code -32 outside \[-31, 31\]"),
        (retype(int5["name"], "int6"), None, "stored as int6, but --floats mixed stores it as int5"),
        (lambda hh: hh.update(version=3), None, "unknown float storage 'mixed' for format version 3"),
        (lambda hh: hh.update(floats="int6"), None, "embed_tokens.weight: stored as fp16, but --floats int6 stores it as int6"),
    ]
    for edit_header, edit_raw, match in cases:
        _rewrite(src, bad, edit_header, edit_raw)
        with pytest.raises(export.PackedError, match=match):
            export.read_packed(bad)
    six, _ = _roundtrip(tmp_path, "int6")
    _rewrite(six, bad, lambda hh: hh.update(version=2))
    with pytest.raises(export.PackedError, match="unknown float storage 'int6' for format version 2"):
        export.read_packed(bad)


def test_cli_mixed_zstd22_and_refusals(tmp_path):
    _ckpt(tmp_path / "ck", FLOAT_WIDE)
    ck, x = str(tmp_path / "ck"), str(tmp_path / "x.tpk")
    r = run("convert", ck, "--to", "packed", "--artifact", "pg-record", "--floats", "int6", "--out", x)
    assert_user_error(r, "--artifact pg-record fixes the storage")
    r = run("convert", ck, "--to", "packed", "--floats", "int8", "--backend", "torch", "--out", x)
    assert_user_error(r, "apply to the exports that measure a round trip only")
    r = run("convert", ck, "--to", "canonical", "--floats", "mixed", "--out", str(tmp_path / "c"))
    assert_user_error(r, "--compress and --floats apply to --to packed only")
    r = run("convert", ck, "--to", "gguf", "--compress", "zstd-22", "--out", x)
    assert_user_error(r, "do not apply to --to gguf")
    assert not list(tmp_path.glob("x*")) and not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="--compress 'zstd-9'"):
        export.to_packed(ck, x, compress="zstd-9")
