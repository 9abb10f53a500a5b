"""Issue 13, "one clear line, never a traceback": hostile or mistaken inputs through the real
`ternary` command line (a subprocess, as a user runs it). Each gets `ternary: error: ...` on one
line naming the user's path and key, exit 2, and changes nothing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.unit.test_checkpoint_read import rehash
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = tiny_sets(data=dict(tokenizer="bytes", synthetic_train_bytes=100000, synthetic_val_bytes=20000),
                 train=dict(steps=4, batch_size=4, seq_len=32, eval_every=0, eval_tokens=2000, log_every=2))


def run(*args, cwd=ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one `ternary: error:` line on stderr holding every fragment; that line."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ternary: error: ")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 4-step run directory (checkpoint with optimizer and trainer state), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = run("train", "--set", *TINY, "--no-progress", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def copy_run(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


# ---- damaged checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("edit,fragment", [
    (lambda m: [], "a JSON list, expected an object"),
    (lambda m: {**m, "files": {k: {"sha256": v["sha256"]} for k, v in m["files"].items()}}, "a 'bytes' count"),
    (lambda m: {**m, "files": list(m["files"])}, "'files' is list"),
], ids=["[]", "no bytes", "files a list"])
def test_a_manifest_of_the_wrong_shape(trained, tmp_path, edit, fragment):
    ck = copy_run(trained, tmp_path / "run") / "checkpoint"
    mf = ck / "manifest.json"
    mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))
    for cmd in (("eval", ck), ("generate", ck, "--prompt", "a")):
        assert_one_line_error(run(*cmd), f"{mf}: damaged manifest", fragment)


@pytest.mark.parametrize("file,text,fragment", [
    ("trainer_state.json", "{oops", "trainer_state.json: damaged"),
    ("trainer_state.json", "[]", "trainer_state.json: damaged (a JSON list"),  # was: resumed at step 0
    ("trainer_state.json", '{"step": "six"}', 'step must be a count (an integer >= 0), got "six"'),
    ("optimizer.json", "{oops", "optimizer.json: damaged"),
    ("optimizer.json", "[1]", "optimizer.json: damaged (a JSON list"),
], ids=["state not JSON", "state a list", "step a string", "optimizer not JSON", "optimizer a list"])
def test_resume_refuses_malformed_trainer_and_optimizer_state(trained, tmp_path, file, text, fragment):
    out = copy_run(trained, tmp_path / "run")
    (out / "checkpoint" / file).write_text(text)
    rehash(out / "checkpoint")
    before = (out / "metrics.jsonl").read_text()
    r = run("train", "--resume", out, "--set", "train.steps=6", "--no-progress")
    assert_one_line_error(r, str(out / "checkpoint" / file), fragment)
    assert (out / "metrics.jsonl").read_text() == before


def test_weights_with_nan_are_refused_by_every_command(trained, tmp_path):
    """Before: generate and convert --to packed succeeded, eval printed numbers (inf: a traceback),
    inspect reported code statistics of NaN and train --init trained from them."""
    ck = copy_run(trained, tmp_path / "run") / "checkpoint"
    name = "model.layers.0.mlp.up_proj.weight"
    from shared.spec.checkpoint import read_safetensors
    w = read_safetensors(ck / "model.safetensors")
    w[name][0, 0] = np.nan
    save_file(w, str(ck / "model.safetensors"), metadata={"format": "ternary-checkpoint"})
    rehash(ck)
    msg = f"{ck / 'model.safetensors'}: non-finite values in 1 tensor(s): {name} (1 NaN, 0 inf)"
    for cmd in (("eval", ck, "--max-tokens", "100"), ("eval", ck, "--backend", "torch", "--max-tokens", "100"),
                ("generate", ck, "--prompt", "the", "--max-new-tokens", "3"),
                ("convert", ck, "--to", "packed", "--out", tmp_path / "m.tpk"),
                ("convert", ck, "--to", "canonical", "--out", tmp_path / "canon"),
                ("demo", "--ckpt", ck, "--seq-len", "8"), ("inspect", ck, "--no-measure"),
                ("train", "--init", ck, "--set", "train.steps=2", "--no-progress", "--out", tmp_path / "ft")):
        assert_one_line_error(run(*cmd), msg)
    assert not (tmp_path / "m.tpk").exists() and not (tmp_path / "canon").exists()
    assert not (tmp_path / "ft" / "checkpoint").exists()
