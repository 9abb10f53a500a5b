"""`ternary sweep SPEC.toml`: every (variant, seed) of a spec (shared/train/sweep_spec.py) as an
ordinary training run, several at once with --jobs (each pinned to its share of the cores), resumable,
then results.jsonl, the table, the plot and the winner's config (shared/train/sweep_report.py).
One run's life (state, commands, record) is convert/sweep_runs.py."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

from convert.common import CliError, positive_int, sub

FORMAT = "ternary-sweep/1"
MANIFEST = "sweep.json"
REPORT_FILES = ("results.jsonl", "results.md", "sweep.png", "winner.toml")


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS: no affinity; threads only
        return list(range(os.cpu_count() or 1))


def core_slots(jobs: int, cpus: list[int]) -> list[list[int]]:
    """`jobs` disjoint, equal shares of `cpus` (the remainder unused: equal shares keep runs comparable)."""
    if jobs > len(cpus):
        raise CliError(f"--jobs {jobs}: this process may use {len(cpus)} CPU(s); give at most {len(cpus)} "
                       "(each job gets at least one core of its own)")
    per = len(cpus) // jobs
    return [cpus[k * per:(k + 1) * per] for k in range(jobs)]


def _check_export_args(args: list[str]) -> None:
    """The export arguments parsed as `ternary convert` would, before any run (one line if refused)."""
    from convert.cli import build_parser
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(["convert", "RUN", "--to", "packed", "--out", "X.tpk", *args])
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ["invalid"])[-1]
        raise CliError(f"export.args {args}: {last.split('error: ', 1)[-1]}") from None


def claim_out(out: Path, identity: dict) -> bool:
    """Refuse `out` unless it is new, empty, or a sweep of this very spec (its sweep.json); True if it
    holds an earlier attempt of this sweep."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CliError(f"--out {out}: exists and is not a directory")
    if not out.exists() or not any(e.name != ".lock" for e in out.iterdir()):
        return False
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CliError(f"--out {out}: not empty and not a sweep directory (no {MANIFEST} of ternary sweep); "
                       "choose another --out (nothing was changed)")
    if json.dumps(manifest.get("identity"), sort_keys=True) != json.dumps(identity, sort_keys=True):
        raise CliError(f"--out {out}: a sweep of a different spec (its variants, seeds, budget or resolved "
                       "configs differ from this one's); choose another --out, or restore that spec to resume it")
    return True


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Scheduler:
    """Runs the unfinished runs of a spec on `slots` (one job per slot), printing progress."""

    def __init__(self, spec, out: Path, slots: list[list[int]]):
        from convert.sweep_runs import RunFiles, state
        self.spec, self.out, self.slots = spec, out, slots
        self.total = len(spec.runs)
        self.todo = []
        for i, run in enumerate(spec.runs, 1):
            files = RunFiles(out, run.name)
            how = state(files)
            if how != "done":
                self.todo.append((i, run, files, how))
        self.active: dict[int, object] = {}
        self.walls: list[float] = []
        self.failed: list[str] = []

    def _start(self, slot: int) -> None:
        from convert.sweep_runs import Job, commands
        i, run, files, how = self.todo.pop(0)
        cpus = self.slots[slot]
        steps = commands(files, how, self.spec.backend, len(cpus), self.spec.export_args, self.spec.round_trip,
                         run.config.train.eval_tokens)
        job = Job(i, files, run.variant, run.seed, how, cpus, steps)
        print(f"[{i:>{len(str(self.total))}}/{self.total}] {run.variant} seed {run.seed}: {how} on cpu "
              f"{','.join(map(str, cpus))} (log {files.log})", flush=True)
        self.active[slot] = job
        if not job.start_next():
            self._finish(slot)

    def _finish(self, slot: int) -> None:
        from convert.sweep_runs import record, write_atomic
        job = self.active.pop(slot)
        wall = time.time() - job.started
        rec = record(job, wall, self.spec.export_args is not None, self.spec.round_trip)
        job.files.done.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(job.files.done, json.dumps(rec) + "\n")
        self.walls.append(wall)
        left = len(self.todo) + len(self.active)
        eta = sum(self.walls) / len(self.walls) * left / len(self.slots)
        bpb = "-" if rec["val_bpb"] is None else f"{rec['val_bpb']:.4f}"
        print(f"[{job.index:>{len(str(self.total))}}/{self.total}] {job.variant} seed {job.seed}: val_bpb {bpb}, "
              f"{rec['steps']} steps, {wall:.0f} s" + (f"; {left} left, ETA {_fmt_s(eta)}" if left else ""),
              flush=True)

    def _poll(self, slot: int) -> None:
        job = self.active[slot]
        rc = job.proc.poll()
        if rc is None:
            return
        if rc == 0:
            if not job.start_next():
                self._finish(slot)
            return
        self.active.pop(slot)
        self.failed.append(job.files.name)
        print(f"[{job.index}/{self.total}] {job.variant} seed {job.seed}: FAILED (exit {rc}); see {job.files.log}",
              flush=True)

    def run(self) -> None:
        while self.todo or self.active:
            for slot in range(len(self.slots)):
                if slot not in self.active and self.todo:
                    self._start(slot)
            for slot in list(self.active):
                self._poll(slot)
            time.sleep(0.2)

    def interrupt(self) -> None:
        """Pass one Ctrl-C to every run (each saves its checkpoint and exits); a second aborts them."""
        print(f"\nternary sweep: interrupted; {len(self.active)} run(s) saving a checkpoint "
              "(Ctrl-C again to abort them)", file=sys.stderr, flush=True)
        for _ in range(2):
            try:
                for job in self.active.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(job.proc.pid, signal.SIGINT)
                for job in self.active.values():
                    job.proc.wait()
                return
            except KeyboardInterrupt:
                continue


