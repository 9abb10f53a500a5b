"""`--backend auto`, the default, end to end: torch on Linux (its run directory named so), the first
line of each command, and `--resume` of an MLX run staying on MLX."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_sets(data=dict(tokenizer="bytes", synthetic_train_bytes=20000, synthetic_val_bytes=4000),
                 train=dict(steps=2, batch_size=2, seq_len=16, eval_every=2, eval_tokens=200, log_every=1))
# one thread (tiny models; see tests/e2e/test_train_cli.py), read by --threads' default
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auto is torch on Linux")


def ternary(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "convert.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_the_default_backend_is_torch_on_linux_and_says_why(tmp_path):
    r = ternary(tmp_path, "train", "--set", *TINY, "--no-progress")  # no --backend, no --out
    first = r.stdout.splitlines()[0]
    assert first.startswith("backend: torch (auto: Linux "), first
    assert first.endswith(", 1 thread (OMP_NUM_THREADS))"), first
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("smoke-torch-")  # the resolved backend, never "auto"
    assert f"ternary train: run directory {Path('runs') / run.name}" in r.stdout
    assert json.loads((run / "summary.json").read_text())["backend"] == "torch"
    assert json.loads((run / "checkpoint" / "manifest.json").read_text())["writer"]["backend"] == "torch"
    assert "auto" not in (run / "config.toml").read_text()
    r = ternary(tmp_path, "eval", str(run), "--json")
    assert r.stderr.startswith("backend: torch (auto: Linux ")  # --json: stdout is the JSON alone
    assert json.loads(r.stdout)["backend"] == "torch"


def test_resume_of_an_mlx_run_stays_on_mlx(tmp_path):
    ternary(tmp_path, "train", "--backend", "mlx", "--set", *TINY, "--no-progress", "--out", "m")
    r = ternary(tmp_path, "train", "--resume", "m", "--set", "train.steps=3", "--no-progress", "--threads", "1")
    first = r.stdout.splitlines()[0]
    assert first.startswith("backend: mlx (auto: --resume continues a run written by mlx; mlx "), first
    assert first.endswith(", 1 thread (--threads))"), first
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["backend"] == "mlx"
    r = ternary(tmp_path, "generate", "m", "--prompt", "a", "--max-new-tokens", "2")
    assert r.stderr.startswith("backend: torch (auto: Linux ")  # eval and generate: the platform's choice
