"""`ternary convert --to canonical|packed` (convert/formats/packed.py) on tiny torch models (CPU).

Tolerance of the logits check: the packed file keeps the codes exactly and rounds each scale to
fp16 (normal range, so relative error <= 2^-11) and each float parameter (norm gains, the tied
embedding) to fp16 (same bound). Every weight the forward pass uses therefore moves by at most
2^-11 relative; to first order the logits move by at most (number of weights on the path) * 2^-11
relative to their magnitude. Per layer that is 7 projections + 4 norms; with 2 layers, the
embedding, the final norm and the head, about 25 * 2^-11 ~ 1.2e-2, and errors of independent
signs add far less. We assert max|dlogits| <= 2^-11 * 25 * max|logits|, and that it is not exactly
zero where scales were rounded (so the test would notice fp32 scales sneaking in).

--floats int8 (per-row absmax int8 for float matrices): each element of the embedding / float head
moves by at most s/2 = max|row| / 254 (2^-7.99 of its row's largest entry) instead of 2^-11 of
itself. Counting the two uses of each float matrix (embedding lookup, head) at that bound on top of
the fp16 budget: TOL_INT8 = TOL + 2 * 2^-7.99 * 2 (the factor 2 for rows whose entries sit well below
their max, so relative error per entry above 1/254) ~ 2.8e-2 of max|logits|. It is a first-order
budget, not a proof; measured on the untied model below: 4.9e-3 against 1.6e-2 (torch and MLX).
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.formats import packed as export
from convert.cli import main
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import RunConfig
from shared.spec.params import parameter_shapes, ternary_parameters
from shared.spec.ternary import quantize
from ternary_cuda.checkpoint import save
from tests.variants import TINY, tiny_sets
from ternary_cuda.model import Model

BASE = tiny_sets()
TOL = 25 * 2.0 ** -11
TOL_INT8 = TOL + 4 / 254
UNTIED = ["model.tie_word_embeddings=false"]  # two float matrices: embedding and head
V1_FIXTURE = Path(__file__).parent / "data" / "packed_v1.tpk"


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


IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16))


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
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf", "--out", str(tmp_path / "c"),
                 "--floats", "int8"]) == 2
    assert "--floats" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_ternary_disabled_packs_floats_only(tmp_path):
    cfg, model = _ckpt(tmp_path / "ck", ["ternary.enabled=false"])
    st = export.to_packed(tmp_path / "ck", tmp_path / "m.tpk")
    assert st.ternary_weights == 0 and st.codes_bytes == 0
    c, w = export.load_packed(tmp_path / "m.tpk")
    ref = _logits(model, IDS)
    assert np.abs(_logits(Model(c, w), IDS) - ref).max() <= TOL * np.abs(ref).max()


# ---- --floats fp16|int8 x --compress lzma|zstd|none ----------------------------------------------
def _header(path) -> dict:
    return export.read_header(path)[0]


@pytest.mark.parametrize("floats", ["fp16", "int8"])
@pytest.mark.parametrize("compress", ["lzma", "zstd", "none"])
def test_packed_roundtrip_every_combination(tmp_path, floats, compress):
    """Codes bit-exact, ternary scales = fp16 of the reference; fp16 floats = fp16 of the latent;
    int8 float matrices within half a row scale (with a scale that never clips), 1-D floats fp16."""
    cfg, _ = _ckpt(tmp_path / "ck", UNTIED)
    out = tmp_path / "m.tpk"
    st = export.to_packed(tmp_path / "ck", out, compress=compress, floats=floats)
    h = _header(out)
    assert (h["version"], h["compress"], h["floats"]) == (export.VERSION, compress, floats)
    assert st.bytes == out.stat().st_size and (st.compress, st.floats) == (compress, floats)
    _, latent = read_checkpoint(tmp_path / "ck")
    _, parts = export.read_packed(out, dequantize_floats=False)
    _, deq = export.read_packed(out)
    tern = ternary_parameters(cfg)
    for name in tern:
        q, s = quantize(latent[name], cfg.ternary.group_size, cfg.ternary.eps)
        np.testing.assert_array_equal(parts[name][0], q)
        np.testing.assert_array_equal(parts[name][1], s.astype(np.float16).astype(np.float32))
    int8_names = []
    for name, w in latent.items():
        if name in tern:
            continue
        if floats == "fp16" or w.ndim == 1:
            np.testing.assert_array_equal(deq[name], w.astype(np.float16).astype(np.float32))
            continue
        int8_names.append(name)
        q, s = parts[name]
        assert q.dtype == np.int8 and q.shape == w.shape and s.shape == (w.shape[0],)
        assert q.min() >= -127 and q.max() <= 127
        s64 = s.astype(np.float64)
        amax = np.abs(w.astype(np.float64)).max(axis=1)
        assert (s64 * 127 >= amax).all()  # nothing was clipped
        assert (s64 <= np.nextafter((amax / 127).astype(np.float16), np.float16(np.inf))).all()  # tight
        err = np.abs(w.astype(np.float64) - q.astype(np.float64) * s64[:, None])
        assert (err <= s64[:, None] / 2).all(), float((err / s64[:, None]).max())
        assert err.max() > 0  # really quantized
        np.testing.assert_array_equal(deq[name], (q.astype(np.float32) * s[:, None]))
    assert sorted(int8_names) == ([] if floats == "fp16" else ["lm_head.weight", "model.embed_tokens.weight"])
    assert st.float_codes_bytes == sum(latent[n].size for n in int8_names)
    assert st.float_scales_bytes == 2 * sum(latent[n].shape[0] for n in int8_names)
    assert st.codes_bytes + st.scales_bytes + st.floats_bytes == st.raw_payload
    assert st.floats_bytes == st.float_codes_bytes + st.float_scales_bytes + st.plain_floats_bytes


def test_packed_sizes_int8_and_compressors(tmp_path, capsys):
    _ckpt(tmp_path / "ck", UNTIED)
    st = {}
    for floats in ("fp16", "int8"):
        for compress in ("lzma", "zstd", "none"):
            out = tmp_path / f"{floats}-{compress}.tpk"
            assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(out),
                         "--floats", floats, "--compress", compress]) == 0
            text = capsys.readouterr().out
            payload = out.stat().st_size - export.read_header(out)[1]
            assert f"payload {payload:,d} {compress}" in text
            assert ("row scales" in text) == (floats == "int8")
            st[floats, compress] = export.to_packed(tmp_path / "ck", out, compress=compress, floats=floats, force=True)
        assert st[floats, "lzma"].bytes < st[floats, "none"].bytes
        assert st[floats, "zstd"].bytes < st[floats, "none"].bytes
    for compress in ("lzma", "zstd", "none"):
        assert st["int8", compress].bytes < st["fp16", compress].bytes
    # the float matrices shrink from 2 bytes to 1 (+ 2 per row); everything else is the same size
    fp, i8 = st["fp16", "none"], st["int8", "none"]
    assert fp.raw_payload - i8.raw_payload == i8.float_codes_bytes - i8.float_scales_bytes
    assert st["int8", "zstd"].codes_only_compressed is not None and st["int8", "none"].codes_only_compressed is None


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_int8_zstd_artifact_forward_matches_checkpoint(tmp_path, backend):
    """load_packed + a forward pass in each backend against the checkpoint's (torch) logits; the
    dequantized form (ternary off) and the latent form (projection re-applied) both."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    from tests.backends import Backend
    be = Backend(backend)
    cfg, model = _ckpt(tmp_path / "ck", UNTIED)
    export.to_packed(tmp_path / "ck", tmp_path / "m.tpk", compress="zstd", floats="int8")
    export.to_packed(tmp_path / "ck", tmp_path / "f.tpk", compress="zstd", floats="fp16")
    ref = _logits(model, IDS)
    d = {}
    for f in ("m", "f"):
        c, w = export.load_packed(tmp_path / f"{f}.tpk")
        d[f] = np.abs(be.logits(be.model.Model(export.effective_config(c), w), IDS) - ref).max()
    c, w = export.load_packed(tmp_path / "m.tpk", form="latent")
    d_latent = np.abs(be.logits(be.model.Model(c, w), IDS) - ref).max()
    top = np.abs(ref).max()
    assert d["m"] <= TOL_INT8 * top and d_latent <= TOL_INT8 * top, (d, d_latent, top)
    assert d["m"] > d["f"]  # int8 really moved the float matrices more than fp16 does


