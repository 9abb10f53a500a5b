"""`ternary train / eval` on a parameter-golf data directory (fineweb_*.bin shards, no manifest)."""
from __future__ import annotations

import json

import numpy as np

from shared.data.tokenizers import get_tokenizer
from tests.e2e.test_train_cli import assert_user_error, run
from tests.unit.test_pg_data import pg_texts, tiny_sp_model, write_pg_dir, write_pg_shard
from tests.variants import tiny_sets

SETS = tiny_sets(train=dict(steps=2, batch_size=2, seq_len=32, eval_every=2, eval_tokens=4000, log_every=1),
                 vocab_size=300)


def test_train_two_steps_and_eval_with_parameter_golfs_bytes(tmp_path):
    model = tiny_sp_model(tmp_path)
    data = write_pg_dir(tmp_path / "fineweb10B_tiny", model)
    out = tmp_path / "run"
    r = run("train", "--backend", "torch", "--set", *SETS, f"data.source={data}", f"data.tokenizer={model}",
            "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parameter-golf shards: 2 train, 1 val" in r.stdout
    evals = [json.loads(x)["eval"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and np.isfinite(evals[-1]["val_bpb"])
    e = run("eval", str(out), "--backend", "torch", "--json")
    assert e.returncode == 0, e.stdout + e.stderr
    ev = json.loads(e.stdout)
    tok = get_tokenizer(model)
    val = np.fromfile(data / "fineweb_val_000000.bin", "<u2", offset=1024)
    n_ab = int((val[:-10] == tok.sp.piece_to_id("a\u2581b")).sum())
    # all val targets scored: the documents' text plus parameter-golf's 2 extra bytes per "a▁b", plus 28
    expected = sum(len(t) for t in pg_texts(20, 2)) + 2 * n_ab + 28
    assert ev["tokens"] == evals[-1]["tokens"] == len(val) - 1
    assert ev["bytes"] == evals[-1]["bytes"] == expected
    assert abs(ev["val_bpb"] - ev["val_loss"] / np.log(2) * ev["tokens"] / ev["bytes"]) < 1e-9


def test_a_bad_shard_is_one_line_naming_it(tmp_path):
    model = tiny_sp_model(tmp_path)
    data = write_pg_dir(tmp_path / "pg", model)
    write_pg_shard(data / "fineweb_train_000001.bin", [1, 5, 6], count=7)  # header says 7 tokens, file has 3
    r = run("train", "--backend", "torch", "--set", *SETS, f"data.source={data}", f"data.tokenizer={model}",
            "--no-progress", "--out", str(tmp_path / "run"))
    assert_user_error(r, "fineweb_train_000001.bin: file is", "truncated")
    assert not (tmp_path / "run").exists()
