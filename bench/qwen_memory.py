#!/usr/bin/env python
"""Peak memory and tokens/s of distillation training steps at a Qwen3-shaped model (issue #12 item 6).

The Qwen3-0.6B preset (vocabulary 151,936, head_dim 128, tied, ternary attn + mlp), optionally
narrowed (--hidden / --intermediate / --layers / --heads / --kv-heads), trained for a few steps
at batch 1 x --seq with a frozen float teacher of the same shape (random weights: the shapes, not
the values, set the memory). Each case runs in its own process under `/usr/bin/time -v` (peak RSS =
"Maximum resident set size"), with the code of --code (default: this checkout), so that the same
script measures an older checkout's code ("before") against this one's ("after"):

  python bench/qwen_memory.py --hidden 512 --intermediate 1536 --layers 2 --heads 4 --kv-heads 2 \\
      --seq 512 --steps 3 --backend mlx --backend torch --chunk 0 --chunk 1024 --teacher-dtype float32 \\
      --teacher-dtype bfloat16 --before-code /work/main
  python bench/qwen_memory.py --seq 512 --steps 2 --backend torch --chunk 1024 --teacher-dtype bfloat16  # full shape
  python bench/qwen_memory.py --save-only --hidden 512 ... --before-code /work/main   # one checkpoint save
  python bench/qwen_memory.py --seq 512 --steps 2 --backend torch --backend mlx --chunk 128 \
      --teacher-dtype bfloat16 --threads 1 --checkpointing          # full shape, activation checkpointing
  python bench/qwen_memory.py --seq 512 --threads 1 --mlx-lm DIR    # mlx-lm's full fine-tune, the peer
  python bench/qwen_memory.py --hidden 512 --intermediate 1536 --layers 4 --heads 4 --kv-heads 2 --seq 256 \
      --chunk 128 --teacher-dtype bfloat16 --optimizer-state-dtype float32 --optimizer-state-dtype bfloat16

Prints one JSON object: per case the backend, code, chunk, teacher dtype, peak RSS (GiB; also the
peak before the first step, i.e. of building the models), seconds
per step and tokens/s (the median after the first step), and the memory budget line the run
prints (this checkout only). --chunk 0 / --teacher-dtype float32 are the old behaviour, so they
also run on a checkout that lacks the keys.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _config(a):
    from shared.spec.presets import get_preset
    cfg = get_preset("qwen3-0.6b")
    m = cfg.model
    for key, value in (("hidden_size", a.hidden), ("intermediate_size", a.intermediate),
                       ("num_hidden_layers", a.layers), ("num_attention_heads", a.heads),
                       ("num_key_value_heads", a.kv_heads)):
        if value:
            setattr(m, key, value)
    t = cfg.train
    t.batch_size, t.seq_len, t.grad_accum, t.checkpoint_every = 1, a.seq, 1, 0
    if a.chunk or a.teacher_dtype != "float32":  # the new keys: absent in an older checkout
        t.loss_chunk_tokens, t.teacher_dtype = a.chunk, a.teacher_dtype
    if a.checkpointing:
        t.activation_checkpointing = True
    if a.optimizer_state_dtype != "float32":  # a newer key: absent in an older checkout
        t.optimizer_state_dtype = a.optimizer_state_dtype
    return cfg.validate()


def _vm_hwm_gib() -> float | None:
    """This process's peak resident memory so far (Linux /proc), GiB."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = re.search(r"VmHWM:\s+(\d+) kB", text)
    return round(int(kb.group(1)) / 2 ** 20, 3) if kb else None


def _rss_gib() -> float:
    kb = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(kb.group(1)) / 2 ** 20


def save_peak(cfg, trainer, out: dict) -> None:
    """--save-only: the resident memory a checkpoint save adds on top of the trained state (the
    peak counter is reset first: /proc/self/clear_refs)."""
    import tempfile
    if trainer.backend == "mlx":  # MLX is lazy: materialise the weights and optimizer state first
        import mlx.core as mx
        mx.eval(trainer.model.parameters(), trainer.opt.state)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss_gib()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        trainer.save(Path(d) / "checkpoint", {"step": 0})
        size = sum(f.stat().st_size for f in (Path(d) / "checkpoint").iterdir())
    out.update(save_s=round(time.perf_counter() - t0, 2), checkpoint_gib=round(size / 2 ** 30, 3),
               rss_before_save_gib=round(before, 3), save_adds_gib=round(_vm_hwm_gib() - before, 3))
    print("RESULT " + json.dumps(out), flush=True)


