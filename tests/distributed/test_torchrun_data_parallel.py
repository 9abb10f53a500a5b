"""torch data parallel under torchrun on the CPU (gloo): DDP and FSDP2 against one process.

Two ranks with train.batch_size=4 see, step for step, the same 8 windows as one process with
train.batch_size=8: TokenLoader hands out global batches of world_size * batch_size windows of
one stream, rank r taking rows [4r, 4r + 4) (tests/unit/test_data.py). With every rank's loss
a mean over equally many tokens, the average of the ranks' gradients (DDP all-reduce, FSDP2
reduce-scatter) is the gradient of the one-process mean loss, so the trajectories agree to float
rounding. The config exercises both optimizers (Muon for block matrices: FSDP2 gathers the whole
gradient matrix; AdamW for the rest), gradient accumulation (no_sync / no reduce-scatter on the
first micro-step) and EMA evaluation (FSDP2 swaps EMA weights into sharded parameters).

The model is float (ternary.enabled=false) here: with ternary projection a weight whose latent
value sits within float rounding of a rounding boundary flips its code in one run and not the
other, and the losses then part by ~1e-4 within a few steps (measured: 4.4e-4 relative after 6
steps on this config, for DDP as for FSDP2) although nothing is wrong. The forward/backward of
ternary layers does not depend on the parallel mode (FSDP2 gathers each weight whole before the
projection), so the float trajectory tests what data parallelism changes: batches, gradient
averaging, accumulation, optimizer state and checkpoints.

Three launches keep the module short: DDP (trajectory, val_loss, checkpoint read by MLX); FSDP2
killed with SIGKILL on rank 1 once it has logged enough steps (its logged steps give the FSDP2
trajectory; the whole job must end within a bounded time with an error naming the signal); then
FSDP2 resumed from the last periodic checkpoint to completion.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.spec import checkpoint as fmt
from tests.train.common import config, records, run, train_losses, trainer_state

ROOT = Path(__file__).resolve().parents[2]
REF_STEPS = 12  # steps compared with one process; the schedule is constant, so a longer run's first 12 are these
EXTRA = ["ternary.enabled=false", "train.optimizer=muon", "train.grad_accum=2", "train.ema_decay=0.9", "train.log_every=1"]
RTOL = 1e-5


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "ternary_cuda.train", "--no-progress", *args]


def _args(cfg_file: Path, *overrides: str) -> list[str]:
    """The reference run's config, with per-rank batch size, mode and length overridden."""
    return ["--config", str(cfg_file), "--set", *overrides]


