"""bench/cuda_step.py on the CPU (--device cpu --tiny): every section runs and its JSON is sane; a failing
section records its error and the others still run; the FLOP formula's N is what torch counts. The GPU run
itself is for a machine with CUDA (bench/README.md)."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
cuda_step = importlib.import_module("cuda_step")
parts = importlib.import_module("cuda_step_parts")

from tests.variants import variant_config  # noqa: E402
from ternary_cuda import parallel  # noqa: E402
from ternary_cuda.model import Model  # noqa: E402

SECTIONS = ["machine", "config", "flops", "eager", "compiled", "compile_equal", "bf16_vs_fp32", "summary"]
FAST = ["--device", "cpu", "--tiny", "--warmup", "1", "--eager-steps", "2", "--compiled-steps", "2"]


def _run(tmp_path, monkeypatch, capsys, extra=()) -> dict:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # main sets it for --device cpu: restored after the test
    monkeypatch.setattr(parallel, "device", lambda: torch.device("cpu"))  # torch is loaded: CPU also on a GPU machine
    out = tmp_path / "cuda_step.json"
    assert cuda_step.main([*FAST, "--json-out", str(out), *extra]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed and not list(tmp_path.glob("*.tmp"))
    return printed


def test_every_section_runs_on_the_cpu(tmp_path, monkeypatch, capsys):
    d = _run(tmp_path, monkeypatch, capsys)
    assert [k for k in d if k in SECTIONS] == SECTIONS
    assert not [k for k in SECTIONS if "error" in d[k]], {k: d[k].get("error") for k in SECTIONS}
    assert d["config"]["model"]["embed_dim"] == 64 and d["config"]["train"]["optimizer"] == "muon"
    assert d["config"]["tokens_per_step"] == 4 * 64
    f = d["flops"]
    assert f["flops_per_token"] == 6 * f["N_matmul_weights"] + 12 * 2 * 64 * 4 * 32
    assert f["counted_matmul_over_6N"] == 1.0  # torch's count of the matmuls is the formula's 6 N
    for row in ("eager", "compiled"):
        r = d[row]
        assert r["timed_steps"] == 2 and len(r["losses"]) == 1 + 1 + 2 and len(r["first_steps_ms"]) == 2
        assert r["tokens_per_s"] == pytest.approx(256 / (r["ms_per_step"] / 1e3), rel=1e-3)
        assert r["ms_min"] <= r["ms_per_step"] <= r["ms_max"] and r["mfu"] is None  # no peak known for a CPU
        assert all(np.isfinite(r["losses"])) and r["host_max_rss_bytes"] > 0
        assert "CPU" in r["trainer_notes"][0]
    assert d["compiled"]["compiled"] is False  # the trainer compiles on CUDA only: said, not hidden
    assert d["eager"]["losses"] == d["compiled"]["losses"]  # the same batches from the same seed
    eq, bf = d["compile_equal"], d["bf16_vs_fp32"]
    assert eq["loss_max_abs_diff"] == 0.0 and eq["logits"]["max_abs"] == 0.0 and eq["within_tolerance"]
    assert 0 < bf["logits"]["mean_abs"] <= bf["logits"]["max_abs"] < d["tolerances"]["logits_max_abs"]
    assert bf["within_tolerance"] and bf["loss_abs_diff"] == pytest.approx(abs(bf["loss_fp32"] - bf["loss_bf16"]))
    s = d["summary"]
    assert s["row"] in ("eager", "compiled") and s["tokens_per_s"] == d[s["row"]]["tokens_per_s"]
    assert s["goal_met"] is False and s["full_shape"] is False
    assert d["record"]["tokens_per_s_per_gpu"] == pytest.approx(524288 / 0.0918 / 8)


def test_a_failing_section_leaves_the_others(tmp_path, monkeypatch, capsys):
    def broken(self):
        raise RuntimeError("planted")
    monkeypatch.setattr(parts.Run, "eager", broken)
    d = _run(tmp_path, monkeypatch, capsys)
    assert d["eager"]["error"] == "RuntimeError: planted" and "traceback" in d["eager"]
    assert "error" not in d["compiled"] and "error" not in d["bf16_vs_fp32"]
    assert "error" in d["compile_equal"]  # it needs the eager losses: its own error, not a crash
    assert d["summary"]["row"] == "compiled"


def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cuda_step.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("ternary: error: --device cuda:")


@pytest.mark.parametrize("variant", ["recur-L5-U2-unet-mix-scales-relu2-G64",
                                     "moe3-top2-relu2-untied-pertensor-embed-head",
                                     "attn-vres-xsa1-gate-lnscale-rope0.5-G32",
                                     "plugin-bigram64-dim16-fp8qat-untied-G64",
                                     "record-untied-embed16-bias-softcap30-outnorm-pertensor"])
def test_the_flop_formula_counts_what_torch_counts(variant):
    """N over depth recurrence (a stored block per application), dense experts, the attention gate, a
    plug-in's projection, an untied head: torch's matmul count of forward + backward is exactly 6 N."""
    cfg = variant_config(variant)
    model = Model(cfg, seed=0)
    model.check_ids = False
    windows = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 9))
    assert parts.counted_flops(model, windows, torch.device("cpu"))["counted_matmul_over_6N"] == 1.0
