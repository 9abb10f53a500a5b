"""The big-model paths of `convert --to packed` and `inspect` on tiny models: --compress auto and
the zstd level by payload size (packed_codecs.LARGE_PAYLOAD, lowered here), the lazy tensor reads
(lazy_weights.py), the progress lines."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convert.cli import main
from convert.formats import packed as export
from convert.formats import packed_codecs
from convert.formats.lazy_weights import open_weights
from shared.spec.checkpoint import CheckpointError, read_checkpoint
from shared.spec.config import RunConfig
from ternary_cuda.checkpoint import save
from ternary_cuda.model import Model
from tests.variants import tiny_sets


def _ckpt(path):
    cfg = RunConfig().with_overrides(tiny_sets())
    save(Model(cfg, seed=0), cfg, path)
    return cfg


def test_auto_is_lzma_for_small_payloads_byte_for_byte(tmp_path):
    cfg = _ckpt(tmp_path / "ck")
    _, w = read_checkpoint(tmp_path / "ck")
    st = export.to_packed(tmp_path / "ck", tmp_path / "a.tpk")  # the default: auto
    blob, _ = export.pack(cfg, w, "lzma")
    assert (tmp_path / "a.tpk").read_bytes() == blob and st.compress == "lzma"
    blob_z, _ = export.pack(cfg, w, "zstd")
    assert blob_z == export.pack(cfg, w, "zstd")[0]  # level 19, single-threaded: deterministic
    assert packed_codecs.describe_compression("zstd", len(blob)) == "zstd level 19"


def test_large_payloads_get_zstd_fast_and_read_back(tmp_path, monkeypatch, capsys):
    cfg = _ckpt(tmp_path / "ck")
    _, w = read_checkpoint(tmp_path / "ck")
    ref = export.load_packed(export.to_packed(tmp_path / "ck", tmp_path / "small.tpk") and tmp_path / "small.tpk")[1]
    monkeypatch.setattr(packed_codecs, "LARGE_PAYLOAD", 1000)  # every payload is "large" now
    st = export.to_packed(tmp_path / "ck", tmp_path / "big.tpk")
    h = export.read_header(tmp_path / "big.tpk")[0]
    assert h["compress"] == "zstd" and st.compress == "zstd"
    assert st.compression == f"zstd level {packed_codecs.ZSTD_FAST_LEVEL}, multi-threaded"
    got = export.load_packed(tmp_path / "big.tpk")[1]
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
    raw = export.pack(cfg, w, "none")[0]
    assert len(raw) > 1000
    zs = packed_codecs.zstd_module()
    for how, level in (("zstd", packed_codecs.ZSTD_FAST_LEVEL), ("zstd-22", 22)):
        payload = packed_codecs.compress_payload(raw, how)
        assert zs.get_frame_parameters(payload).content_size == len(raw)
        for threads in (1, 2):  # the level that size chose; the same bytes whatever the machine's CPU count
            assert payload == zs.ZstdCompressor(level=level, threads=threads).compress(raw)
    # a large file's read-back compares the decompressed payload with what was compressed
    bad = dataclasses.replace(st, raw_sha256="0" * 64)
    with pytest.raises(export.PackedError, match="did not read back"):
        export._verify(tmp_path / "big.tpk", bad)
    # the CLI prints the level that size chose and, for a big checkpoint file, timed progress lines on stderr
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--out", str(tmp_path / "cli.tpk")]) == 0
    out = capsys.readouterr()
    assert f"zstd (level {packed_codecs.ZSTD_FAST_LEVEL}, multi-threaded: raw payload over" in out.out
    assert "ternary: [" in out.err and "compressing" in out.err and "verifying" in out.err
    assert "slow:" not in out.err
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--compress", "lzma", "--out",
                 str(tmp_path / "cli-lzma.tpk")]) == 0
    assert "lzma (xz 9e) (slow: 1-3 MB/s" in capsys.readouterr().err  # an explicit lzma is honoured, and warned
    assert export.read_header(tmp_path / "cli-lzma.tpk")[0]["compress"] == "lzma"


def test_lazy_weights_match_read_checkpoint_and_refuse_nan(tmp_path):
    _ckpt(tmp_path / "ck")
    _, eager = read_checkpoint(tmp_path / "ck")
    _, lazy = open_weights(tmp_path / "ck")
    assert list(lazy) == list(eager)
    for k, v in eager.items():
        t = lazy[k]
        assert t.dtype == v.dtype and t.shape == v.shape and np.array_equal(t, v) and t.flags.writeable
    # NaN in one tensor: refused when that tensor is read, naming it (as read_checkpoint refuses it)
    f = tmp_path / "ck" / "model.safetensors"
    name = next(iter(eager))
    at = lazy._data_start + lazy._entries[name]["data_offsets"][0]
    del lazy  # its map, before the file is rewritten
    b = bytearray(f.read_bytes())
    b[at:at + 4] = np.array([np.nan], "<f4").tobytes()
    f.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="sha256"):  # the manifest sees it first
        open_weights(tmp_path / "ck")
    _, lazy = open_weights(tmp_path / "ck", verify=False)
    with pytest.raises(CheckpointError, match=f"non-finite values.*{name}"):
        lazy[name]


def test_convert_threads_sets_zstd_workers_not_the_bytes(tmp_path, monkeypatch, capsys):
    from convert import runtime
    zs = packed_codecs.zstd_module()
    _ckpt(tmp_path / "ck")
    monkeypatch.setattr(packed_codecs, "LARGE_PAYLOAD", 1000)  # every payload is "large": zstd, multi-threaded
    monkeypatch.setattr(runtime, "available_cpus", lambda: 4)  # --threads 3 is allowed on any machine
    real, workers = zs.ZstdCompressor, []
    monkeypatch.setattr(zs, "ZstdCompressor", lambda **kw: workers.append(kw["threads"]) or real(**kw))
    for n in ("1", "3"):
        assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--threads", n,
                     "--out", str(tmp_path / f"t{n}.tpk")]) == 0
    assert set(workers) == {1, 3}  # payload and codes-alone compressions, on --threads workers each
    assert (tmp_path / "t1.tpk").read_bytes() == (tmp_path / "t3.tpk").read_bytes()
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), "--to", "packed", "--threads", "5",
                 "--out", str(tmp_path / "t5.tpk")]) == 2  # more than the CPUs: refused, as everywhere
    assert "--threads 5" in capsys.readouterr().err and not (tmp_path / "t5.tpk").exists()
    assert main(["convert", str(tmp_path / "ck"), "--to", "canonical", "--threads", "2",
                 "--out", str(tmp_path / "canon")]) == 2  # no other export uses threads: refused, not ignored
    assert "--threads applies to --to packed only" in capsys.readouterr().err and not (tmp_path / "canon").exists()


def test_zstd_multithreaded_bytes_do_not_depend_on_the_workers():
    # 24 MiB: two of zstd's 16 MiB jobs at level 9 (window 4 MiB), so the workers really split the input
    raw = (np.random.default_rng(0).integers(0, 243, 24 << 20, dtype=np.uint8) // 3).tobytes()
    assert packed_codecs.compress_payload(raw, "zstd", threads=1) == packed_codecs.compress_payload(raw, "zstd", threads=2)
