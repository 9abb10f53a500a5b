"""One training at a time in a run directory (shared/train/run_dir.py): `.lock`, flock'ed for the
whole run; a second `ternary train` into the same --out fails at once naming the holder, a lock
left by a dead process is taken over, and the default run directory never lands on an existing one."""
from __future__ import annotations

import datetime
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.train import run_dir, runner
from shared.train.runner import TrainOptions, default_out_dir
from tests.e2e.test_train_cli import ENV, ROOT, TINY, cli, run

BACKEND = "torch"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_training_into_a_busy_run_directory_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(cli("train", "--backend", BACKEND, "--set", *TINY, "train.steps=100000",
                                 "train.eval_every=0", "train.log_every=1", "--no-progress", "--out", str(out)),
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (out / "metrics.jsonl").exists() and '"step"' in (out / "metrics.jsonl").read_text():
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        for extra in ((), ("--overwrite",)):
            t0 = time.monotonic()
            second = run("train", "--backend", BACKEND, "--set", *TINY, "--no-progress", "--out", str(out), *extra)
            assert second.returncode == 2, second.stdout + second.stderr
            errors = [line for line in second.stderr.splitlines() if line.startswith("ternary: error:")]
            assert len(errors) == 1 and "in use by another training" in errors[0], second.stderr
            assert f"pid {first.pid} on " in errors[0]
            assert time.monotonic() - t0 < 60  # at once: no training, no waiting for the lock
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no second run interleaved
    assert not (out / ".lock").exists()  # released on exit


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "h", "started": "earlier"}))
    r = run("train", "--backend", BACKEND, "--set", *TINY, "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "took over the stale lock of pid" in r.stdout
    assert not (out / ".lock").exists()


def test_lock_and_release(tmp_path):
    out = tmp_path / "new"
    lock = run_dir.acquire(out)
    rec = json.loads((out / ".lock").read_text())
    assert rec["pid"] == os.getpid() and rec["host"] and rec["started"]
    with pytest.raises(run_dir.RunDirError, match=f"in use by another training \\(pid {os.getpid()} "):
        run_dir.acquire(out)  # another open file description: refused like another process
    lock.release()
    assert not out.exists()  # it created the directory, which is still empty


@pytest.mark.parametrize("alive", [True, False])
def test_without_flock_the_pid_decides(tmp_path, monkeypatch, alive):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_dir.fcntl, "flock", no_flock)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) if alive else None
    try:
        tmp_path.joinpath(".lock").write_text(json.dumps({"pid": holder.pid if alive else _dead_pid(),
                                                          "host": run_dir.socket.gethostname()}))
        if alive:
            with pytest.raises(run_dir.RunDirError, match=f"pid {holder.pid}"):
                run_dir.acquire(tmp_path)
        else:
            lock = run_dir.acquire(tmp_path)
            assert "checked by its pid only" in lock.note
            lock.release()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_the_default_run_directory_is_never_an_existing_one(tmp_path, monkeypatch):
    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2025, 1, 2, 3, 4, 5)
    monkeypatch.setattr(runner.datetime, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    first = default_out_dir(TrainOptions(preset="smoke"), "torch")
    assert first == Path("runs/smoke-torch-20250102-030405")
    first.mkdir(parents=True)
    second = default_out_dir(TrainOptions(preset="smoke"), "torch")
    assert second == Path("runs/smoke-torch-20250102-030405-2")
