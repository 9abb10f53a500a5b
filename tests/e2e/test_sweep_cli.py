"""`ternary sweep` in a subprocess: a 2-variant x 2-seed sweep of a tiny model (a few steps each, one
thread per run) with a packed export, then its resume, its refusals and its report."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.spec.config import RunConfig
from tests.variants import DEFAULT_INIT, tiny_sets

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = [s for s in tiny_sets(initializer_range=DEFAULT_INIT,
                             data=dict(tokenizer="bytes", synthetic_train_bytes=100000, synthetic_val_bytes=20000),
                             train=dict(batch_size=4, seq_len=32, eval_every=0, eval_tokens=2000, log_every=2))
        if not s.startswith(("train.steps=", "train.seed="))]
JOBS = 2 if len(os.sched_getaffinity(0)) >= 2 else 1


def spec_text(out: Path, variants: str = 'plain = []\nrelu2 = ["model.hidden_act=relu2"]\n', steps: int = 4) -> str:
    return (f'out = "{out}"\nseeds = [0, 1]\nbackend = "torch"\n[base]\nset = {json.dumps(TINY)}\n'
            f'[budget]\nsteps = {steps}\n[variants]\n{variants}[export]\nargs = ["--compress", "zstd"]\n')


def sweep(spec: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", "sweep", str(spec), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    spec = d / "spec.toml"
    spec.write_text(spec_text(d / "out"))
    r = sweep(spec, "--jobs", str(JOBS))
    assert r.returncode == 0, r.stdout + r.stderr
    return spec, d / "out", r


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sweep_writes_every_run_and_the_report(done_sweep):
    spec, out, r = done_sweep
    recs = results(out)
    assert [(x["variant"], x["seed"]) for x in recs] == [("plain", 0), ("plain", 1), ("relu2", 0), ("relu2", 1)]
    for x in recs:
        run = out / "runs" / x["run"]
        saved = RunConfig.load_toml(run / "config.toml")
        assert saved.train.seed == x["seed"] and saved.train.steps == 4 and x["steps"] == 4
        assert saved.model.hidden_act == ("relu2" if x["variant"] == "relu2" else "silu")
        assert x["val_bpb"] == json.loads((run / "summary.json").read_text())["val_bpb"]
        assert x["artifact_bytes"] == (out / "artifacts" / f"{x['run']}.tpk").stat().st_size
        assert abs(x["roundtrip_bpb"] - x["val_bpb"]) < 0.05  # packed keeps the ternary codes
    for name in ("results.md", "sweep.png", "winner.toml"):
        assert (out / name).stat().st_size > 0
    assert "[4/4]" in r.stdout and "Welch" in r.stdout


def test_table_is_recomputed_from_results_jsonl(done_sweep):
    import numpy as np
    _, out, _ = done_sweep
    recs = results(out)
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")][1:]
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines)}
    bpb = {v: np.array([x["val_bpb"] for x in recs if x["variant"] == v]) for v in ("plain", "relu2")}
    for v, row in rows.items():
        assert row[2] == f"{bpb[v].mean():.4f} ± {bpb[v].std(ddof=1):.4f}"
        size = np.mean([x["artifact_bytes"] for x in recs if x["variant"] == v])
        assert row[7] == f"{size:,.0f}"
    assert rows["relu2"][3].startswith(f"{bpb['relu2'].mean() - bpb['plain'].mean():+.4f} [")


def test_winner_toml_is_the_winners_config_and_promote_takes_it(done_sweep, tmp_path):
    _, out, _ = done_sweep
    recs = results(out)
    means = {v: sum(x["val_bpb"] for x in recs if x["variant"] == v) / 2 for v in ("plain", "relu2")}
    best = min(means, key=means.get)
    cfg = RunConfig.load_toml(out / "winner.toml")
    assert cfg == RunConfig.load_toml(out / "runs" / f"{best}-seed0" / "config.toml")
    r = subprocess.run([sys.executable, "-m", "convert.cli", "promote", str(out / "winner.toml"), "--target",
                        "1xh100", "--params", "20M", "--out", str(tmp_path / "p.toml")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(JOBS < 2, reason="needs two CPUs")
def test_jobs_2_runs_two_processes_on_their_own_cores(done_sweep):
    _, out, _ = done_sweep
    recs = results(out)
    first, second = recs[0], recs[1]  # started together, one per slot
    assert first["cpus"] != second["cpus"] and len(first["cpus"]) == len(second["cpus"]) == 1
    assert first["pids"][0] != second["pids"][0]
    assert first["started"] < second["ended"] and second["started"] < first["ended"]  # at the same time


def test_resume_skips_finished_runs_and_finishes_the_others(done_sweep, tmp_path):
    spec, out0, _ = done_sweep
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    spec2 = tmp_path / "spec.toml"
    spec2.write_text(spec_text(out))
    before = {x["run"]: x for x in results(out)}
    # plain-seed0: done (skipped). plain-seed1: finished but its marker lost (harvested, not trained).
    # relu2-seed0: interrupted with a checkpoint (resumed). relu2-seed1: killed before any save (restarted).
    (out / "done" / "plain-seed1.json").unlink()
    (out / "done" / "relu2-seed0.json").unlink()
    (out / "runs" / "relu2-seed0" / "summary.json").unlink()
    (out / "done" / "relu2-seed1.json").unlink()
    for name in ("summary.json", "loss.png"):
        (out / "runs" / "relu2-seed1" / name).unlink()
    shutil.rmtree(out / "runs" / "relu2-seed1" / "checkpoint")
    marker = out / "done" / "plain-seed0.json"
    mtime, log_size = marker.stat().st_mtime_ns, (out / "logs" / "plain-seed0.log").stat().st_size
    harvested_log = (out / "logs" / "plain-seed1.log").read_text()
    r = sweep(spec2, "--jobs", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 already done (skipped)" in r.stdout
    assert marker.stat().st_mtime_ns == mtime and (out / "logs" / "plain-seed0.log").stat().st_size == log_size
    assert "$ convert.cli train" not in (out / "logs" / "plain-seed1.log").read_text()[len(harvested_log):]
    assert "--resume" in (out / "logs" / "relu2-seed0.log").read_text().split("$ ")[-3]
    assert "--overwrite" in (out / "logs" / "relu2-seed1.log").read_text()
    after = {x["run"]: x for x in results(out)}
    assert set(after) == set(before)
    for run in before:  # the same seeds and steps give the same model, however the run got there
        assert after[run]["val_bpb"] == pytest.approx(before[run]["val_bpb"], abs=1e-6), run


def test_a_directory_it_did_not_write_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(out))
    r = sweep(spec)
    assert r.returncode == 2 and "not a sweep directory" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"


def test_another_specs_sweep_directory_is_refused(done_sweep, tmp_path):
    _, out, _ = done_sweep
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(out, steps=5))
    listing = sorted(p.name for p in out.rglob("*"))
    r = sweep(spec)
    assert r.returncode == 2 and "a sweep of a different spec" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == listing


def test_a_bad_override_is_one_line_before_anything_runs(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tmp_path / "out", variants='plain = []\nwide = ["model.hiden_size=128"]\n'))
    r = sweep(spec)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("ternary: error: ")
    assert "variant 'wide'" in line and "hiden_size" in line and "hidden_size" in line
    assert not (tmp_path / "out").exists()


def test_bad_export_args_and_too_many_jobs_are_refused_before_anything_runs(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tmp_path / "out").replace('"--compress", "zstd"', '"--compress", "brotli"'))
    r = sweep(spec)
    assert r.returncode == 2 and "export.args" in r.stderr and "brotli" in r.stderr, r.stderr
    spec.write_text(spec_text(tmp_path / "out"))
    r = sweep(spec, "--jobs", str(len(os.sched_getaffinity(0)) + 1))
    assert r.returncode == 2 and "CPU(s)" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_saves_each_running_run_and_exits_130(tmp_path):
    import signal
    import time
    from convert.sweep_runs import RunFiles, state
    out = tmp_path / "out"
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(out, variants="plain = []\n", steps=100000).split("[export]")[0])
    p = subprocess.Popen([sys.executable, "-m", "convert.cli", "sweep", str(spec), "--jobs", str(JOBS)], cwd=ROOT,
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    metrics = [RunFiles(out, f"plain-seed{s}").run_dir / "metrics.jsonl" for s in (0, 1)][:JOBS]
    deadline = time.time() + 240
    while not all(m.exists() and m.stat().st_size for m in metrics) and time.time() < deadline:
        time.sleep(0.5)  # both runs are training: their first losses are written
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 130, stdout + stderr
    assert "resume with: ternary sweep" in stderr
    for s in range(JOBS):
        files = RunFiles(out, f"plain-seed{s}")
        assert state(files) == "resume", (stdout, stderr)  # a checkpoint, no done marker
        saved = json.loads((files.run_dir / "checkpoint" / "trainer_state.json").read_text())
        assert saved["saved_because"] == "interrupted" and 0 < saved["step"] < 100000