def write_report(spec, out: Path) -> int:
    """results.jsonl, results.md, sweep.png and winner.toml from the done markers; the runs reported."""
    from convert.sweep_runs import RunFiles, write_atomic
    from shared.train import sweep_report as rep
    records = []
    for run in spec.runs:
        done = RunFiles(out, run.name).done
        if done.is_file():
            records.append(json.loads(done.read_text()))
    if not records:
        return 0
    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    stats = rep.variant_stats(records, list(spec.variants), spec.baseline)
    best = rep.winner(stats)
    first = next(r for r in spec.runs if r.variant == best.name)
    winner_toml = out / "winner.toml"
    write_atomic(winner_toml, f"# ternary sweep {spec.path}: variant {best.name!r}, lowest mean val_bpb "
                 f"({len(best.bpb)} seed(s)); this is run {first.name}'s resolved config\n"
                 f"# next: ternary promote {winner_toml} --target 8xh100 --artifact-mb 16 --out promoted.toml\n"
                 + first.config.to_toml())
    verdict = rep.verdict(best)
    partial = "" if len(records) == len(spec.runs) else f" ({len(records)} of {len(spec.runs)} runs finished)"
    span = max(r["ended"] for r in records) - min(r["started"] for r in records)
    head = (f"ternary sweep {spec.path}: {len(spec.variants)} variants x {len(spec.seeds)} seeds, "
            f"{spec.describe_budget()}{partial}; base {spec.baseline!r}; {_fmt_s(span)} from the first run's "
            f"start to the last one's end ({len({tuple(r['cpus']) for r in records})} core set(s))")
    note = ("val_bpb: each run's final evaluation. Δ: difference of mean val_bpb from the base variant, with a "
            f"{rep.LEVEL:.0%} Welch t interval (unequal variances, Welch-Satterthwaite degrees of freedom).")
    write_atomic(out / "results.md", f"{head}\n\n{rep.markdown_table(stats)}\n{verdict}\n\n{note}\n")
    rep.plot(records, stats, {r.name: RunFiles(out, r.name).run_dir / "metrics.jsonl" for r in spec.runs},
             spec.baseline, out / "sweep.png")
    print(f"\n{head}\n{rep.text_table(stats)}\n{verdict}\n{note}\n")
    print(f"wrote {out / 'results.jsonl'}, {out / 'results.md'}, {out / 'sweep.png'}, {winner_toml}")
    return len(records)


