"""The pure pieces of bench/pg_step.py (bench/pg_data.py): parameter-golf shards, the float32 patch of
the peer script, the peer log parser, our per-step rates. No peer run here."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pg_data", ROOT / "bench" / "pg_data.py")
pg_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pg_data)


def read_pg_shard(path: Path) -> np.ndarray:
    """Parameter-golf's shard reader, re-implemented from its definition: 256 little-endian int32
    (magic 20240520, version 1, token count), then exactly that many little-endian uint16."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header.size == 256 and header[0] == 20240520 and header[1] == 1
    n = int(header[2])
    assert path.stat().st_size == 256 * 4 + 2 * n
    return np.fromfile(path, dtype="<u2", count=n, offset=256 * 4).astype(np.int32)


def test_shard_round_trip(tmp_path):
    toks = np.array([1, 0, 65535, 300, 7, 1023], dtype=np.int64)
    pg_data.write_shard(tmp_path / "s.bin", toks)
    np.testing.assert_array_equal(read_pg_shard(tmp_path / "s.bin"), toks)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("bad", [[-1, 2], [65536], [[1, 2]]])
def test_shard_refuses_ids_outside_uint16(tmp_path, bad):
    with pytest.raises(ValueError, match="ids in"):
        pg_data.write_shard(tmp_path / "s.bin", np.array(bad))
    assert not (tmp_path / "s.bin").exists()


def test_dataset_documents_are_bos_then_tokens_val_first(tmp_path):
    import sentencepiece as spm
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "speaks", "to", "his", "her", "lord", "and", "says", "no", "yes"]
    docs = [" ".join(rng.choice(words, size=rng.integers(5, 30))) + "." for _ in range(200)]
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(docs) + "\n")
    info = pg_data.build_dataset(text, tmp_path / "w", 300, 0.1, log=lambda _m: None)
    assert (info["documents"], info["val_documents"]) == (200, 20)
    sp = spm.SentencePieceProcessor(model_file=info["tokenizer"])
    assert sp.vocab_size() == 300
    val = read_pg_shard(Path(info["dir"]) / pg_data.VAL_SHARD)
    train = read_pg_shard(Path(info["dir"]) / pg_data.TRAIN_SHARD)
    for shard, split in ((val, docs[:20]), (train, docs[20:])):
        starts = np.flatnonzero(shard == sp.bos_id())
        assert starts.size == len(split) and starts[0] == 0
        pieces = np.split(shard, starts[1:])
        assert [sp.decode(p[1:].tolist()) for p in pieces] == split
    assert info["val_tokens"] == val.size and info["train_tokens"] == train.size


def test_dataset_refuses_a_tokenizer_short_of_the_vocab_size(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("ab ab\n\nba ba\n\nab\n")
    with pytest.raises(ValueError, match="not 1024"):
        pg_data.build_dataset(text, tmp_path / "w", 1024, 0.4, log=lambda _m: None)


def _peer_repo(tmp_path: Path, body: str) -> Path:
    repo = tmp_path / "pg"
    repo.mkdir()
    (repo / "train_gpt_mlx.py").write_text(body)
    return repo


def test_patched_peer_changes_only_the_dtype_line(tmp_path):
    body = "import mlx.core as mx\nCOMPUTE_DTYPE = mx.bfloat16\nx = mx.bfloat16  # kept\n"
    repo, work = _peer_repo(tmp_path, body), tmp_path / "work"
    work.mkdir()
    dst, note = pg_data.patched_peer(repo, work)
    assert dst.read_text() == body.replace("COMPUTE_DTYPE = mx.bfloat16", "COMPUTE_DTYPE = mx.float32")
    assert "line 2" in note and (repo / "train_gpt_mlx.py").read_text() == body  # the original is untouched


@pytest.mark.parametrize("body", ["COMPUTE_DTYPE = mx.float16\n", "COMPUTE_DTYPE = mx.bfloat16\n" * 2])
def test_patched_peer_refuses_a_script_it_cannot_patch(tmp_path, body):
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ValueError, match="expected exactly one line"):
        pg_data.patched_peer(_peer_repo(tmp_path, body), work)
    assert list(work.iterdir()) == []


PEER_LOG = """\
logs/peer.txt
warmup_step:2/2
step:1/3 train_loss:6.9320 train_time:5167ms step_avg:5166.78ms tok_s:793
step:2/3 train_loss:7.0057 train_time:11174ms step_avg:5587.15ms tok_s:682
val_progress:1/3
step:3/3 train_loss:6.5494 train_time:18270ms step_avg:6090.05ms tok_s:577
step:3/3 val_loss:5.0346 val_bpb:2.9699 train_time:18270ms step_avg:6090.00ms
final_int8_zlib_roundtrip val_loss:5.0352 val_bpb:2.9703 eval_time:22015ms
final_int8_zlib_roundtrip_exact val_loss:5.03516472 val_bpb:2.97026565
"""


def test_parse_peer_log():
    out = pg_data.parse_peer_log(PEER_LOG.splitlines())
    assert out["iterations"] == 3
    assert [r["step"] for r in out["train"]] == [1, 2, 3]
    assert out["train"][1] == {"step": 2, "train_loss": 7.0057, "train_time_ms": 11174.0, "step_avg_ms": 5587.15,
                               "tok_s": 682}
    assert out["val"] == [{"step": 3, "val_loss": 5.0346, "val_bpb": 2.9699, "train_time_ms": 18270.0}]
    assert out["int8_roundtrip"] == {"val_loss": 5.03516472, "val_bpb": 2.97026565}


def test_our_step_rates_and_timing_summary():
    recs = [{"step": 1, "loss": 7.0, "train_time_s": 2.0}, {"step": 2, "loss": 6.0, "train_time_s": 2.5},
            {"eval": {"step": 2, "val_bpb": 3.0}}, {"step": 3, "loss": 5.0, "train_time_s": 3.25},
            {"step": 4, "loss": 5.0, "train_time_s": 3.5}]
    rates = pg_data.our_step_rates(recs, 4, 1000)
    np.testing.assert_allclose(rates, [500.0, 2000.0, 1000 / 0.75, 4000.0])
    s = pg_data.timing_summary(rates, 1)
    assert (s["tokens_per_s_median"], s["timed_steps"], s["tokens_per_s_min"]) == (2000.0, 3, 1333.3)
    with pytest.raises(ValueError, match="no timed step"):
        pg_data.timing_summary(rates, 4)


@pytest.mark.parametrize("recs, match", [
    ([{"step": 1, "loss": 1.0, "train_time_s": 1.0}], "1..2"),
    ([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 1.0}], "without train_time_s"),
    ([{"step": 1, "loss": 1.0, "train_time_s": 1.0}, {"step": 2, "loss": 1.0, "train_time_s": 1.0}], "log_every=1"),
])
def test_our_step_rates_refuses_records_it_cannot_time(recs, match):
    with pytest.raises(ValueError, match=match):
        pg_data.our_step_rates(recs, 2, 1000)


def test_bench_without_a_pg_checkout_says_skipped(tmp_path):
    p = subprocess.run([sys.executable, "bench/pg_step.py", "--pg-repo", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no train_gpt_mlx.py" in p.stderr
    out = json.loads(p.stdout)
    assert out["skipped"] is True and str(tmp_path) in out["reason"]
    assert list(tmp_path.iterdir()) == []
