"""`ternary promote` in a subprocess (the main case with --check), and its check in-process on tiny
configs (data fallback, pass/fail reporting)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.commands import promote_check
from shared.spec.config import RunConfig
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # see tests/e2e/test_train_cli.py: one thread on a busy 2-core machine
TINY = tiny_sets(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                 data=dict(tokenizer="bytes", synthetic_train_bytes=20000, synthetic_val_bytes=5000),
                 train=dict(seq_len=32))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", "promote", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_mac_ablation_to_8xh100_with_check(tmp_path):
    out = tmp_path / "X.toml"
    r = run("mac-ablation", "--target", "8xh100", "--artifact-mb", "16", "--out", str(out), "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    for row in ("parameters", "artifact", "memory/GPU", "FLOPs/token", "step time", "steps", "tokens"):
        assert f"\n  {row} " in r.stdout, row
    assert f"torchrun --standalone --nproc_per_node=8 -m ternary_cuda.train --config {out} --out runs/X-8xh100" in r.stdout
    assert "check: PASS" in r.stdout and "data-limited" in r.stdout
    cfg = RunConfig.load_toml(out)
    assert cfg.model.hidden_size > 512 and cfg.model.hidden_act == "relu2" and cfg.model.head_dim == 64
    assert cfg.train.time_budget_s == 600 and cfg.train.seq_len == 1024
    assert 8 * cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len == 524288
    assert f"{cfg.model.num_hidden_layers} x {cfg.model.hidden_size}" in r.stdout


@pytest.mark.parametrize("args,fragments", [
    (["--target", "4xa100", "--params", "1e8"], ["unknown target '4xa100'", "8xh100", "1xh100", "8xh200"]),
    (["--target", "8xh100", "--params", "1e8", "--artifact-mb", "16"], ["not both"]),
    (["--target", "8xh100"], ["give a budget"]),
    (["--target", "8xh100", "--params", "1000"], ["below the smallest shape"]),
])
def test_errors_exit_2(tmp_path, args, fragments):
    r = run("mac-ablation", *args, "--out", str(tmp_path / "p.toml"), timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "ternary: error: " in r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr
    assert not (tmp_path / "p.toml").exists()


def test_unknown_config_names_presets(tmp_path):
    r = run("mac-ablaton", "--target", "8xh100", "--params", "1e8", "--out", str(tmp_path / "p.toml"), timeout=60)
    assert r.returncode == 2 and "neither a TOML file nor a preset" in r.stderr and "mac-ablation" in r.stderr


def _tiny_promoted(tmp_path, *extra: str) -> Path:
    path = tmp_path / "tiny.toml"
    RunConfig().with_overrides(TINY + list(extra)).save_toml(path)
    return path


def test_check_uses_synthetic_when_the_shards_are_missing(tmp_path):
    cfg = RunConfig.load_toml(_tiny_promoted(tmp_path, f"data.source={tmp_path / 'no-shards'}",
                                             f"data.tokenizer={tmp_path / 'no.model'}", "train.batch_size=16"))
    run_cfg, notes = promote_check.check_config(cfg, full=True)
    assert run_cfg.data.source == "synthetic" and run_cfg.data.tokenizer == "bytes"  # vocab 256 < 512
    assert any("does not exist here: the check trains on the synthetic corpus" in n for n in notes)
    t = run_cfg.train
    assert (t.steps, t.batch_size, t.grad_accum, t.seq_len) == (2, 1, 1, 32)
    assert run_cfg.model == cfg.model


def test_check_reports_a_failure_with_its_error(tmp_path, capsys, monkeypatch):
    """(The PASS path runs for real in test_mac_ablation_to_8xh100_with_check.)"""
    path = _tiny_promoted(tmp_path)
    import shared.train.runner

    def broken(*a, **k):
        raise RuntimeError("simulated out-of-memory")
    monkeypatch.setattr(shared.train.runner, "train", broken)
    assert not promote_check.run_check(path, full=True)
    assert "check: FAIL after" in (o := capsys.readouterr().out) and "RuntimeError: simulated out-of-memory" in o


def test_check_shrinks_depth_when_ram_is_short(tmp_path, monkeypatch):
    cfg = RunConfig.load_toml(_tiny_promoted(tmp_path, "model.num_hidden_layers=8"))
    need = promote_check.check_ram_bytes(cfg.with_overrides(["train.batch_size=1"]))
    monkeypatch.setattr(promote_check, "available_ram", lambda: need * 0.5 / promote_check.CHECK_RAM_FRACTION)
    run_cfg, notes = promote_check.check_config(cfg, full=True)
    assert run_cfg.model.num_hidden_layers < 8 and run_cfg.model.hidden_size == 64
    assert any(n.startswith("MODEL SHRUNK") and "RAM" in n for n in notes)
