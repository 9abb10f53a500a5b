#!/usr/bin/env python
"""Our MLX trainer against parameter-golf's train_gpt_mlx.py: tokens/s and val_bpb, same model, same data.

One hyperparameter set in parameter-golf's own names (NUM_LAYERS, MODEL_DIM, ... ITERATIONS) drives both
sides: the peer reads it from its environment; ours is `run_config("baseline", env)` (shared/spec/
pg_family.py) written to a TOML and trained by `ternary train --backend mlx --config ...` with the same
shards as `data.source`. The architecture is pg-baseline's (U-Net skips, residual mix, branch scales,
weightless RMSNorms, relu^2, q gain, tied embedding, tanh soft-cap, Muon + Adam) at a CPU-sized width.

What is made equal, and how:
- data: parameter-golf shards (bench/pg_data.py) written from `--text` with a SentencePiece model of
  VOCAB_SIZE pieces trained in the work folder with parameter-golf's settings; both sides read them.
- work per step: TRAIN_BATCH_TOKENS in one microbatch on both sides (the peer's GRAD_ACCUM_STEPS=1 and
  MLX_MAX_MICROBATCH_TOKENS=TRAIN_BATCH_TOKENS; ours grad_accum=1), one host sync per step on both
  (the peer fetches its loss every step; ours runs with train.log_every=1).
- precision: float32 compute on both. The peer hard-codes COMPUTE_DTYPE = mx.bfloat16; the bench copies
  its script into the work folder and changes that one line (said in the JSON: `peer.patch`).
- BLAS and threads: both processes get the same environment: Debian's OpenBLAS LD_PRELOADed (MLX's
  bundled CPU BLAS is ~35x slower; convert/blas.py) and OMP/OPENBLAS/MKL_NUM_THREADS = --threads.
  Whether OpenBLAS is really mapped is read from each process's /proc/PID/maps while it trains.
- timing: the peer primes its compiled step with WARMUP_STEPS steps that do not train (its own design);
  then on BOTH sides the first --skip-steps training steps (our compile, the peer's first steps) are
  left out and tokens/s is the median over the remaining steps (peer: its per-step `tok_s`; ours:
  TRAIN_BATCH_TOKENS / the difference of metrics.jsonl's train_time_s).
- quality: val_bpb on the whole validation shard after the same ITERATIONS steps (the peer's last
  `step:N/N val_bpb`, before its int8 round trip, which is reported too).

Not equal, by design of each trainer: the order in which training windows are drawn (the peer streams
the shard; ours draws windows from it by seed), so val_bpb differs by run-to-run noise as well.

  python bench/pg_step.py --pg-repo /tmp/pgrepo                  # ~3-5 min on the 2-core dev VM
  python bench/pg_step.py --pg-repo /tmp/pgrepo --steps 20 --json-out pg.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from pg_data import build_dataset, our_step_rates, parse_peer_log, patched_peer, timing_summary  # noqa: E402

DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
GOAL = {"tokens_per_s_ratio_at_least": 1.3, "val_bpb_abs_diff_at_most": 0.01}


def log(msg: str) -> None:
    print(f"[pg_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_env(a) -> dict[str, str]:
    """The hyperparameters both sides get, in parameter-golf's names."""
    return {k: str(v) for k, v in dict(
        VOCAB_SIZE=a.vocab_size, NUM_LAYERS=a.layers, MODEL_DIM=a.dim, NUM_HEADS=a.heads, NUM_KV_HEADS=a.kv_heads,
        MLP_MULT=a.mlp_mult, TRAIN_SEQ_LEN=a.seq_len, TRAIN_BATCH_TOKENS=a.batch_tokens, ITERATIONS=a.steps,
        WARMDOWN_ITERS=a.warmdown_iters if a.warmdown_iters is not None else a.steps // 5,
        MAX_WALLCLOCK_SECONDS=0, SEED=a.seed).items()}


