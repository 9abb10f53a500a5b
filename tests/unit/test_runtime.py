"""convert/runtime.py: the `--backend auto` decision, `--threads`, and the first line of a command."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert import runtime
from convert.cli import build_parser
from convert.common import CliError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("system, machine, expected", [
    ("Darwin", "arm64", "mlx"), ("Darwin", "x86_64", "torch"), ("Linux", "x86_64", "torch"),
    ("Linux", "aarch64", "torch"), ("Windows", "AMD64", "torch")])
def test_auto_is_mlx_on_apple_silicon_only(monkeypatch, system, machine, expected):
    monkeypatch.setattr(runtime.platform, "system", lambda: system)
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    name, why = runtime.auto_backend()
    assert name == expected
    assert why.startswith(f"auto: {'macOS' if system == 'Darwin' else system} {machine}, ")
    assert runtime.resolve_backend("auto") == (name, why)


def test_auto_on_linux_says_why_with_and_without_openblas(monkeypatch, tmp_path):
    from convert import blas
    lib = tmp_path / "libblas.so.3"
    monkeypatch.setattr(blas, "openblas_library", lambda: lib)
    assert runtime.auto_backend("Linux", "x86_64") == ("torch", "auto: Linux x86_64, MLX has no fast BLAS here")
    lib.write_bytes(b"")
    assert runtime.auto_backend("Linux", "x86_64")[1].endswith("MLX is for Apple silicon (--backend mlx runs it here on OpenBLAS)")


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_an_explicit_backend_is_kept_on_every_platform(monkeypatch, name):
    for system, machine in (("Linux", "x86_64"), ("Darwin", "arm64")):
        monkeypatch.setattr(runtime.platform, "system", lambda: system)
        monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
        assert runtime.resolve_backend(name) == (name, f"--backend {name}")


def _run_written_by(tmp_path, backend: str):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "manifest.json").write_text(json.dumps({"writer": {"backend": backend}}))
    return tmp_path


def test_auto_resume_continues_on_the_backend_that_wrote_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    run = _run_written_by(tmp_path, "mlx")
    assert runtime.resolve_backend("auto", run) == ("mlx", "auto: --resume continues a run written by mlx")
    assert runtime.resolve_backend("auto", run / "checkpoint")[0] == "mlx"  # the checkpoint itself
    assert runtime.resolve_backend("torch", run)[0] == "torch"  # --backend still wins
    # unreadable or unknown: the platform's choice (train's own checks then report a bad --resume)
    assert runtime.resolve_backend("auto", tmp_path / "absent")[0] == "torch"
    (run / "checkpoint" / "manifest.json").write_text(json.dumps({"writer": {"backend": "jax"}}))
    assert runtime.resolve_backend("auto", run)[0] == "torch"


def test_available_cpus_is_the_affinity_not_the_machine(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 64)
    assert runtime.available_cpus() == 1


def test_threads_default_env_and_limits():
    assert runtime.choose_threads(None, environ={}, cpus=4) == (4, "the CPUs this process may use")
    assert runtime.choose_threads(None, environ={"OMP_NUM_THREADS": "1"}, cpus=4) == (1, "OMP_NUM_THREADS")
    assert runtime.choose_threads(2, environ={"OMP_NUM_THREADS": "1"}, cpus=4) == (2, "--threads")
    assert runtime.choose_threads(4, environ={}, cpus=4) == (4, "--threads")
    with pytest.raises(CliError, match=r"--threads 5: this process may use 4 CPU\(s\)"):
        runtime.choose_threads(5, environ={}, cpus=4)
    for bad in ("0", "-1", "two", "4,2"):
        with pytest.raises(CliError, match="OMP_NUM_THREADS"):
            runtime.choose_threads(None, environ={"OMP_NUM_THREADS": bad}, cpus=4)


@pytest.mark.parametrize("command", [["train"], ["eval", "ck"], ["generate", "ck", "--prompt", "a"], ["demo"]])
@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_threads_below_one_is_an_argument_error_on_every_computing_command(command, value, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--threads", value])
    assert e.value.code == 2 and "argument --threads: expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["eval", "ck"], ["generate", "ck", "--prompt", "a"], ["init", "--out", "o"]])
def test_every_backend_option_defaults_to_auto_and_resolves(monkeypatch, command):
    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    args = build_parser().parse_args(command)
    assert args.backend == "auto"
    runtime.prepare(args)
    assert args.backend == "torch"
    if hasattr(args, "threads"):
        assert args.runtime.backend == "torch" and args.runtime.backend_why.startswith("auto: Linux ")


def test_demo_keeps_both_by_default():
    args = build_parser().parse_args(["demo"])
    runtime.prepare(args)
    assert args.backend == "both" and args.runtime.backend_why == "--backend both"


class _Fake:
    def __init__(self, name, blas=None):
        self.name, self.blas = name, blas

    def describe(self):
        return f"{self.name} 1.0, cpu"


def test_first_line_names_backend_reason_blas_and_threads():
    rt = runtime.Runtime("torch", "auto: Linux x86_64, MLX has no fast BLAS here", 2, "the CPUs this process may use")
    assert runtime.first_line(_Fake("torch"), rt) == (
        "backend: torch (auto: Linux x86_64, MLX has no fast BLAS here; torch 1.0, cpu, 2 threads "
        "(the CPUs this process may use))")
    both = runtime.Runtime("both", "--backend both", 1, "--threads")
    assert runtime.first_line(_Fake("mlx", "bundled"), both, "mlx") == (
        "backend: mlx (--backend both; mlx 1.0, cpu, blas: bundled, 1 thread (--threads))")


def test_torch_gets_the_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    try:
        runtime.apply_threads(argparse.Namespace(name="torch"), 2)
        assert torch.get_num_threads() == 2
        runtime.apply_threads(argparse.Namespace(name="torch"), 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_wait_policy_is_passive_unless_set(given, expected):
    # a fresh process: the policy must be in the environment before torch loads its OpenMP runtime
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": given} if given else {})
    code = "import os; from convert import runtime; runtime.fixed('torch', 't', 1); print(os.environ['OMP_WAIT_POLICY'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