def child(a) -> None:
    """One case in this process: build, step, print one JSON line."""
    import copy

    import numpy as np
    if a.backend == "mlx":
        from ternary_mlx.model import Model
        from ternary_mlx.train import Trainer
    else:
        import torch
        torch.set_num_threads(a.threads)
        from ternary_cuda.model import Model
        from ternary_cuda.train import Trainer
    cfg = _config(a)
    teacher_cfg = copy.deepcopy(cfg)
    teacher_cfg.ternary.enabled = False  # a float teacher, as `import-hf --no-ternary` writes
    out = {}
    try:
        from shared.train.memory_budget import budget_line
        out["budget"] = budget_line(cfg, teacher_cfg)
    except ImportError:  # an older checkout
        out["budget"] = None
    if a.save_only:
        return save_peak(cfg, Trainer(cfg, Model(cfg, seed=0)), out)
    teacher = Model(teacher_cfg, seed=1)
    trainer = Trainer(cfg, Model(cfg, seed=0), teacher=teacher)
    out["peak_before_steps_gib"] = _vm_hwm_gib()  # building the models (NumPy init + copies)
    windows = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (1, 1, a.seq + 1)).astype(np.int32)
    times, losses = [], []
    for step in range(a.steps):
        t0 = time.perf_counter()
        losses.append(trainer.fetch([trainer.step(windows, step)])[0][0])
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    out.update(step_s=[round(s, 3) for s in times], losses=losses,
               tokens_per_s=round(a.seq / statistics.median(steady), 1))
    print("RESULT " + json.dumps(out), flush=True)


def run_case(a, backend: str, code: Path, chunk: int, teacher_dtype: str, state_dtype: str = "float32") -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--backend", backend, "--seq", str(a.seq),
            "--steps", str(a.steps), "--chunk", str(chunk), "--teacher-dtype", teacher_dtype,
            "--optimizer-state-dtype", state_dtype,
            "--threads", str(a.threads)] + (["--save-only"] if a.save_only else []) + (
                ["--checkpointing"] if a.checkpointing else [])
    for flag in ("hidden", "intermediate", "layers", "heads", "kv_heads"):
        if getattr(a, flag):
            args += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(a.threads)}
    blas = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
    if backend == "mlx" and blas.exists():  # as the CLI does (convert/blas.py): MLX's bundled BLAS is ~40x slower
        env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), str(blas)]))
    proc = subprocess.run(["/usr/bin/time", "-v", *args], cwd=code, env=env, capture_output=True, text=True)
    case = {"backend": backend, "code": str(code), "loss_chunk_tokens": chunk, "teacher_dtype": teacher_dtype,
            "optimizer_state_dtype": state_dtype, "activation_checkpointing": a.checkpointing}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    case["peak_rss_gib"] = round(int(rss.group(1)) / 2 ** 20, 3) if rss else None
    result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not result:
        case["error"] = (proc.stderr.strip().splitlines() or ["?"])[-25:]
    else:
        case.update(json.loads(result[-1][len("RESULT "):]))
    print(json.dumps(case), file=sys.stderr, flush=True)  # progress: one line per case
    return case


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-only", action="store_true", help="measure one checkpoint save instead of steps")
    p.add_argument("--backend", action="append", choices=["mlx", "torch"])
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, action="append", help="train.loss_chunk_tokens (repeat for several)")
    p.add_argument("--teacher-dtype", action="append", choices=["float32", "bfloat16"])
    p.add_argument("--optimizer-state-dtype", action="append", choices=["float32", "bfloat16"],
                   help="train.optimizer_state_dtype (repeat for both; default float32)")
    p.add_argument("--checkpointing", action="store_true", help="train.activation_checkpointing = true")
    p.add_argument("--mlx-lm", type=Path, metavar="DIR",
                   help="also run mlx-lm's full fine-tune (bench/qwen_mlx_lm.py) of a random Qwen3-0.6B written to DIR "
                        "(or reused from there); at the full shape only")
    p.add_argument("--mlx-lm-iters", type=int, default=3)
    p.add_argument("--mlx-lm-grad-checkpoint", action="store_true", help="mlx-lm's --grad-checkpoint")
    p.add_argument("--before-code", type=Path, help="also run the old defaults (chunk 0, float32) with this checkout")
    a = p.parse_args()
    if a.child:
        a.backend, a.chunk, a.teacher_dtype = a.backend[0], a.chunk[0], a.teacher_dtype[0]
        a.optimizer_state_dtype = a.optimizer_state_dtype[0]
        return child(a)
    cases = []
    if a.mlx_lm is not None:  # first: a failure in the peer's setup shows before the long cases
        if any(getattr(a, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads")):
            p.error("--mlx-lm runs the published Qwen3-0.6B shape; drop --hidden/--intermediate/--layers/--heads/--kv-heads")
        import qwen_mlx_lm
        model_dir = qwen_mlx_lm.write_model_dir(a.mlx_lm.resolve())
        cases.append(qwen_mlx_lm.run(model_dir, a.seq, a.mlx_lm_iters, a.threads, a.mlx_lm_grad_checkpoint))
        print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    for backend in a.backend or ([] if a.mlx_lm is not None else ["mlx", "torch"]):
        if a.before_code is not None:
            cases.append(run_case(a, backend, a.before_code.resolve(), 0, "float32"))
        for chunk in a.chunk or [1024]:
            for dtype in a.teacher_dtype or ["bfloat16"]:
                for state_dtype in a.optimizer_state_dtype or ["float32"]:
                    cases.append(run_case(a, backend, HERE, chunk, dtype, state_dtype))
    shape = {k: getattr(a, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "seq", "steps")}
    print(json.dumps({"preset": "qwen3-0.6b", "overrides": shape, "batch": f"1 x {a.seq}", "cases": cases},
                     indent=2))


if __name__ == "__main__":
    main()