def test_packed_v1_file_still_reads(tmp_path):
    """tests/convert/data/packed_v1.tpk was written by the version-1 writer (commit de40080, lzma,
    fp16 floats; a random 1-layer model). It reads, and decodes to the same codes, scales and floats
    as a version-2 file packed from its own latent form."""
    h = _header(V1_FIXTURE)
    assert h["version"] == 1 and "floats" not in h and h["compress"] == "lzma"
    c1, p1 = export.read_packed(V1_FIXTURE)
    assert (c1.model.hidden_size, c1.model.num_hidden_layers, c1.ternary.group_size) == (32, 1, 16)
    _, latent = export.load_packed(V1_FIXTURE, form="latent")
    blob, _ = export.pack(c1, latent, "zstd", floats="fp16")
    (tmp_path / "v2.tpk").write_bytes(blob)
    c2, p2 = export.read_packed(tmp_path / "v2.tpk")
    assert c2.to_dict() == c1.to_dict() and list(p1) == list(p2)
    for k in p1:
        if isinstance(p1[k], tuple):
            np.testing.assert_array_equal(p1[k][0], p2[k][0])
            np.testing.assert_array_equal(p1[k][1], p2[k][1])
        else:
            np.testing.assert_array_equal(p1[k], p2[k])


def _rewrite(path, out, edit_header=None, edit_raw=None):
    """Re-write an uncompressed packed file with an edited header and/or raw payload (checksum fixed)."""
    blob = Path(path).read_bytes()
    hl = struct.unpack("<Q", blob[8:16])[0]
    header, payload = json.loads(blob[16:16 + hl]), bytearray(blob[16 + hl:])
    if edit_raw:
        edit_raw(header, payload)
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    if edit_header:
        edit_header(header)
    hb = json.dumps(header).encode()
    Path(out).write_bytes(blob[:8] + struct.pack("<Q", len(hb)) + hb + bytes(payload))


