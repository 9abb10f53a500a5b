"""`ternary train / eval / generate / tokenizer / data` in a subprocess, on a tiny model (seconds each).

Runs are shared by module-scoped fixtures: one 12-step run per backend is the reference for the
artifacts, resume, eval and generate tests.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.data.corpus import SyntheticCorpus
from tests.variants import DEFAULT_INIT, tiny_sets

ROOT = Path(__file__).resolve().parents[2]
# One thread: these models are tiny, and on a busy 2-core machine torch's second OpenMP thread
# spin-waits for a core (a 12-step run measured 19 s with 2 threads, 3 s with 1).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# the initializer range a real run starts from: these trajectory tolerances were measured there
TINY = tiny_sets(initializer_range=DEFAULT_INIT,
                 data=dict(tokenizer="bytes", synthetic_train_bytes=100000, synthetic_val_bytes=20000),
                 train=dict(steps=12, batch_size=4, seq_len=32, eval_every=6, eval_tokens=2000, log_every=3))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "convert.cli", *args]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def train(out: Path, backend: str, *sets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    r = run("train", "--backend", backend, "--set", *TINY, *sets, "--no-progress", "--out", str(out), *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def step_losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "step" in r and "loss" in r}


def assert_user_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "ternary: error: " in r.stderr, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


@pytest.fixture(scope="module", params=["mlx", "torch"])
def full_run(request, tmp_path_factory):
    """(backend, run dir, completed process) of an uninterrupted 12-step run with a checkpoint at 6."""
    out = tmp_path_factory.mktemp(f"full-{request.param}") / "run"
    return request.param, out, train(out, request.param, "train.checkpoint_every=6")


@pytest.fixture(scope="module")
def mlx_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlx") / "run"
    train(out, "mlx")
    return out


@pytest.fixture(scope="module")
def sp_files(tmp_path_factory):
    """(text file, tokenizer .model, prepared data dir) from `tokenizer train` + `data prepare`."""
    d = tmp_path_factory.mktemp("sp")
    words = SyntheticCorpus(1).generate(120_000, "train").split(" ")
    text = d / "corpus.txt"
    text.write_text("\n".join(" ".join(words[i:i + 30]) for i in range(0, len(words), 30)) + "\n")
    r = run("tokenizer", "train", str(text), "--vocab-size", "300", "--out", str(d / "tok" / "mine"))
    assert r.returncode == 0, r.stdout + r.stderr
    model = d / "tok" / "mine.model"
    assert f"wrote {model}" in r.stdout and "sha256" in r.stdout and "vocab size  300" in r.stdout
    r = run("data", "prepare", str(text), "--tokenizer", str(model), "--out", str(d / "data"),
            "--val-bytes", "10000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train " in r.stdout and "val " in r.stdout and "tokens" in r.stdout
    man = json.loads((d / "data" / "manifest.json").read_text())
    assert man["tokenizer"]["name"] == "mine" and man["splits"]["val"]["tokens"] > 1000
    return text, model, d / "data"


# ---- train --------------------------------------------------------------------------------------
def test_train_writes_the_run_directory(full_run):
    backend, out, r = full_run
    for name in ("config.toml", "metrics.jsonl", "summary.json", "loss.png", "checkpoint/manifest.json",
                 "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/trainer_state.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == backend and summary["steps"] == 12 and summary["stopped_because"] == "finished"
    assert "val_bpb" in r.stdout and "source entropy" in r.stdout and "gap" in r.stdout
    assert f"{summary['val_bpb']:.4f}" in r.stdout
    assert set(step_losses(out)) == set(range(1, 13))


def test_resume_continues_exactly(full_run, tmp_path):
    backend, full, _ = full_run
    part = tmp_path / "run"
    train(part, backend, "train.steps=6")
    r = run("train", "--backend", backend, "--resume", str(part), "--set", "train.steps=12", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming from" in r.stdout and "at step 6" in r.stdout
    a, b = step_losses(full), step_losses(part)
    assert sorted(b) == list(range(1, 13))
    for s in range(7, 13):
        if backend == "torch":
            assert b[s] == a[s], (s, a[s], b[s])
        else:
            assert b[s] == pytest.approx(a[s], abs=1e-6), (s, a[s], b[s])
    assert json.loads((part / "summary.json").read_text())["steps"] == 12


def test_resume_takes_its_config_from_the_checkpoint(mlx_run):
    assert_user_error(run("train", "--resume", str(mlx_run), "--preset", "smoke"), "--resume")
    assert_user_error(run("train", "--resume", str(mlx_run), "--set", "model.hidden_size=128"),
                      "model.* cannot change")


def test_ctrl_c_saves_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    args = cli("train", "--set", *TINY, "train.steps=100000", "train.eval_every=0", "train.log_every=1",
               "--no-progress", "--out", str(out))
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            m = out / "metrics.jsonl"
            if m.exists() and m.read_text().count('"step"') >= 3:
                break
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "Ctrl-C" in stdout and "checkpoint saved" in stdout
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["saved_because"] == "interrupted" and state["step"] > 0
    step = state["step"]
    assert max(step_losses(out)) == step
    r = run("train", "--resume", str(out), "--set", f"train.steps={step + 3}", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"at step {step}" in r.stdout
    assert sorted(step_losses(out)) == list(range(1, step + 4))
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 3


def test_non_finite_loss_exits_1(tmp_path):
    r = run("train", "--set", *TINY, "ternary.enabled=false", "train.lr=1e30", "train.warmup_steps=0",
            "train.grad_clip=0", "--no-progress", "--out", str(tmp_path / "run"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ternary: error: loss or gradient norm is not finite" in r.stderr and "Traceback" not in r.stderr


# ---- eval / generate ----------------------------------------------------------------------------
def test_eval_matches_the_training_summary(mlx_run):
    summary = json.loads((mlx_run / "summary.json").read_text())
    for backend in ("mlx", "torch"):
        r = run("eval", str(mlx_run), "--backend", backend, "--max-tokens", "2000", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        ev = json.loads(r.stdout)  # the whole stdout is one JSON object
        assert ev["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-6), backend
        assert ev["weights"] == "latent"
        assert ev["tokens"] == summary["val_tokens"] == 2000
        assert "no test-time training" in ev["mode"] and "non-overlapping" in ev["mode"]
        assert ev["entropy_gap_bpb"] == pytest.approx(summary["entropy_gap_bpb"], abs=1e-6)


def test_eval_reads_a_packed_artifact_for_the_round_trip_score(mlx_run, tmp_path):
    """S15: the exported artifact is scored next to the training checkpoint; fp16 scales move the
    score only slightly, and the codes are the same."""
    packed, int8 = tmp_path / "model.tpk", tmp_path / "model-int8.tpk"
    r = run("convert", str(mlx_run), "--to", "packed", "--out", str(packed))
    assert r.returncode == 0, r.stdout + r.stderr
    # the int8 float embedding (per-row absmax) and zstd: the smallest artifact scores too
    r = run("convert", str(mlx_run), "--to", "packed", "--out", str(int8), "--floats", "int8", "--compress", "zstd")
    assert r.returncode == 0, r.stdout + r.stderr
    scores = {}
    for name, src in (("ckpt", mlx_run), ("packed", packed), ("int8", int8)):
        r = run("eval", str(src), "--max-tokens", "2000", "--json", "--backend", "mlx")
        assert r.returncode == 0, r.stdout + r.stderr
        scores[name] = json.loads(r.stdout)
    assert scores["packed"]["weights"] == scores["int8"]["weights"] == "packed"
    assert scores["packed"]["val_bpb"] == pytest.approx(scores["ckpt"]["val_bpb"], abs=5e-3)
    assert scores["packed"]["val_bpb"] != scores["ckpt"]["val_bpb"]  # really the fp16 artifact
    assert scores["int8"]["val_bpb"] == pytest.approx(scores["ckpt"]["val_bpb"], abs=5e-3)
    assert scores["int8"]["val_bpb"] != scores["packed"]["val_bpb"]  # really int8 floats


def test_eval_uses_the_ema_weights_the_run_evaluated(tmp_path):
    out = tmp_path / "run"
    train(out, "mlx", "train.ema_decay=0.9", "train.eval_every=0")
    summary = json.loads((out / "summary.json").read_text())
    r = run("eval", str(out), "--max-tokens", "2000", "--json", "--backend", "mlx")  # the run's own backend
    assert r.returncode == 0, r.stdout + r.stderr
    ev = json.loads(r.stdout)
    assert ev["weights"] == "ema" and ev["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-6)
    r = run("eval", str(out), "--max-tokens", "2000", "--json", "--no-ema", "--backend", "mlx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["weights"] == "latent"


def test_eval_text_report_and_sliding_windows(mlx_run):
    r = run("eval", str(mlx_run / "checkpoint"), "--max-tokens", "500", "--stride", "8", "--seq-len", "32",
            "--backend", "mlx")
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("val_loss", "val_bpb", "perplexity", "tokens", "bytes", "source entropy", "gap"):
        assert key in r.stdout, key
    assert "sliding windows of 32 tokens, stride 8" in r.stdout and "no test-time training" in r.stdout
    assert_user_error(run("eval", str(mlx_run), "--seq-len", "1000"), "max_position_embeddings")


def test_generate_prints_prompt_and_continuation(mlx_run):
    r = run("generate", str(mlx_run), "--prompt", "the ", "--max-new-tokens", "12", "--seed", "1", "--backend", "mlx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("the ") and len(r.stdout.rstrip("\n")) > len("the ")
    r2 = run("generate", str(mlx_run), "--prompt", "the ", "--max-new-tokens", "12", "--seed", "1",
             "--backend", "torch")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout.startswith("the ")


def test_eval_refuses_data_from_another_tokenizer(mlx_run, sp_files):
    _, _, data = sp_files
    r = run("eval", str(mlx_run), "--data", str(data))
    assert_user_error(r, "'mine'", "'bytes'")


# ---- tokenizer / data ---------------------------------------------------------------------------
def test_tokenizer_and_data_then_train_on_them(sp_files, tmp_path):
    text, model, data = sp_files
    out = tmp_path / "run"
    r = run("train", "--set", *TINY, f"data.source={data}", f"data.tokenizer={model}", "model.vocab_size=300",
            "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"data: {data}" in r.stdout and "val_bpb" in r.stdout
    assert "source entropy" not in r.stdout  # a prepared corpus has no known entropy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["entropy_bpb"] is None
    # The existing outputs are never replaced silently.
    assert_user_error(run("tokenizer", "train", str(text), "--vocab-size", "300", "--out", str(model)[:-6]),
                      "--force")
    assert_user_error(run("data", "prepare", str(text), "--tokenizer", str(model), "--out", str(data)),
                      "already exists")
    assert_user_error(run("data", "prepare", str(text), "--tokenizer", "byts", "--out", str(tmp_path / "d")),
                      "did you mean 'bytes'?")
