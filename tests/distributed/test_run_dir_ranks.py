"""Several ranks share one --out: rank 0 alone checks and locks the run directory, and every rank
takes its verdict (one agree, SEEDS S12), so a refused directory ends the whole job at once, with
nothing written, instead of rank 0 stopping while the others wait for it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.test_mlx_ring import MLX_LAUNCH, _free_ports
from tests.distributed.test_mlx_ring import _env as mlx_env
from tests.distributed.test_torchrun_data_parallel import _env as torch_env
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
SETS = tiny_sets(data=dict(tokenizer="bytes", synthetic_train_bytes=50000, synthetic_val_bytes=10000),
                 train=dict(steps=4, batch_size=2, seq_len=32, eval_every=0, log_every=1))
MESSAGE = "which a training run does not write"


def _foreign(tmp_path: Path) -> Path:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    return out


def test_torchrun_ranks_all_stop_on_a_refused_run_directory(tmp_path):
    out = _foreign(tmp_path)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "ternary_cuda.train", "--no-progress", "--set", *SETS, "--out", str(out)],
                       cwd=ROOT, env=torch_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert MESSAGE in r.stdout + r.stderr
    assert "refused by rank 0" in r.stdout + r.stderr  # rank 1 took the same branch, it did not wait
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(not MLX_LAUNCH.exists(), reason="mlx.launch is not installed next to python")
def test_mlx_ranks_all_stop_on_a_refused_run_directory(tmp_path):
    out = _foreign(tmp_path)
    r = subprocess.run([str(MLX_LAUNCH), "--backend", "ring", "-n", "2", "-p", str(_free_ports(2)), "--",
                        sys.executable, "-m", "ternary_mlx.train", "--no-progress", "--set", *SETS, "--out", str(out)],
                       cwd=ROOT, env=mlx_env(), capture_output=True, text=True, timeout=180)
    # mlx.launch exits 0 even when a rank fails: read its "Node with rank R exited with code C" lines
    assert not re.search(r"Node with rank [01] exited with code 0\b", r.stderr), r.stderr[-2000:]
    # a refused --out is a config error: `ternary: error: ...` and exit 2 (1 before the train modules
    # reported errors like `ternary`)
    assert re.search(r"Node with rank [01] exited with code 2\b", r.stderr), r.stderr[-2000:]
    assert MESSAGE in r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