def test_reader_refuses_unknown_compression_version_and_float_codes(tmp_path):
    _ckpt(tmp_path / "ck", UNTIED)
    src = tmp_path / "m.tpk"
    export.to_packed(tmp_path / "ck", src, compress="none", floats="int8")
    bad = tmp_path / "bad.tpk"
    cases = [
        (lambda h: h.update(compress="brotli"), None, "unknown compression 'brotli'"),
        (lambda h: h.update(version=1, compress="none", floats="fp16"), None, None),  # ok up to the int8 entry
        (lambda h: h.update(version=1, compress="zstd"), None, "unknown compression 'zstd' for format version 1"),
        (lambda h: h.update(version=export.MAX_VERSION + 1), None, "not one this tool reads"),
        (lambda h: h.update(floats="int4"), None, "unknown float storage 'int4'"),
        (None, lambda h, raw: raw.__setitem__(
            next(e for e in h["tensors"] if e.get("dtype") == "int8")["data"][0], 0x80), "-128"),
        (lambda h: h.update(compress="zstd"), None, "cannot decompress the zstd payload"),
    ]
    for edit_header, edit_raw, match in cases:
        _rewrite(src, bad, edit_header, edit_raw)
        with pytest.raises(export.PackedError, match=match or "int8 entry in a file without --floats int8"):
            export.read_packed(bad)
    # a zstd file with one flipped payload byte fails its checksum before decompression
    export.to_packed(tmp_path / "ck", tmp_path / "z.tpk", compress="zstd", floats="int8")
    bad.write_bytes(_damage((tmp_path / "z.tpk").read_bytes(), "flipped-payload"))
    with pytest.raises(export.PackedError, match="sha256"):
        export.read_packed(bad)


def test_int8_rule_edge_rows():
    """The documented int8 rule on hand-made rows: zeros, an fp16 scale that rounds down (bumped one
    fp16 step), a scale below the fp16 range (bumped to the smallest subnormal), exact halves
    (round half to even); non-finite values are refused."""
    u = 2.0 ** -7  # an exact fp16 scale: max|row| = 127 u
    w = np.array([[0, 0, 0, 0, 0, 0],
                  [127 * (1 + 2.0 ** -12), 1, -1, 0, 0, 0],  # max/127 = 1 + 2^-12 -> fp16 1.0 < max/127
                  [1e-9, -3e-9, 0, 2e-9, 0, 0],  # max/127 below the smallest fp16 subnormal 2^-24
                  [127 * u, 0.5 * u, 1.5 * u, 2.5 * u, -0.5 * u, -1.5 * u]], np.float32)
    q, s = export.quantize_rows_int8(w)
    assert s.dtype == np.float16
    assert s[0] == 0 and (q[0] == 0).all()
    assert s[1] == np.float16(1 + 2.0 ** -10) and q[1, 0] == 127  # bumped, not 1.0
    assert s[2] == np.float16(2.0 ** -24) and (q[2] == 0).all()
    assert s[3] == np.float16(u) and q[3].tolist() == [127, 0, 2, 2, 0, -2]  # half to even
    s64 = s.astype(np.float64)[:, None]
    assert (np.abs(w.astype(np.float64) - q * s64) <= s64 / 2).all()
    with pytest.raises(Exception, match="x.weight: non-finite"):
        export.quantize_rows_int8(np.array([[1.0, np.nan]], np.float32), "x.weight")
    big = np.array([[1e7, 1.0]], np.float32)  # 1e7 / 127 > fp16 max: float32 scales
    q, s = export.quantize_rows_int8(big)
    assert s.dtype == np.float32 and q[0, 0] == 127 and abs(1e7 - 127 * float(s[0])) <= float(s[0]) / 2


def test_describe_names_the_float_storage(tmp_path):
    """The line `ternary eval FILE` prints about the artifact says what was rounded and how."""
    _ckpt(tmp_path / "ck")
    export.to_packed(tmp_path / "ck", tmp_path / "a.tpk", floats="int8", compress="zstd")
    assert export.describe(tmp_path / "a.tpk") == ("codes exact, scales fp16, float matrices per-row int8, "
                                                   "other float parameters fp16; format version 2, zstd")
    assert export.describe(V1_FIXTURE).endswith("float parameters fp16; format version 1, lzma")
