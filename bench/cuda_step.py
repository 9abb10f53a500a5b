#!/usr/bin/env python
"""The torch backend on one CUDA GPU at pg-ternary's full shape: every figure of issue #12 item 7 in one run.

  python3 bench/cuda_step.py --json-out $OUT/cuda_step.json      # the GPU run: ~3-5 min on an H200
  python bench/cuda_step.py --device cpu --tiny                    # the same sections, tiny, on a CPU (tested)

The model, optimizer and step are `ternary_cuda.train.Trainer` on preset pg-ternary (10 x 768, vocab 8192,
Muon, z-loss, fp8 QAT, ...) with train.precision=bf16 (autocast), train.tf32 and train.compile as the
trainer sets them (ternary_cuda/parallel.py). One micro-batch of 64 x 1024 tokens per step: the record's
per-GPU micro-batch (524,288 tokens per step over 8 GPUs, one micro-batch each, 91.8 ms/step), so
tokens/s compares with its ~714k per GPU directly. The batches are random ids (the speed does not depend
on them); the same batches in the same order for every trainer, all starting from the same seed.

Sections (each guarded: one that fails records its error and the others still run; the JSON is rewritten
after each, so a run cut short keeps what it measured):
- machine, config, flops: the FLOP count per token (formula below) and, as a check of it, torch's
  FlopCounterMode over one eager forward + backward;
- eager / compiled: train.compile off / on; ms per step (median over the timed steps, each ended by the
  trainer's host fetch of loss and gradient norm), tokens/s, MFU, peak memory (max_memory_allocated since
  the trainer was made); compiled: the first steps' times and compile_s = first step - median step;
- compile_equal: the losses of the same steps, compiled against eager, and the logits of the compiled
  module against the bare model's on the compiled trainer's weights (bf16 autocast both);
- bf16_vs_fp32: the bare model's logits under bf16 autocast against float32 with TF32 off, on the
  compiled trainer's weights (trained a few steps: at initialisation the zero-initialised output
  projections leave little to differ), and the two cross-entropies;
- summary: tokens/s against the record and the goal.
FLOPs per token (PaLM's MFU count, Chowdhery et al. 2022 app. B): 6 N + 12 L T H_q d_head, N = the
weights used as matmuls per token (every projection, the head; not the embedding lookup; experts all,
dispatch is dense; a stored block once per application), L applied layers, T the sequence length
(non-causal attention count, as PaLM's). MFU = tokens/s x FLOPs per token / peak; peak: dense bf16 of
the device (H100/H200 SXM datasheet 989 TFLOP/s; --peak-tflops for another).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

def log(msg: str) -> None:
    print(f"[cuda_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny pg-ternary (2 x 128, vocab 512), batch 4 x 64")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 64; --tiny 4)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 1024; --tiny 64)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--eager-steps", type=int, default=8, help="timed steps, train.compile off")
    p.add_argument("--compiled-steps", type=int, default=20, help="timed steps, train.compile on")
    p.add_argument("--compare-batch", type=int, default=8, help="sequences in the logits comparisons")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by its name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.device == "cpu":  # before torch loads: the trainer takes CUDA whenever it sees it (parallel.device)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("ternary: error: --device cuda: torch.cuda.is_available() is False (use --device cpu --tiny)",
              file=sys.stderr)
        return 2
    a.batch_size = a.batch_size or (4 if a.tiny else 64)
    a.seq_len = a.seq_len or (64 if a.tiny else 1024)
    from ternary_cuda import parallel
    if parallel.device().type != a.device:  # torch was imported before main() with CUDA visible
        print(f"ternary: error: --device {a.device}: the trainer would run on {parallel.device()} "
              "(run the script as a program)", file=sys.stderr)
        return 2
    from cuda_step_parts import GOAL_TOKENS_PER_S, RECORD, TOL, Run  # torch loads here, after the device choice
    run = Run(a, log)
    out: dict = {"bench": "cuda_step", "tolerances": TOL, "record": RECORD, "goal_tokens_per_s": GOAL_TOKENS_PER_S}
    for name, fn in [("machine", run.machine), ("config", run.config), ("flops", run.flops),
                     ("eager", run.eager), ("compiled", run.compiled), ("compile_equal", run.compile_equal),
                     ("bf16_vs_fp32", run.bf16_vs_fp32), ("summary", run.summary)]:
        t0 = time.perf_counter()
        log(f"{name} ...")
        try:
            out[name] = fn()
        except Exception as e:  # recorded, and the next section runs: one failure must not cost the rest
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            log(f"{name} failed: {type(e).__name__}: {e}")
        out[name]["section_s"] = round(time.perf_counter() - t0, 2)
        write(out, a.json_out)
    print(json.dumps(out, indent=1))
    return 0


def write(out: dict, path: Path | None) -> None:
    """The JSON so far, atomically (a run cut short leaves the last complete sections)."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
