"""MLX data parallel on the ring backend (ternary_mlx/parallel.py), two local CPU ranks.

Two ranks with train.batch_size=B must train like one process with 2B: TokenLoader gives rank r
windows [rB, (r+1)B) of each global batch of 2B, one process takes all 2B in the same order, and
the per-rank means averaged over ranks equal the global mean. Only the float32 summation order
differs, so losses agree to ~1e-6 relative (3.5e-7 seen), not bitwise. Across ranks the weights
must be bitwise identical: every rank applies the same all_sum-ed update.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.variants import DEFAULT_INIT, tiny_sets

pytest.importorskip("mlx.core")

ROOT = Path(__file__).resolve().parents[2]
MLX_LAUNCH = Path(sys.executable).with_name("mlx.launch")
# the initializer range a real run starts from: these trajectory tolerances were measured there
CONFIG = tiny_sets(initializer_range=DEFAULT_INIT,
                   data=dict(tokenizer="bytes", synthetic_train_bytes=50000, synthetic_val_bytes=10000),
                   train=dict(seq_len=32, eval_tokens=2000, eval_every=0, log_every=3, steps=8))
RTOL = 2e-6  # float32 reduction order only (observed 3.5e-7 on the loss)

pytestmark = pytest.mark.skipif(not MLX_LAUNCH.exists(), reason="mlx.launch is not installed next to python")


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free now (the ring listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free consecutive ports for the ring backend")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_")}
    env["OPENBLAS_NUM_THREADS"] = "1"  # two ranks share the cores; same setting for the 1-process reference
    env.update(extra)
    return env


def _worker(dump: Path, out: Path, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.distributed.mlx_ring_worker", str(dump), "--no-progress",
            "--out", str(out), "--set", *CONFIG, *sets]


def _launch(n: int, cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MLX_LAUNCH), "--backend", "ring", "-n", str(n), "-p", str(_free_ports(n)),
                           "--", *cmd], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=120)


def _check(p: subprocess.CompletedProcess) -> None:
    # mlx.launch exits 0 even when a rank fails; it reports "Node with rank R exited with code C"
    assert p.returncode == 0 and "exited with code" not in p.stderr, \
        f"rc {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def _float_teacher(path: Path) -> Path:
    """A float checkpoint of CONFIG's shape (another seed) to distil from."""
    from shared.spec.checkpoint import write_checkpoint
    from shared.spec.config import RunConfig
    from shared.spec.init import init_weights
    cfg = RunConfig().with_overrides(CONFIG + ["ternary.enabled=false"])
    write_checkpoint(path, cfg, init_weights(cfg.model, seed=5), writer={"backend": "test"})
    return path