def process_env(a) -> dict[str, str]:
    """The environment both processes start from: the same BLAS preload and thread counts."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH")}
    if a.preload:
        env["LD_PRELOAD"] = a.preload
    if a.threads > 0:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(a.threads)
    return env


def openblas_mapped(pid: int) -> bool | None:
    """Whether process `pid` maps a system OpenBLAS (not numpy's own libscipy_openblas); None off Linux."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if line.count(" ") >= 5 and "/" in line}
    return any(Path(q).name.startswith("libopenblas") or "openblas-pthread" in q or "openblas-openmp" in q
               for q in paths)


def run_streaming(cmd: list[str], env: dict, cwd: Path, log_path: Path) -> tuple[int, list[str], bool | None]:
    """Run `cmd`, keep its output lines (also in `log_path`; every 10th step line and the val lines go
    to stderr), and read its /proc maps at its first line (an LD_PRELOAD is mapped from the exec on)."""
    lines, blas, step_lines = [], None, 0
    with open(log_path, "w") as f, subprocess.Popen(cmd, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                    stdin=subprocess.DEVNULL) as p:
        for line in p.stdout:
            f.write(line)
            lines.append(line.rstrip("\n"))
            if blas is None:
                blas = openblas_mapped(p.pid)
            if line.startswith("step"):
                step_lines += 1
                if step_lines % 10 == 0 or "val_" in line:
                    log(f"  {line.strip()[:140]}")
        rc = p.wait()
    return rc, lines, blas


def run_peer(a, work: Path, data: dict, env: dict, menv: dict) -> dict:
    script, patch = patched_peer(a.pg_repo, work)
    penv = {**env, **menv, "DATA_PATH": data["dir"], "TOKENIZER_PATH": data["tokenizer"], "RUN_ID": "peer",
            "OUT_DIR": str(work / "peer_logs"), "GRAD_ACCUM_STEPS": "1",
            "MLX_MAX_MICROBATCH_TOKENS": menv["TRAIN_BATCH_TOKENS"],
            "WARMUP_STEPS": str(a.peer_warmup), "TRAIN_LOG_EVERY": "1", "VAL_LOSS_EVERY": "0",
            "VAL_BATCH_SIZE": str(max(int(menv["TRAIN_BATCH_TOKENS"]), 16384))}
    log(f"peer: {script.name} ({a.steps} steps + {a.peer_warmup} priming steps)")
    load0, t0 = os.getloadavg(), time.perf_counter()
    rc, lines, blas = run_streaming([sys.executable, str(script)], penv, work, work / "peer.log")
    if rc != 0:
        raise RuntimeError(f"the peer exited with status {rc}; last lines:\n" + "\n".join(lines[-15:]))
    parsed = parse_peer_log(lines)
    steps = [r["step"] for r in parsed["train"]]
    if steps != list(range(1, a.steps + 1)):
        raise RuntimeError(f"the peer's log has train steps {steps[:5]}...{steps[-3:]}, not 1..{a.steps}")
    final = [v for v in parsed["val"] if v["step"] == a.steps]
    if not final:
        raise RuntimeError(f"the peer's log has no `step:{a.steps}/{a.steps} val_bpb` line")
    return {"script": str(script), "patch": patch, "env": {k: penv[k] for k in sorted(set(penv) - set(env))},
            "openblas_mapped": blas, "wall_s": round(time.perf_counter() - t0, 1), "load_before": load0,
            "load_after": os.getloadavg(), **timing_summary([float(r["tok_s"]) for r in parsed["train"]], a.skip_steps),
            "val_bpb": final[-1]["val_bpb"], "val_loss": final[-1]["val_loss"],
            "int8_roundtrip": parsed["int8_roundtrip"], "train_loss_last": parsed["train"][-1]["train_loss"]}


def our_config(menv: dict, work: Path) -> Path:
    """work/ours.toml: our config of the same hyperparameters (raises while shared/spec/pg_family.py
    cannot express them)."""
    from shared.spec.pg_family import run_config
    path = work / "ours.toml"
    run_config("baseline", menv).save_toml(path)
    return path


def run_ours(a, work: Path, data: dict, env: dict, menv: dict) -> dict:
    cfg_path = our_config(menv, work)
    out = work / "ours"
    sets = [f"data.source={data['dir']}", f"data.tokenizer={data['tokenizer']}", "train.log_every=1",
            "train.eval_every=0", f"train.eval_tokens={data['val_tokens']}", "train.checkpoint_every=0"]
    cmd = [sys.executable, "-m", "convert.cli", "train", "--backend", "mlx", "--config", str(cfg_path),
           "--no-progress", "--out", str(out), "--set", *sets]
    log(f"ours: ternary train --backend mlx --config {cfg_path.name} ({a.steps} steps)")
    oenv = {**env, "PYTHONPATH": str(ROOT)}
    load0, t0 = os.getloadavg(), time.perf_counter()
    rc, lines, blas = run_streaming(cmd, oenv, ROOT, work / "ours.log")
    if rc != 0:
        raise RuntimeError(f"`ternary train` exited with status {rc}; last lines:\n" + "\n".join(lines[-15:]))
    summary = json.loads((out / "summary.json").read_text())
    recs = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    tok_s = our_step_rates(recs, a.steps, int(menv["TRAIN_BATCH_TOKENS"]))
    if summary.get("steps") != a.steps or summary.get("val_bpb") is None:
        raise RuntimeError(f"{out}/summary.json: steps {summary.get('steps')}, val_bpb {summary.get('val_bpb')}")
    from shared.spec.config import RunConfig
    resolved = RunConfig.load_toml(out / "config.toml").to_dict()  # the run's own, fully resolved config
    return {"command": " ".join(cmd), "config": resolved, "openblas_mapped": blas,
            "wall_s": round(time.perf_counter() - t0, 1), "load_before": load0, "load_after": os.getloadavg(),
            **timing_summary(tok_s, a.skip_steps), "val_bpb": summary["val_bpb"], "val_loss": summary["val_loss"],
            "val_tokens": summary.get("val_tokens"),
            "train_loss_last": [r for r in recs if "eval" not in r][-1]["loss"]}


def machine(env: dict) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("mlx", "numpy", "sentencepiece"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "versions": versions, "ld_preload": env.get("LD_PRELOAD"),
            "thread_env": {k: env[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                           if k in env}}


def verdict(peer: dict, ours: dict) -> dict:
    ratio = ours["tokens_per_s_median"] / peer["tokens_per_s_median"]
    diff = ours["val_bpb"] - peer["val_bpb"]
    return {"tokens_per_s_ratio_ours_over_peer": round(ratio, 3), "val_bpb_diff_ours_minus_peer": round(diff, 4),
            "tokens_per_s_goal_met": ratio >= GOAL["tokens_per_s_ratio_at_least"],
            "val_bpb_goal_met": abs(diff) <= GOAL["val_bpb_abs_diff_at_most"]}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--pg-repo", type=Path, help="a checkout of openai/parameter-golf (its train_gpt_mlx.py is run)")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="UTF-8 text for the shards (default: %(default)s)")
    ap.add_argument("--work", type=Path, help="keep the shards, tokenizer, logs and runs here (a new or empty "
                                              "folder; default: a temporary folder, removed)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    for flag, default, env_name in (("--layers", 9, "NUM_LAYERS"), ("--dim", 128, "MODEL_DIM"),
                                    ("--heads", 4, "NUM_HEADS"),
                                    ("--kv-heads", 2, "NUM_KV_HEADS"), ("--mlp-mult", 2, "MLP_MULT"),
                                    ("--vocab-size", 1024, "VOCAB_SIZE"), ("--seq-len", 128, "TRAIN_SEQ_LEN"),
                                    ("--batch-tokens", 1024, "TRAIN_BATCH_TOKENS"), ("--steps", 60, "ITERATIONS"),
                                    ("--seed", 1337, "SEED")):
        ap.add_argument(flag, type=int, default=default, help=f"{env_name} (default: %(default)s)")
    ap.add_argument("--warmdown-iters", type=int, help="WARMDOWN_ITERS (default: steps // 5)")
    ap.add_argument("--skip-steps", type=int, default=3, help="first training steps left out of the timing, both sides")
    ap.add_argument("--peer-warmup", type=int, default=2, help="the peer's WARMUP_STEPS (priming, no training)")
    ap.add_argument("--val-frac", type=float, default=0.05, help="fraction of the documents in the val shard")
    ap.add_argument("--threads", type=int, default=1, help="OMP/OPENBLAS/MKL_NUM_THREADS for both (0: unset)")
    ap.add_argument("--preload", default=OPENBLAS if Path(OPENBLAS).exists() else "",
                    help="library LD_PRELOADed into both processes ('' = none; default: %(default)s)")
    return ap.parse_args()


def main() -> int:
    a = _args()
    if a.pg_repo is None or not (a.pg_repo / "train_gpt_mlx.py").is_file():
        why = ("no --pg-repo given" if a.pg_repo is None else f"--pg-repo {a.pg_repo}: no train_gpt_mlx.py there")
        print(json.dumps({"bench": "pg_step", "skipped": True, "reason": why + " (want a checkout of "
                          "openai/parameter-golf, e.g. `git clone https://github.com/openai/parameter-golf`)"}))
        print(f"pg_step: error: {why}; nothing was run", file=sys.stderr)
        return 2
    if not a.text.is_file():
        print(f"pg_step: error: --text {a.text}: not a file (the default is the developers' "
              "../shared/data/tinyshakespeare.txt next to the checkout; pass --text FILE)", file=sys.stderr)
        return 2
    if a.work is not None and a.work.exists() and (not a.work.is_dir() or any(a.work.iterdir())):
        print(f"pg_step: error: --work {a.work}: exists and is not an empty folder; choose a new one", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="pg_step."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(a, work.resolve())
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(a, work: Path) -> int:
    env, menv = process_env(a), model_env(a)
    result = {"bench": "pg_step", "machine": machine(env), "hyperparameters": menv, "goal": GOAL}
    ours_error = None
    try:  # fail loudly, before the peer's minutes, if our side cannot even build its config
        our_config(menv, work)
    except Exception as e:  # noqa: BLE001 - any failure of our side is reported, never skipped
        ours_error = f"{type(e).__name__}: {e}"
        log(f"OUR SIDE CANNOT RUN: {ours_error}; running the peer anyway so its numbers are in the JSON")
    result["data"] = build_dataset(a.text, work, a.vocab_size, a.val_frac, log)
    result["peer"] = run_peer(a, work, result["data"], env, menv)
    log(f"peer: {result['peer']['tokens_per_s_median']:.0f} tok/s, val_bpb {result['peer']['val_bpb']:.4f}")
    if ours_error is None:
        try:
            result["ours"] = run_ours(a, work, result["data"], env, menv)
            log(f"ours: {result['ours']['tokens_per_s_median']:.0f} tok/s, val_bpb {result['ours']['val_bpb']:.4f}")
            result["derived"] = verdict(result["peer"], result["ours"])
        except Exception as e:  # noqa: BLE001
            ours_error = f"{type(e).__name__}: {e}"
    if ours_error is not None:
        result["ours"] = {"error": ours_error}
    text = json.dumps(result, indent=2)
    print(text)
    if a.json_out:
        tmp = a.json_out.with_name(a.json_out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(a.json_out)
    if ours_error is not None:
        print(f"pg_step: error: our side failed: {ours_error.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
