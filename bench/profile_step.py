#!/usr/bin/env python
"""Where a torch training step's time goes, per op: torch.profiler over the rows of train_step.py.

The rows, model, batch and optimizer are bench/train_step.py's (same flags: --hidden, --batch, ...,
--rows among its torch rows); each row runs --warmup untimed steps, then --steps steps under
torch.profiler (CPU activities). Per row, the top ops by self CPU time, in ms per step, and the
profiled wall time per step (the profiler's own overhead included: compare rows, not absolute ms).

    OMP_NUM_THREADS=1 python bench/profile_step.py [--rows ours_torch_ternary_adamw,...] [--top 25]

Output: one JSON object on stdout.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import train_step  # noqa: E402

TORCH_ROWS = ("ours_torch_ternary_adamw", "ours_torch_float_adamw", "peer_transformers", "ours_torch_ternary_muon")


def profile_row(row, steps: int, warmup: int, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    row.setup()
    for i in range(warmup):
        row.step(i)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(warmup, warmup + steps):
            row.step(i)
    wall = (time.perf_counter() - t0) / steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3),
            "pct": round(100 * e.self_cpu_time_total / total_self, 1),
            "calls_per_step": round(e.count / steps, 1)} for e in events[:top]]
    return {"profiled_wall_ms_per_step": round(1e3 * wall, 1),
            "self_cpu_ms_per_step_all_ops": round(total_self / 1e3 / steps, 1),
            "ops_per_step": round(sum(e.count for e in events) / steps, 1),
            "torch_threads": torch.get_num_threads(), "top_ops": ops}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = 25
    if "--top" in argv:
        k = argv.index("--top")
        top = int(argv[k + 1])
        del argv[k:k + 2]
    if not any(a.startswith("--rows") for a in argv):
        argv += ["--rows", ",".join(TORCH_ROWS[:3])]
    args = train_step.parse_args(argv)
    bad = [r for r in args.rows if r not in TORCH_ROWS]
    if bad:
        print(f"profile_step: error: torch rows only ({', '.join(TORCH_ROWS)}), not {bad}", file=sys.stderr)
        return 2
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    windows = train_step.make_windows(args)
    out = {"benchmark": "profile_step", "command": " ".join(["python", "bench/profile_step.py"] + argv),
           "config": {"batch": args.batch, "seq": args.seq, "hidden": args.hidden, "layers": args.layers,
                      "vocab": args.vocab, "group": args.group, "threads": args.threads,
                      "profiled_steps": args.steps, "warmup_steps": args.warmup},
           "rows": {}}
    for row in train_step.make_rows(args, windows):
        train_step.log(f"[profile] {row.name}")
        out["rows"][row.name] = {"description": row.description, **profile_row(row, args.steps, args.warmup, top)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
