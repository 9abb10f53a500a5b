"""`ternary train --out` onto an existing directory (shared/train/run_dir.py), in a subprocess: an
existing run is refused unless --resume continues it or --overwrite starts it afresh, and
--overwrite deletes only what a run writes, never anything else and never what the run reads."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_train_cli import ENV, ROOT, TINY, assert_user_error, run, step_losses, train

BACKEND = "torch"  # the faster of the two on the CPU; the run directory logic is backend-neutral


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under `d` (relative path -> bytes): what a refused command must leave as it was."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("ternary: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train(out, BACKEND)
    return out


@pytest.fixture
def existing(finished, tmp_path) -> Path:
    """A copy of a finished 12-step run, for a test to try to overwrite."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("train", "--backend", BACKEND, "--set", *TINY, "--no-progress", "--out", str(out), *extra)


def test_an_existing_run_is_refused_and_kept(existing):
    before = snapshot(existing)
    r = _train(existing)
    assert_user_error(r, "an existing run", f"--resume {existing}", "--overwrite")
    one_error_line(r)
    assert snapshot(existing) == before  # metrics.jsonl not appended to, checkpoint not replaced


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    r = _train(tmp_path)
    assert_user_error(r, "notes.txt", "which a training run does not write")
    assert snapshot(tmp_path) == {"notes.txt": b"precious"}


def test_overwrite_starts_the_run_afresh(existing):
    r = _train(existing, "--overwrite", "--set", "train.steps=6")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [json.loads(line).get("step") for line in (existing / "metrics.jsonl").read_text().splitlines()]
    assert sorted(step_losses(existing)) == list(range(1, 7))
    assert len([s for s in steps if s is not None]) == 6  # one run, not two appended
    assert json.loads((existing / "summary.json").read_text())["steps"] == 6
    assert not (existing / ".lock").exists()


@pytest.mark.parametrize("foreign", ["notes.txt", "checkpoint/notes.txt", "plots/"])
def test_overwrite_refuses_what_a_run_does_not_write(existing, foreign):
    path = existing / foreign.rstrip("/")
    if foreign.endswith("/"):
        path.mkdir()
        (path / "a.png").write_bytes(b"mine")
    else:
        path.write_text("precious")
    before = snapshot(existing)
    r = _train(existing, "--overwrite")
    assert_user_error(r, foreign.split("/")[0], "nothing was changed")
    assert snapshot(existing) == before


@pytest.mark.parametrize("how", ["resume", "init", "config"])
def test_overwrite_never_deletes_what_the_run_reads(existing, how):
    before = snapshot(existing)
    args = {"resume": ["--resume", str(existing)], "init": ["--init", str(existing / "checkpoint")],
            "config": ["--config", str(existing / "config.toml")]}[how]
    r = run("train", "--backend", BACKEND, *args, "--no-progress", "--out", str(existing), "--overwrite")
    assert_user_error(r, "--overwrite", "which it would delete")
    assert snapshot(existing) == before


def test_resume_continues_in_place(existing):
    r = run("train", "--backend", BACKEND, "--resume", str(existing), "--set", "train.steps=15", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(step_losses(existing)) == list(range(1, 16))


def test_the_module_entry_point_refuses_too(existing):
    before = snapshot(existing)
    r = subprocess.run([sys.executable, "-m", "ternary_cuda.train", "--set", *TINY, "--no-progress",
                        "--out", str(existing)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "an existing run" in r.stderr, r.stdout + r.stderr
    assert snapshot(existing) == before