def run(args) -> int:
    import importlib.util
    from convert.sweep_runs import write_atomic
    from shared.train import run_dir
    from shared.train.sweep_spec import load_spec
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("ternary sweep draws sweep.png with matplotlib, which is not installed "
                       "(pip install matplotlib); nothing was run")
    spec = load_spec(args.spec, args.out)
    if spec.out is None:
        raise CliError(f"{args.spec}: no output directory; set out = \"DIR\" in the spec or pass --out DIR")
    if spec.export_args is not None:
        _check_export_args(spec.export_args)
    slots = core_slots(args.jobs, _cpus())
    out, identity = spec.out, spec.identity()
    claim_out(out, identity)
    lock = run_dir.acquire(out)  # one sweep at a time here; a second fails naming the first
    try:
        claim_out(out, identity)  # again under the lock: another sweep may have written meanwhile
        write_atomic(out / MANIFEST, json.dumps({"format": FORMAT, "spec": str(spec.path), "identity": identity},
                                                indent=1) + "\n")
        for sub_dir in ("configs", "runs", "logs", "done"):
            (out / sub_dir).mkdir(exist_ok=True)
        from convert.sweep_runs import RunFiles
        for r in spec.runs:
            r.config.save_toml(RunFiles(out, r.name).config)
        return _sweep(spec, out, slots)
    finally:
        lock.release()


def _sweep(spec, out: Path, slots: list[list[int]]) -> int:
    sched = Scheduler(spec, out, slots)
    skipped = sched.total - len(sched.todo)
    print(f"ternary sweep: {len(spec.variants)} variants x {len(spec.seeds)} seeds = {sched.total} runs into {out}; "
          f"{spec.describe_budget()}; {len(slots)} job(s) at a time, {len(slots[0])} core(s) each"
          + (f"; {skipped} already done (skipped)" if skipped else ""), flush=True)
    t0 = time.time()
    try:
        sched.run()
    except KeyboardInterrupt:
        sched.interrupt()
        print(f"resume with: ternary sweep {spec.path} --out {out}", file=sys.stderr)
        return 130
    write_report(spec, out)
    print(f"ternary sweep: ran {sched.total - skipped - len(sched.failed)} run(s) in {_fmt_s(time.time() - t0)}")
    if sched.failed:
        print(f"ternary sweep: {len(sched.failed)} run(s) failed ({', '.join(sched.failed)}); their logs say why; "
              f"rerun `ternary sweep {spec.path} --out {out}` to retry them", file=sys.stderr)
        return 1
    return 0


def register(subs) -> None:
    s = sub(subs, "sweep", "Run an ablation: every (variant, seed) of SPEC.toml, then a table, a plot and the winner.",
            "  ternary sweep examples/sweep-smoke.toml\n"
            "  ternary sweep examples/sweep-smoke.toml --jobs 2 --out runs/sweep-smoke\n\n"
            "SPEC.toml: a base (preset or config, and --set overrides), [variants] (named lists of\n"
            "--set overrides) or [grid] (named axes whose product are the variants), seeds, a [budget]\n"
            "(steps = N, or wall_s = S with max_steps = N: equal training wall-clock) and optionally\n"
            "[export] (a packed artifact per run: its bytes and round-trip val_bpb); every override is\n"
            "checked against the run config before anything runs. See README 'Sweeps'.\n\n"
            "Each run is a `ternary train` into OUT/runs/VARIANT-seedS (config in OUT/configs/, log in\n"
            "OUT/logs/), marked finished by OUT/done/VARIANT-seedS.json. Run it again to resume: finished\n"
            "runs are skipped, interrupted ones resume from their checkpoint. Ctrl-C: every running run\n"
            "saves its checkpoint; exit 130. Writes OUT/results.jsonl, results.md (mean +- std val_bpb,\n"
            "the difference from the base with a 95% Welch t interval), sweep.png and winner.toml (for\n"
            "`ternary promote`). Exits 1 if a run failed (the others are reported).", run)
    s.add_argument("spec", type=Path, metavar="SPEC.toml", help="the sweep spec")
    s.add_argument("--out", type=Path, help="the sweep directory (default: the spec's out)")
    s.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="runs at a time, each pinned to its own equal share of the cores this process may use "
                        "(default: 1, on all of them)")