@pytest.mark.parametrize("extra", [[], ["train.grad_accum=2", "train.optimizer=muon", "train.ema_decay=0.9"],
                                   ["TEACHER", "train.distill_alpha=0.7"]],
                         ids=["adamw", "accum-muon-ema", "distill"])
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path, extra):
    if "TEACHER" in extra:  # distillation: every rank runs the same frozen teacher on its own rows
        extra = [f"train.teacher={_float_teacher(tmp_path / 'teacher')}" if e == "TEACHER" else e for e in extra]
    launched = _launch(2, _worker(tmp_path / "dump2", tmp_path / "run2", ["train.batch_size=2", *extra]))
    _check(launched)
    _check(subprocess.run(_worker(tmp_path / "dump1", tmp_path / "run1", ["train.batch_size=4", *extra]),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180))
    r0, r1 = np.load(tmp_path / "dump2/rank0.npz"), np.load(tmp_path / "dump2/rank1.npz")
    one = np.load(tmp_path / "dump1/rank0.npz")
    weights = sorted(k for k in one.files if k.startswith("w/"))
    assert weights and sorted(k for k in r0.files if k.startswith("w/")) == weights

    # every rank reports the same global loss and grad norm, and holds bitwise the same weights
    np.testing.assert_array_equal(r0["loss"], r1["loss"])
    np.testing.assert_array_equal(r0["grad_norm"], r1["grad_norm"])
    for k in weights:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)

    # the same trajectory as one process with batch 2B (the loss moves: not a frozen model)
    assert len(one["loss"]) == 8 and one["loss"][-1] < one["loss"][0] - 0.1
    np.testing.assert_allclose(r0["loss"], one["loss"], rtol=RTOL)
    np.testing.assert_allclose(r0["grad_norm"], one["grad_norm"], rtol=RTOL)
    for k in weights:
        np.testing.assert_allclose(r0[k], one[k], rtol=0, atol=1e-5, err_msg=k)

    # rank 0 alone wrote the run: each step once in metrics.jsonl, the global batch in the summary
    recs = [json.loads(line) for line in (tmp_path / "run2/metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "eval" not in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    np.testing.assert_array_equal([r["loss"] for r in train], r0["loss"])
    summary = json.loads((tmp_path / "run2/summary.json").read_text())
    assert summary["steps"] == 8
    accum = 2 if "train.grad_accum=2" in extra else 1
    assert f"8 steps x {4 * accum} x 32" in launched.stdout  # preflight counts both ranks' windows
    if any(e.startswith("train.teacher=") for e in extra):
        assert "teacher: " in launched.stdout and "(float," in launched.stdout

    # Trainer.agree: true everywhere when true on one rank (rank 1), false when false everywhere
    assert r0["agree"].tolist() == r1["agree"].tolist() == [True, False]
    assert one["agree"].tolist() == [False, False]  # one process: its own flag (rank 0 is not 1)


def test_ranks_that_start_from_different_weights_are_refused(tmp_path):
    p = _launch(2, _worker(tmp_path / "dump", tmp_path / "run", ["train.batch_size=2", "train.steps=1"]),
                RING_TEST_SEED_BY_RANK="1")
    # mlx.launch itself exits 0. Both ranks detect the mismatch; whichever exits first with code 1
    # makes the launcher terminate the other (code -15), so only "some rank exited with 1" is certain.
    assert re.search(r"Node with rank [01] exited with code 1\b", p.stderr), p.stderr[-2000:]
    assert "Node with rank 0 exited with code 0" not in p.stderr and "Node with rank 1 exited with code 0" not in p.stderr
    assert "ranks start from different weights" in p.stdout + p.stderr
    assert not (tmp_path / "run/metrics.jsonl").exists()


def test_a_rank_that_dies_ends_the_job_instead_of_hanging(tmp_path):
    p = _launch(2, _worker(tmp_path / "dump", tmp_path / "run", ["train.batch_size=2", "train.steps=50"]),
                RING_TEST_RANK1_EXITS_AT="3")  # subprocess timeout: a hang fails the test
    assert "Node with rank 1 exited with code 3" in p.stderr
    assert "Node with rank 0 exited with code" in p.stderr  # "[ring] connection to a peer was lost"
    assert not (tmp_path / "run/summary.json").exists() and not (tmp_path / "dump").exists()


def test_setup_without_a_launcher_is_one_process(monkeypatch, tmp_path):
    from ternary_mlx import parallel
    for k in ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.setup() == (0, 1) and parallel.group() is None
    parallel.teardown()
    # `mlx.launch -n 1` sets MLX_RANK with an empty hostfile: one rank, nothing to join
    empty = tmp_path / "hosts.json"
    empty.write_text("\n")
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(empty))
    assert parallel.setup() == (0, 1) and parallel.world_size() == 1
    parallel.teardown()


def test_setup_that_cannot_join_its_group_is_an_error(monkeypatch, tmp_path):
    from ternary_mlx import parallel
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(tmp_path / "missing.json"))
    with pytest.raises(RuntimeError, match="launched as rank 0 .* mx.distributed.init failed"):
        parallel.setup()
    assert parallel.group() is None
