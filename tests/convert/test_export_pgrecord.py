"""`ternary convert --to packed --artifact pg-record` (convert/formats/packed_pgrecord.py): what is
stored matches parameter-golf's ternary record (re-stated here in torch from its q_sd / deq_sd:
fp16 group scales, codes from them, base 3 five per byte, fp8 e4m3 2-D floats, fp16 1-D, the
shrinkage fix on reading), the budget lines, and the round trip on the command line."""
from __future__ import annotations

import lzma

import numpy as np
import pytest
import torch

from convert.formats import packed as export
from convert.formats.packed_pgrecord import effective_scales, quantize_record
from shared.spec.checkpoint import read_checkpoint
from shared.spec.params import ternary_parameters
from tests.convert.test_export import _ckpt
from tests.e2e.test_train_cli import assert_user_error, run

UNTIED = ["model.tie_word_embeddings=false"]


def record_q(w: torch.Tensor, g: int):
    """The record's ternary storage for one 2-D tensor: (codes, fp16 scales)."""
    groups = w.float().reshape(-1, g)
    scale = groups.abs().mean(-1, keepdim=True).clamp(min=1e-8).half().float()
    return (groups / scale).round().clamp(-1, 1).to(torch.int8), scale.half().squeeze(-1)


def record_deq(q: torch.Tensor, scale: torch.Tensor, shape) -> torch.Tensor:
    """The record's dequantization with its shrinkage fix (float32, before its bf16 cast)."""
    qf = q.float()
    q_absmean = qf.abs().mean(-1, keepdim=True).clamp(min=1e-8)
    return (qf * (scale.float().unsqueeze(-1) / q_absmean)).reshape(shape)


def record_base3(q: torch.Tensor) -> bytes:
    """The record's pack_ternary: digits q + 1, five per byte, least significant first, zero-padded."""
    d = (q.reshape(-1).to(torch.int64) + 1).numpy()
    d = np.concatenate([d, np.zeros((-len(d)) % 5, np.int64)]).reshape(-1, 5)
    return (d * np.array([1, 3, 9, 27, 81])).sum(1).astype(np.uint8).tobytes()


def test_codes_scales_and_shrinkage_fix_match_the_record():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 64)) * 0.05).astype(np.float32)
    w[2, :32] = 0  # an all-zero group: scale fp16(1e-8) = 0, codes 0, weights 0
    q, s16 = quantize_record(w, 32)
    tq, ts = record_q(torch.from_numpy(w), 32)
    assert np.array_equal(q.reshape(-1, 32), tq.numpy()) and np.array_equal(s16.reshape(-1), ts.numpy())
    assert s16[2, 0] == 0 and not q[2, :32].any()
    eff = effective_scales(q, s16, 32)
    mine = (q.reshape(8, 2, 32) * eff[..., None]).reshape(8, 64)
    ref = record_deq(tq, ts, (8, 64)).numpy()
    assert np.array_equal(mine[2], ref[2]) and np.array_equal(mine, ref)
    nnz = np.count_nonzero(q.reshape(8, 2, 32), axis=-1)
    assert np.allclose(eff[nnz > 0], (s16.astype(np.float32) * 32 / np.maximum(nnz, 1))[nnz > 0], rtol=1e-6)