def _launch(out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(_torchrun(out, "--out", str(out), *args), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _assert_same_trajectory(got: list[tuple[int, float]], ref: list[tuple[int, float]], what: str) -> float:
    assert [s for s, _ in got] == [s for s, _ in ref], f"{what}: steps {[s for s, _ in got]}"
    a, b = np.array([v for _, v in got]), np.array([v for _, v in ref])
    rel = float(np.max(np.abs(a - b) / np.abs(b)))
    print(f"{what}: losses {a.round(6).tolist()}\n  one process {b.round(6).tolist()}\n  max relative difference {rel:.2e}")
    assert rel < RTOL, f"{what}: losses differ from one process by {rel:.2e} (relative)"
    return rel


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 8: the run both launches must reproduce."""
    out = tmp_path_factory.mktemp("single")
    cfg = config(*EXTRA, f"train.steps={REF_STEPS}", "train.batch_size=8")
    result, _, _ = run(cfg, "torch", out)
    return {"out": out, "losses": train_losses(out), "evals": result.evals, "config": out / "config.toml"}


def test_ddp_matches_one_process_and_its_checkpoint_loads_in_mlx(reference, tmp_path):
    out = tmp_path / "ddp"
    t0 = time.perf_counter()
    r = _launch(out, *_args(reference["config"], "train.batch_size=4", "train.parallel=ddp"))
    print(f"DDP launch: {time.perf_counter() - t0:.1f} s")
    assert "DDP over 2 processes (gloo)" in r.stdout
    assert r.stdout.count("== summary") == 1  # rank 1 logs nothing
    _assert_same_trajectory(train_losses(out), reference["losses"], "DDP x2")
    ev = [rec["eval"] for rec in records(out) if "eval" in rec]
    assert len(ev) == 1 and ev[0]["val_loss"] == pytest.approx(reference["evals"][-1]["val_loss"], rel=RTOL)
    # The checkpoint (written by rank 0 from the full state) is the canonical format: MLX reads it.
    ckpt = out / "checkpoint"
    _, saved = fmt.read_checkpoint(ckpt)
    _, ref_weights = fmt.read_checkpoint(reference["out"] / "checkpoint")
    opt, ref_opt = fmt.read_optimizer(ckpt)[0], fmt.read_optimizer(reference["out"] / "checkpoint")[0]
    assert set(opt) == set(ref_opt)
    for k in ref_weights:
        np.testing.assert_allclose(saved[k], ref_weights[k], atol=1e-5, err_msg=k)
    assert trainer_state(ckpt)["loader"]["global_batch"] == 8
    from ternary_mlx.checkpoint import load as mlx_load
    model, cfg = mlx_load(ckpt)
    assert cfg.train.parallel == "ddp"
    mlx_weights = model.numpy_weights()
    assert set(mlx_weights) == set(saved)
    for k, v in saved.items():
        np.testing.assert_array_equal(mlx_weights[k], v, err_msg=k)


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (direct children with RANK in their environment)."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (p / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            for kv in env:
                if kv.startswith(b"RANK="):
                    found[int(kv[5:])] = int(p.name)
    return found


def test_fsdp2_matches_one_process_dies_cleanly_and_resumes(reference, tmp_path):
    out = tmp_path / "fsdp2"
    args = _args(reference["config"], "train.steps=500", "train.batch_size=4", "train.parallel=fsdp2",
                 "train.checkpoint_every=5")
    proc = subprocess.Popen(_torchrun(out, "--out", str(out), *args), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        logged = 0
        while logged < REF_STEPS + 2:  # the checkpoint of step 10 is written before step 11 starts
            assert proc.poll() is None, f"the run ended early:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no progress in 90 s"
            time.sleep(0.1)
            if (out / "metrics.jsonl").exists():
                logged = len(train_losses(out))
        killed_losses = train_losses(out)
        workers = _children(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        t_kill = time.perf_counter()
        output, _ = proc.communicate(timeout=60)  # no hang: the job ends when one rank dies
        dt = time.perf_counter() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"FSDP2: rank 1 killed after {len(killed_losses)} logged steps; torchrun exited {proc.returncode} "
          f"{dt:.2f} s later")
    assert "FSDP2 over 2 processes (gloo)" in output
    assert proc.returncode != 0
    assert "SIGKILL" in output, output[-3000:]  # torchrun names the failed rank and the signal
    assert dt < 60
    _assert_same_trajectory(killed_losses[:REF_STEPS], reference["losses"], "FSDP2 x2")

    # Resume from the last periodic checkpoint, under torchrun, to completion.
    ckpt_step = trainer_state(out / "checkpoint")["step"]
    assert ckpt_step % 5 == 0 and ckpt_step >= 10
    target = ckpt_step + 5
    before = dict(killed_losses)
    t0 = time.perf_counter()
    r = _launch(out, "--resume", str(out), "--set", f"train.steps={target}", timeout=120)
    print(f"FSDP2 resume from step {ckpt_step} to {target}: {time.perf_counter() - t0:.1f} s")
    assert f"resuming from {out / 'checkpoint'} at step {ckpt_step}" in r.stdout
    losses = train_losses(out)
    assert [s for s, _ in losses] == list(range(1, target + 1))  # each step once
    assert trainer_state(out / "checkpoint")["step"] == target
    assert json.loads((out / "summary.json").read_text())["stopped_because"] == "finished"
    # The resumed steps that the killed run had also logged are the same computation.
    again = [(s, v) for s, v in losses if s > ckpt_step and s in before]
    assert again, "the killed run logged no step past its checkpoint"
    _assert_same_trajectory(again, [(s, before[s]) for s, _ in again], "FSDP2 resumed vs before the kill")
    shutil.rmtree(out, ignore_errors=True)


def test_ddp_with_a_teacher_matches_one_process(tmp_path):
    """Distillation under DDP: each rank runs the same frozen teacher on its own rows; the averaged
    gradient is the one-process gradient of the mean distillation loss."""
    from shared.spec.checkpoint import write_checkpoint
    from shared.spec.init import init_weights
    teacher_cfg = config("ternary.enabled=false")
    teacher = tmp_path / "teacher"
    write_checkpoint(teacher, teacher_cfg, init_weights(teacher_cfg.model, seed=5), writer={"backend": "test"})
    extra = ["ternary.enabled=false", "train.log_every=1", f"train.teacher={teacher}", "train.distill_alpha=0.7"]
    single = tmp_path / "single"
    run(config(*extra, "train.steps=4", "train.batch_size=8"), "torch", single)
    r = _launch(tmp_path / "ddp", *_args(single / "config.toml", "train.batch_size=4", "train.parallel=ddp"))
    assert "teacher: " in r.stdout
    _assert_same_trajectory(train_losses(tmp_path / "ddp"), train_losses(single), "DDP x2 with a teacher")
