"""The `ternary` command line, run in a subprocess as a user would (python -m convert.cli ...)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.blas import openblas_library
from shared.spec.config import RunConfig
from shared.spec.presets import PRESETS
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("train", "eval", "generate", "presets", "config", "init", "demo", "tokenizer", "data", "import-hf",
               "inspect", "convert", "promote", "sweep")
# A model small enough that a demo with both backends takes a few seconds on 2 cores (one layer).
TINY = ["--set", *tiny_sets(num_hidden_layers=1)]
SHORT = ["--seq-len", "16"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def assert_user_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("ternary: error: ") or "\nternary: error: " in r.stderr, r.stderr
    for f in fragments:
        assert f in r.stderr


def test_help_on_every_subcommand():
    top = run("--help")
    assert top.returncode == 0 and "examples:" in top.stdout
    for cmd in SUBCOMMANDS:
        assert cmd in top.stdout
        r = run(cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "examples:" in r.stdout and f"ternary {cmd}" in r.stdout
    for cmd in (("tokenizer", "train"), ("data", "prepare")):
        r = run(*cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "examples:" in r.stdout and f"ternary {' '.join(cmd)} " in r.stdout


def test_presets_lists_every_preset():
    r = run("presets")
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.splitlines()[1:] if line and not line[0].isspace()}
    assert listed == set(PRESETS)


def test_config_prints_resolved_toml_with_override(tmp_path):
    r = run("config", "--preset", "smoke", "--set", "train.lr=1e-3")
    assert r.returncode == 0, r.stderr
    assert "lr = 0.001" in r.stdout.splitlines()
    assert "head_dim = 64" in r.stdout  # resolved (256 / 4 heads), not left implicit
    out = tmp_path / "run.toml"
    r = run("config", "--preset", "smoke", "--set", "train.lr=1e-3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert RunConfig.load_toml(out).train.lr == 1e-3
    r = run("config", "--config", str(out), "--set", "model.num_hidden_layers=2")
    assert r.returncode == 0 and "num_hidden_layers = 2" in r.stdout


def test_typo_and_missing_files_are_clean_errors(tmp_path):
    assert_user_error(run("config", "--preset", "smoke", "--set", "train.lrr=1e-3"),
                      "'lrr'", "did you mean 'lr'?")
    assert_user_error(run("config", "--preset", "smok"), "did you mean 'smoke'?")
    assert_user_error(run("config", "--config", str(tmp_path / "absent.toml")), "not found")
    assert_user_error(run("demo", "--ckpt", str(tmp_path)), "no manifest.json")


def test_init_then_demo_from_checkpoint_on_both_backends(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = run("init", "--preset", "smoke", *TINY, "--seed", "3", "--out", str(ckpt))
    assert r.returncode == 0, r.stderr
    assert (ckpt / "manifest.json").exists() and (ckpt / "model.safetensors").exists()
    r = run("demo", "--ckpt", str(ckpt), "--backend", "both", *SHORT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "max |logit difference|" in r.stdout and "within tolerance" in r.stdout
    assert r.stdout.count("7/7 ternary weights bit-identical") == 2  # q k v o gate up down (SwiGLU), per backend
    assert r.stdout.rstrip().endswith("result: ok")
    # A checkpoint is never silently replaced: --force is needed.
    assert_user_error(run("init", "--preset", "smoke", *TINY, "--out", str(ckpt)), "--force")
    r = run("init", "--preset", "smoke", *TINY, "--out", str(ckpt), "--force", "--backend", "torch")
    assert r.returncode == 0, r.stderr


def test_init_refuses_to_overwrite_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    assert_user_error(run("init", *TINY, "--out", str(tmp_path), "--force"), "not a checkpoint")
    assert (tmp_path / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_demo_smoke_preset_passes():
    r = run("demo", "--preset", "smoke")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loss" in r.stdout and "ln(vocab)" in r.stdout and "max |logit difference|" in r.stdout


def test_demo_with_8bit_activations_says_why_it_skips_the_parity_check():
    r = run("demo", *TINY, "ternary.activation_bits=8", *SHORT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not checked" in r.stdout and "8-bit activations" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenBLAS preload is Linux-only")
def test_demo_runs_mlx_with_openblas_preloaded_when_installed():
    lib = openblas_library()
    if lib is None or not lib.exists():
        pytest.skip(f"{lib} is not installed (apt-get install libopenblas0-pthread)")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = run("demo", "--backend", "mlx", *TINY, *SHORT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", blas: openblas (preloaded), " in r.stdout.splitlines()[0]  # the first line: backend, blas, threads
    r = run("--no-fast-blas", "demo", "--backend", "mlx", *TINY, *SHORT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", blas: bundled, " in r.stdout.splitlines()[0]


def test_console_script_reexecutes_itself_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "ternary"
    lib = openblas_library()
    if not script.exists() or lib is None or not lib.exists():
        pytest.skip("needs the installed `ternary` script and Debian's OpenBLAS")
    (tmp_path / "convert").mkdir()  # a user's own `convert` package must not shadow ours
    (tmp_path / "convert" / "__init__.py").write_text("raise ImportError('wrong convert')\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run([str(script), "demo", "--backend", "mlx", *TINY, *SHORT], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    # (the script runs the code its venv installed, which may be another checkout's: any line)
    assert "blas: openblas (preloaded)" in r.stdout


def test_fast_blas_hint_when_missing_and_no_loop_when_preloaded(tmp_path, monkeypatch, capsys):
    from convert import blas
    monkeypatch.setattr(blas, "openblas_library", lambda: tmp_path / "libblas.so.3")
    blas.ensure_fast_blas(["demo"])  # missing: one hint line, then go on
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and blas.INSTALL_HINT in err
    (tmp_path / "libblas.so.3").write_bytes(b"")
    monkeypatch.setenv("LD_PRELOAD", f"/other/lib.so:{tmp_path / 'libblas.so.3'}")
    monkeypatch.setattr(blas.os, "execve", lambda *a: pytest.fail("re-executed although preloaded"))
    blas.ensure_fast_blas(["demo"])  # already preloaded: returns
    assert capsys.readouterr().err == ""
