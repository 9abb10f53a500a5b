"""Bytes and round-trip val_bpb of `ternary convert --to packed` with --floats int6|int5|mixed,
--compress zstd-22 and --hadamard, on small trained models (README "Inspecting and packing").

Three smoke runs (torch, one thread): ternary as the preset has it ("qat"), MLP float
(ternary.targets=["attn"], so --floats mixed has MLP matrices to put in int5: "mlp-float"), and
float ("ptq": its checkpoint re-written with ternary.enabled=true, so its ternary weights are made
at export only, the case the SKC-600 report's export-time rotation is for). Each export prints its
bytes and the round trip (the checkpoint and the artifact on the same validation tokens).

    python bench/export_quant.py --out /tmp/eq            # ~25 min on a loaded 2-core VM
    python bench/export_quant.py --out /tmp/eq --steps 3 --eval-tokens 2048   # a quick check
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNS = {"qat": [], "mlp-float": ['ternary.targets=["attn"]'], "ptq": ["ternary.enabled=false"]}
EXPORTS = {  # name -> (run, convert flags)
    "qat fp16": ("qat", ["--floats", "fp16", "--compress", "zstd-22"]),
    "qat int6": ("qat", ["--floats", "int6", "--compress", "zstd-22"]),
    "qat int5": ("qat", ["--floats", "int5", "--compress", "zstd-22"]),
    "qat hadamard": ("qat", ["--floats", "fp16", "--compress", "zstd-22", "--hadamard"]),
    "mlp-float int6": ("mlp-float", ["--floats", "int6", "--compress", "zstd-22"]),
    "mlp-float mixed": ("mlp-float", ["--floats", "mixed", "--compress", "zstd-22"]),
    "mlp-float mixed hadamard": ("mlp-float", ["--floats", "mixed", "--compress", "zstd-22", "--hadamard"]),
    "ptq hadamard seed 0": ("ptq", ["--compress", "zstd-22", "--hadamard", "--hadamard-seed", "0"]),
    "ptq hadamard seed 1": ("ptq", ["--compress", "zstd-22", "--hadamard", "--hadamard-seed", "1"]),
}
ROUND_TRIP = re.compile(r"val_bpb: training ([0-9.]+) .* round trip ([0-9.]+)")


def ternary(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "convert.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"ternary {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def train(run: Path, steps: int, sets: list[str]) -> Path:
    if not (run / "checkpoint" / "manifest.json").exists():
        ternary("train", "--preset", "smoke", "--backend", "torch", "--threads", "1", "--no-progress", "--out",
                str(run), "--overwrite", "--set", f"train.steps={steps}", "train.eval_every=0", *sets)
    return run / "checkpoint"


def ternarized_at_export(float_ckpt: Path, out: Path) -> Path:
    """The float run's checkpoint under ternary.enabled=true: ternary weights made at export only."""
    from shared.spec.checkpoint import read_checkpoint, write_checkpoint
    if not (out / "manifest.json").exists():
        cfg, weights = read_checkpoint(float_ckpt)
        write_checkpoint(out, cfg.with_overrides(["ternary.enabled=true"]), weights,
                         writer={"backend": "bench/export_quant.py", "source": str(float_ckpt)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="working directory (runs and artifacts)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-tokens", type=int, default=None, help="round-trip tokens (default: the preset's)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    ckpts = {name: train(a.out / "runs" / name, a.steps, sets) for name, sets in RUNS.items()}
    ckpts["ptq"] = ternarized_at_export(ckpts["ptq"], a.out / "runs" / "ptq-checkpoint")
    print("| export | bytes | val_bpb checkpoint -> round trip |\n|---|---|---|")
    for name, (run, flags) in EXPORTS.items():
        f = a.out / (name.replace(" ", "-") + ".tpk")
        trips = "--hadamard" in flags or bool({"int6", "int5", "mixed"} & set(flags))
        extra = ["--eval-tokens", str(a.eval_tokens)] if a.eval_tokens and trips else []
        text = ternary("convert", str(ckpts[run]), "--to", "packed", *flags, *extra, "--out", str(f), "--force")
        m = ROUND_TRIP.search(text)
        trip = f"{m.group(1)} -> {m.group(2)}" if m else "(no round trip: lossless up to fp16)"
        print(f"| {name} | {f.stat().st_size:,d} | {trip} |", flush=True)


if __name__ == "__main__":
    main()
