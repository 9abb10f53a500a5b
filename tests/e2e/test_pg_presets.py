"""`ternary train --preset pg-baseline` / `pg-ternary` validate and run (2 small steps on the CPU), and
the run's resolved config is parameter-golf's (the preset's values survive the run)."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

SMALL = ["train.steps=2", "train.batch_size=1", "train.grad_accum=1", "train.seq_len=64", "train.eval_tokens=64",
         "train.eval_every=0"]


@pytest.mark.parametrize("preset, expect", [
    ("pg-baseline", {("model", "unet_skips"): True, ("model", "rms_norm_weights"): False,
                     ("ternary", "enabled"): False, ("train", "warmdown_steps"): 1200}),
    ("pg-ternary", {("model", "embed_dim"): 254, ("model", "final_logit_softcapping_type"): "poly",
                    ("ternary", "float_qat"): "fp8", ("ternary", "group_size"): 128,
                    ("train", "muon_ns_steps"): 3, ("train", "eval_stride"): 16}),
])
def test_pg_preset_trains_two_steps(tmp_path, preset, expect):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "convert.cli", "train", "--preset", preset, "--backend", "torch",
                        "--threads", "1", "--out", str(out), "--set", *SMALL], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    cfg = tomllib.loads((out / "config.toml").read_text())
    for (section, key), value in expect.items():
        assert cfg[section][key] == value, (section, key)