def test_file_layout_and_decoded_weights(tmp_path):
    cfg, _ = _ckpt(tmp_path / "ck", UNTIED)
    out = tmp_path / "m.tpk"
    st = export.to_packed(tmp_path / "ck", out, artifact="pg-record")
    h, start = export.read_header(out)
    assert (h["version"], h["artifact"], h["floats"], h["compress"]) == (3, "pg-record", "fp8", "lzma")
    assert st.bytes == out.stat().st_size
    raw = lzma.decompress(out.read_bytes()[start:])
    _, latent = read_checkpoint(tmp_path / "ck")
    G = cfg.ternary.group_size
    tern = set(ternary_parameters(cfg))
    _, weights = export.load_packed(out)  # the forward pass's weights: q * s
    _, latent_back = export.load_packed(out, form="latent")  # the record's deq_sd (shrinkage fix)
    table = {e["name"]: e for e in h["tensors"]}
    for name, w in latent.items():
        e = table[name]
        if name in tern:
            tq, ts = record_q(torch.from_numpy(w), G)
            off, n = e["codes"]
            assert raw[off:off + n] == record_base3(tq)  # base-3 bytes as the record's pack_ternary
            qs = (tq.float() * ts.float()[:, None]).reshape(w.shape).numpy()
            assert np.array_equal(weights[name], qs), name
            assert np.allclose(latent_back[name], record_deq(tq, ts, w.shape).numpy(), rtol=1e-6, atol=0), name
            # and what the record's forward makes of its latent weights: q and s again
            again, s_again = record_q(torch.from_numpy(latent_back[name]), G)
            assert torch.equal(again, tq) and torch.allclose(s_again.float(), ts.float(), rtol=1e-3), name
        elif w.ndim == 2:  # embedding, head: fp8 e4m3 as torch casts
            assert e["dtype"] == "float8_e4m3"
            assert np.array_equal(weights[name], torch.from_numpy(w).to(torch.float8_e4m3fn).float().numpy())
        else:
            assert e["dtype"] == "float16" and np.array_equal(weights[name], w.astype(np.float16).astype(np.float32))
    assert st.float_codes_bytes == sum(w.size for n, w in latent.items() if n not in tern and w.ndim == 2)
    assert "shrinkage fix is the latent form" in export.describe(out)


def test_layout_keys_cannot_be_mixed(tmp_path):
    """A default file whose header claims pg-record, or an entry of one layout in the other, is damage."""
    _ckpt(tmp_path / "ck", UNTIED)
    export.to_packed(tmp_path / "ck", tmp_path / "d.tpk")
    h, _ = export.read_header(tmp_path / "d.tpk")
    with pytest.raises(export.PackedError, match="dequantization rule does not match"):
        export._read_entry(b"\0" * 10**6, next(e for e in h["tensors"] if e["kind"] == "ternary"),
                           export.RunConfig.from_dict(h["config"]), set(ternary_parameters(
                               export.RunConfig.from_dict(h["config"]))), "fp8", True, "x")


def test_cli_budget_and_round_trip(tmp_path):
    from tests.e2e.test_train_cli import train
    out = tmp_path / "run"
    train(out, "torch")
    r = run("convert", str(out), "--to", "packed", "--artifact", "pg-record", "--out", str(tmp_path / "a.tpk"),
            "--eval-tokens", "1024")
    assert r.returncode == 0, r.stdout + r.stderr
    size = (tmp_path / "a.tpk").stat().st_size
    assert f"pg-record budget: {size:,d} of 16,000,000 bytes (fits; +{16_000_000 - size:,d})" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "round trip" in x)
    trip = float(line.split("round trip ")[1].split()[0])
    e = run("eval", str(tmp_path / "a.tpk"), "--backend", "torch", "--max-tokens", "1024", "--json")
    assert e.returncode == 0, e.stderr
    import json
    assert abs(json.loads(e.stdout)["val_bpb"] - trip) < 5e-5  # the printed round trip is `ternary eval FILE`'s


def test_cli_refusals(tmp_path):
    _ckpt(tmp_path / "ck", UNTIED)
    ck = str(tmp_path / "ck")
    r = run("convert", ck, "--to", "packed", "--artifact", "pg-record", "--compress", "zstd", "--out", str(tmp_path / "x"))
    assert_user_error(r, "--artifact pg-record fixes the storage")
    r = run("convert", ck, "--to", "packed", "--backend", "torch", "--out", str(tmp_path / "x"))
    assert_user_error(r, "apply to the exports that measure a round trip only")
    r = run("convert", ck, "--to", "canonical", "--artifact", "pg-record", "--out", str(tmp_path / "x"))
    assert_user_error(r, "apply to --to packed only")
    # this checkpoint's config names a tokenizer larger than its vocabulary: no data to score the
    # round trip on, so nothing is written
    r = run("convert", ck, "--to", "packed", "--artifact", "pg-record", "--out", str(tmp_path / "x"))
    assert_user_error(r, "tokenizer 'synthetic-bpe-512' has 512 tokens")
    assert not list(tmp_path.glob("*x*"))
