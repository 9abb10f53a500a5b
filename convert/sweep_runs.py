"""One run of `ternary sweep`: where it lives, how far it got, the commands that finish it, and its
record. Each run is an ordinary `ternary train` in a process of its own (so `--jobs` can run several,
each pinned to its cores), then optionally `ternary convert --to packed` and `ternary eval` of the
artifact (the round trip), all on the same cores.

A run is finished when its marker OUT/done/RUN.json exists: the sweep writes it, atomically, only
after every step of the run succeeded; it holds the run's record (a line of results.jsonl).
Without the marker a run is, by what its directory holds:
  finished   summary.json of a run that was not interrupted: only the export and the record remain;
  resume     a checkpoint (an interrupted run saves one): `ternary train --resume`;
  restart    a run directory without a checkpoint (killed before any save): `--overwrite`, which
             deletes only what a training run writes and refuses anything else;
  new        nothing yet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.spec.atomic_dir import write_text_atomic
from shared.train.run_dir import CHECKPOINT

DONE, RUNS, CONFIGS, LOGS, ARTIFACTS = "done", "runs", "configs", "logs", "artifacts"


# the sweep's own files (records, reports, its manifest) are written as configs are
write_atomic = write_text_atomic


@dataclass
class RunFiles:
    """The paths of one run inside the sweep directory."""
    out: Path
    name: str

    @property
    def config(self) -> Path:
        return self.out / CONFIGS / f"{self.name}.toml"

    @property
    def run_dir(self) -> Path:
        return self.out / RUNS / self.name

    @property
    def log(self) -> Path:
        return self.out / LOGS / f"{self.name}.log"

    @property
    def done(self) -> Path:
        return self.out / DONE / f"{self.name}.json"

    @property
    def artifact(self) -> Path:
        return self.out / ARTIFACTS / f"{self.name}.tpk"

    @property
    def round_trip(self) -> Path:
        return self.out / LOGS / f"{self.name}.roundtrip.json"


def _summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def state(files: RunFiles) -> str:
    """"done", "finished", "resume", "restart" or "new" (the module docstring says what each means)."""
    if files.done.is_file():
        return "done"
    summary = _summary(files.run_dir)
    has_checkpoint = (files.run_dir / CHECKPOINT / "manifest.json").is_file()
    if summary is not None and has_checkpoint and not str(summary.get("stopped_because", "")).startswith("interrupted"):
        return "finished"
    if has_checkpoint:
        return "resume"
    return "restart" if files.run_dir.exists() else "new"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "convert.cli", *args]


def commands(files: RunFiles, how: str, backend: str, threads: int, export_args: list[str] | None,
             round_trip: bool, eval_tokens: int) -> list[tuple[list[str], Path | None]]:
    """The (argv, file for its stdout or None: the log) of each step still to do for a run in state `how`."""
    t = ["--backend", backend, "--threads", str(threads)]
    steps: list[tuple[list[str], Path | None]] = []
    if how == "resume":
        steps.append((cli("train", "--resume", str(files.run_dir), "--no-progress", *t), None))
    elif how in ("new", "restart"):
        steps.append((cli("train", "--config", str(files.config), "--out", str(files.run_dir), "--no-progress", *t,
                          *(["--overwrite"] if how == "restart" else [])), None))
    if export_args is not None:
        force = ["--force"] if files.artifact.exists() else []  # a packed file an earlier attempt wrote
        steps.append((cli("convert", str(files.run_dir), "--to", "packed", "--out", str(files.artifact),
                          *export_args, *force), None))
        if round_trip:  # the same validation tokens as the run's own final evaluation
            steps.append((cli("eval", str(files.artifact), "--json", "--max-tokens", str(eval_tokens), *t),
                          files.round_trip))
    return steps


def child_env(threads: int) -> dict[str, str]:
    """The environment of a run's processes: its thread count, and this code first on the path (a
    child must run the same `convert`/`shared` as the sweep, installed or from a checkout)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": root + (os.pathsep + path if path else "")}


@dataclass
class Job:
    """A run being worked on by one slot (its cores): the steps left, the process of the current one."""
    index: int
    files: RunFiles
    variant: str
    seed: int
    how: str
    cpus: list[int]
    steps: list[tuple[list[str], Path | None]]
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    pids: list[int] = field(default_factory=list)

    def start_next(self) -> bool:
        """Start the next step; False when none is left."""
        if not self.steps:
            return False
        argv, stdout_path = self.steps.pop(0)
        self.files.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.files.log, "a") as log:
            log.write(f"\n$ {' '.join(argv[2:])}\n")
            log.flush()
            out = open(stdout_path, "w") if stdout_path else log
            try:
                self.proc = subprocess.Popen(
                    argv, stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=child_env(len(self.cpus)),
                    start_new_session=True,  # a terminal's Ctrl-C reaches the sweep only; it passes one on
                    preexec_fn=_pin(self.cpus))
            finally:
                if stdout_path:
                    out.close()
        self.pids.append(self.proc.pid)
        return True


def _pin(cpus: list[int]):
    """The child's own CPU set (os.sched_setaffinity, where the system has it; else threads only)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def record(job: Job, wall_s: float, export: bool, round_trip: bool) -> dict:
    """The run's line of results.jsonl, from its summary.json, artifact and round-trip JSON."""
    s = _summary(job.files.run_dir) or {}
    rec = {"run": job.files.name, "variant": job.variant, "seed": job.seed, "val_bpb": s.get("val_bpb"),
           "val_loss": s.get("val_loss"), "steps": s.get("steps"), "stopped_because": s.get("stopped_because"),
           "tokens_per_s": s.get("tokens_per_s"), "train_time_s": s.get("train_time_s"),
           "eval_time_s": s.get("eval_time_s"), "wall_s": round(wall_s, 2), "resumed": job.how != "new",
           "backend": s.get("backend"), "parameters": s.get("parameters"), "cpus": job.cpus, "pids": job.pids,
           "started": round(job.started, 3), "ended": round(time.time(), 3),
           "artifact_bytes": job.files.artifact.stat().st_size if export else None, "roundtrip_bpb": None}
    if export and round_trip:
        rec["roundtrip_bpb"] = json.loads(job.files.round_trip.read_text())["val_bpb"]
    return rec
