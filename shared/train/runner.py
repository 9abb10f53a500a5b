"""`train` for either backend: run directory, resume/init, data, loop, summary.

`run_training(options, backend)` is a whole `train` command (`ternary train` and
`python -m ternary_{mlx,cuda}.train`, whose arguments convert/train_args.py parses into
`TrainOptions`); `train(cfg, backend, out_dir)` is one run, for library callers. `backend` is a
`Backend` record (convert/backends.py builds the full one); nothing here imports mlx or torch.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.spec import checkpoint as fmt
from shared.spec.atomic_dir import recover
from shared.spec.config import ConfigError, RunConfig
from shared.spec.ownership import inside
from shared.train import run_dir
from shared.data.dataset import load_token_dataset
from shared.train.evaluation import TEMPERATURE_KEYS
from shared.train.ttt import TTT_KEYS
from shared.train.loop import LoopResult, count_parameters, preflight, run
from shared.train.memory_budget import budget_line
from shared.train.schedule import tokens_through
from shared.spec.params import parameter_shapes
from shared.spec.presets import get_preset
from shared.data.tokenizers import copy_tokenizer, get_tokenizer


@dataclass
class Backend:
    name: str  # "mlx" or "torch"
    Model: type  # shared.train.interfaces.ModelClass
    Trainer: type  # shared.train.interfaces.TrainerClass
    version: str
    # Data parallelism: the backend's parallel module (shared.train.interfaces.Parallel; here only
    # `setup()` and `teardown(failed)` are used). None: always one process.
    parallel: Any = None


@dataclass
class TrainOptions:
    """What a `train` command line asks for, as plain values (convert/train_args.py parses them)."""
    preset: str | None = None       # a named configuration; None: smoke (or --init's own config)
    config: Path | None = None      # a TOML run config
    overrides: list[str] = field(default_factory=list)  # SECTION.KEY=VALUE
    out: Path | None = None         # the run directory; None: picked by default_out_dir / the resumed run's
    resume: Path | None = None      # continue this run (a run directory or a checkpoint)
    init: Path | None = None        # start from these weights with a fresh optimizer
    teacher: Path | None = None     # distil from this frozen checkpoint
    progress: bool = True           # the progress bar
    overwrite: bool = False         # start an existing run directory afresh (shared/train/run_dir.py)


def _teacher_overrides(opts: TrainOptions) -> list[str]:
    """--set overrides plus --teacher as train.teacher (both at once is ambiguous: refused)."""
    overrides = list(opts.overrides)
    if opts.teacher is not None:
        if any(o.split("=", 1)[0].strip() == "train.teacher" for o in overrides):  # not train.teacher_dtype
            raise ConfigError("--teacher and --set train.teacher=... both name a teacher; give one")
        overrides.append(f"train.teacher={_checkpoint_dir(opts.teacher).resolve()}")
    return overrides


def config_from_options(opts: TrainOptions) -> RunConfig:
    overrides = _teacher_overrides(opts)
    if opts.config:
        cfg = RunConfig.load_toml(opts.config)
    elif opts.preset is None and opts.init is not None:
        cfg = fmt.read_config(existing_checkpoint(opts.init, "--init"))  # fine-tuning: the imported model's own config
        cfg.train.teacher = None  # a new run distils only from a teacher it names (--teacher)
    else:
        cfg = get_preset(opts.preset or "smoke")
    return cfg.with_overrides(overrides)


def _checkpoint_dir(path: Path) -> Path:
    for candidate in (path, path / "checkpoint"):  # a save killed mid-swap, on a filesystem without an atomic exchange
        recover(candidate)
    return path / "checkpoint" if (path / "checkpoint" / "manifest.json").exists() else path


def existing_checkpoint(path: Path, flag: str) -> Path:
    """The checkpoint that `flag PATH` names (a run directory or a checkpoint directory), or an error
    naming PATH itself, before anything reads it or is derived from it (its parent, say)."""
    ckpt = _checkpoint_dir(path)
    if not path.exists():
        raise fmt.CheckpointError(f"{flag} {path}: no such directory")
    if not (ckpt / "manifest.json").is_file():
        raise fmt.CheckpointError(f"{flag} {path}: not a run directory or a checkpoint (no manifest.json in it "
                                  "or in its checkpoint/)")
    return ckpt


def _resume_config(ckpt: Path, overrides: list[str]) -> RunConfig:
    saved = fmt.read_config(ckpt)
    cfg = saved.with_overrides(overrides)
    _check_resume_config(cfg, saved, ckpt)
    return cfg


def _check_resume_config(cfg: RunConfig, saved: RunConfig, ckpt: Path) -> None:
    for section in ("model", "ternary", "data"):
        if getattr(cfg, section) != getattr(saved, section):
            raise ConfigError(f"--resume: {section}.* cannot change when resuming (only train.* can); "
                              f"start a new run with --init {ckpt} instead")


def _read_resume(cfg: RunConfig, resume: Path) -> tuple[RunConfig, dict, dict, dict]:
    """A --resume checkpoint's config, weights, optimizer state and trainer state, after checking
    that `cfg` may continue it (also when called as a library, not only from the CLI)."""
    saved_cfg, weights = fmt.read_checkpoint(resume)
    _check_resume_config(cfg, saved_cfg, resume)
    opt = fmt.read_optimizer(resume)
    if opt is None:
        raise fmt.CheckpointError(f"{resume}: no optimizer state to resume from; use --init instead")
    return saved_cfg, weights, opt[0], fmt.read_trainer_state(resume) or {}


def optimizer_state_notes(cfg: RunConfig, saved: RunConfig | None) -> list[str]:
    """Log lines about train.optimizer_state_dtype: a resume that changes it (the checkpoint holds the
    moments as float32 either way; the trainer converts them when it loads them), and bfloat16
    moments with a beta2 whose per-step decay bfloat16 can barely resolve."""
    t, notes = cfg.train, []
    if saved is not None and saved.train.optimizer_state_dtype != t.optimizer_state_dtype:
        how = "rounded to nearest even" if t.optimizer_state_dtype == "bfloat16" else "exactly"
        notes.append(f"train.optimizer_state_dtype: the checkpoint's {saved.train.optimizer_state_dtype} moments "
                     f"are converted to {t.optimizer_state_dtype} ({how})")
    if t.optimizer_state_dtype == "bfloat16" and t.beta2 >= 0.99:
        notes.append(f"note: train.beta2 = {t.beta2:g} with bfloat16 moments: exp_avg_sq's decay per step, "
                     f"{1 - t.beta2:.2g} of itself, is near bfloat16's resolution (2^-8), so rounding keeps it high "
                     "(+4.5% at 0.99, +58% at 0.999: docs/design.md); the default 0.95 holds")
    return notes


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """Store data.source / data.tokenizer paths absolute, so the run can be read from anywhere."""
    from shared.data.tokenizers import BUILTIN_TOKENIZERS
    d = cfg.data
    if d.source != "synthetic" and Path(d.source).exists():
        d.source = str(Path(d.source).resolve())
    if d.tokenizer not in BUILTIN_TOKENIZERS and Path(d.tokenizer).exists():
        d.tokenizer = str(Path(d.tokenizer).resolve())
    if cfg.train.teacher is not None and Path(cfg.train.teacher).exists():
        cfg.train.teacher = str(_checkpoint_dir(Path(cfg.train.teacher)).resolve())
    return cfg


def load_teacher(cfg: RunConfig, backend: Backend, tokenizer, log: Callable[[str], None]):
    """The frozen teacher of train.teacher, checked against the student's vocabulary and tokenizer."""
    path = Path(cfg.train.teacher)
    if cfg.train.distill_alpha == 0:
        log(f"train.teacher {path} is not loaded: train.distill_alpha = 0 (cross-entropy only)")
        return None
    teacher_cfg, weights = fmt.read_checkpoint(_checkpoint_dir(path))
    if teacher_cfg.model.max_position_embeddings < cfg.train.seq_len:
        raise ConfigError(f"train.teacher {path}: max_position_embeddings {teacher_cfg.model.max_position_embeddings} "
                          f"is below train.seq_len {cfg.train.seq_len}; the teacher would run past its context")
    if teacher_cfg.model.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"train.teacher {path}: vocab_size {teacher_cfg.model.vocab_size} differs from the "
                          f"student's {cfg.model.vocab_size}; distillation needs the same vocabulary")
    teacher_tok = get_tokenizer(teacher_cfg.data.tokenizer)
    if teacher_tok.sha256 != tokenizer.sha256:
        raise ConfigError(f"train.teacher {path}: its tokenizer {teacher_tok.name!r} is not the student's "
                          f"{tokenizer.name!r}; distillation needs the same tokenizer")
    total, _ = count_parameters(teacher_cfg)
    kind = "ternary" if teacher_cfg.ternary.enabled else "float"
    log(f"teacher: {path} ({kind}, {total:,} parameters, frozen); loss = {1 - cfg.train.distill_alpha:g} CE + "
        f"{cfg.train.distill_alpha:g} T^2 KL at T = {cfg.train.distill_temperature:g}")
    return backend.Model(teacher_cfg, weights, seed=0)


def train(cfg: RunConfig, backend: Backend, out_dir: Path, *, resume: Path | None = None,
          init: Path | None = None, log: Callable[[str], None] = print, progress: bool = True,
          rank: int = 0, world_size: int = 1,
          before_write: Callable[[], None] | None = None) -> tuple[LoopResult, dict[str, Any]]:
    """Train `cfg` with `backend`, writing metrics, checkpoints, plot and summary into `out_dir`.
    `before_write` runs on rank 0 after every check, just before the first write (--overwrite's
    deletion of the previous run: a refused config or missing data leaves that run as it was)."""
    if resume is None:
        cfg = _absolute_paths(cfg)
    if cfg.train.ttt != "off" and world_size > 1:  # before any work: TTT steps one model on its own
        raise ConfigError(f"train.ttt = {cfg.train.ttt!r} runs in one process, not on {world_size} ranks; train "
                          "with train.ttt = \"off\" and score the checkpoint with `ternary eval --ttt` afterwards")
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"data.tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but "
                          f"model.vocab_size is {cfg.model.vocab_size}")
    dataset = load_token_dataset(cfg.data.source, tokenizer, synthetic_train_bytes=cfg.data.synthetic_train_bytes,
                                 synthetic_val_bytes=cfg.data.synthetic_val_bytes, seed=cfg.data.seed)
    log(f"data: {dataset.description}")
    state, weights, opt_state = {}, None, None
    saved_cfg = None
    if resume is not None:
        saved_cfg, weights, opt_state, state = _read_resume(cfg, resume)
        log(f"resuming from {resume} at step {state.get('step', 0)}")
    elif init is not None:
        init_cfg, weights = fmt.read_checkpoint(init)
        weights = _add_subln(init_cfg, cfg, weights, init, log)
        log(f"initialising weights from {init}")
    teacher = load_teacher(cfg, backend, tokenizer, log) if cfg.train.teacher else None
    if init is not None and init_cfg.train.teacher and not cfg.train.teacher:
        log(f"note: {init} was distilled from {init_cfg.train.teacher}; this run is not (add --teacher to distil)")
    if rank == 0 and before_write is not None:
        before_write()
    out_dir.mkdir(parents=True, exist_ok=True)  # after the checks: a refused resume leaves the run's config.toml as it was
    if init is not None:
        _own_tokenizer(cfg, tokenizer, init, out_dir, log, write=rank == 0)
    if rank == 0:  # data parallel: one writer per file
        cfg.save_toml(out_dir / "config.toml")
        if resume is not None:
            _truncate_metrics(out_dir / "metrics.jsonl", state.get("step", 0))
    log(budget_line(cfg, None if teacher is None else teacher.config))  # before the student is built
    for line in optimizer_state_notes(cfg, saved_cfg):
        log(line)
    model = backend.Model(cfg, weights, seed=cfg.train.seed)
    trainer = backend.Trainer(cfg, model, opt_state, teacher=teacher)
    del weights, opt_state  # the model and optimizer hold their own copies (FSDP2: only this rank's rows)
    for note in getattr(trainer, "notes", []):  # device, precision, data-parallel mode
        log(note)
    plan = preflight(cfg, dataset, world_size, log)
    result = run(cfg, trainer, dataset, out_dir, start_step=state.get("step", 0),
                 loader_state=state.get("loader"), best_val=state.get("best_val_loss"),
                 bad_evals=state.get("bad_evals", 0), train_time_s=state.get("train_time_s", 0.0),
                 rank=rank, world_size=world_size, log=log, progress=progress)
    summary = _summary(cfg, backend, dataset, plan, result, world_size)
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_losses(out_dir)
        log(format_summary(summary))
    return result, summary


def _own_tokenizer(cfg: RunConfig, tokenizer, init: Path, out_dir: Path, log: Callable[[str], None],
                   write: bool) -> None:
    """A tokenizer that lives inside the --init checkpoint (`ternary import-hf` puts it there) is
    copied into the run directory and data.tokenizer points at the copy: the run must not break
    when that checkpoint is deleted or moved. (Only rank 0 `write`s; every rank points there.)"""
    if tokenizer.path is None:
        return
    root = (init.parent if init.name == "checkpoint" else init).resolve()
    if not Path(tokenizer.path).resolve().is_relative_to(root):
        return
    dest = (out_dir / "tokenizer").resolve()
    if write:
        cfg.data.tokenizer = copy_tokenizer(tokenizer, dest)
        log(f"tokenizer: copied {tokenizer.path} into {dest} (the run's own copy, independent of --init)")
    else:
        cfg.data.tokenizer = str(dest / Path(tokenizer.path).name if Path(tokenizer.path).is_file() else dest)


def _add_subln(init_cfg: RunConfig, cfg: RunConfig, weights: dict, init: Path, log: Callable[[str], None]) -> dict:
    """--init into a run with model.subln from a checkpoint without it: unit sub-norm gains, blended
    in over ternary.warmup_steps (shared/spec/config.py); any other model difference is an error."""
    adding = cfg.model.subln and not init_cfg.model.subln
    if init_cfg.model != (dataclasses.replace(cfg.model, subln=False) if adding else cfg.model):
        diff = [f"{k} {getattr(init_cfg.model, k)!r} -> {getattr(cfg.model, k)!r}"
                for k in (f.name for f in dataclasses.fields(cfg.model)) if getattr(init_cfg.model, k) != getattr(cfg.model, k)]
        raise ConfigError(f"--init {init}: its model config differs from this run's ({'; '.join(diff)}); "
                          "only model.subln may be switched on when initialising")
    if not adding:
        return weights
    weights = dict(weights)
    for name, shape in parameter_shapes(cfg.model).items():
        if name not in weights:
            weights[name] = np.ones(shape, np.float32)
    if cfg.ternary.enabled and cfg.ternary.warmup_steps > 0:
        log(f"SubLN added (unit gains), blended in over ternary.warmup_steps={cfg.ternary.warmup_steps}: "
            "the model starts unchanged")
    elif not cfg.ternary.enabled:
        log("warning: SubLN added to a float model (ternary.enabled = false): there is no warm-up lambda to "
            "blend it in, so it is fully on from step 0 and changes the model's outputs")
    else:
        log("warning: SubLN added with ternary.warmup_steps = 0: it is fully on from step 0 and changes the "
            "model's outputs; set ternary.warmup_steps > 0 to blend it in from an unchanged model")
    return weights


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (from a run that went on after the checkpoint we resume from),
    so metrics.jsonl has each step once."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if (json.loads(line).get("eval") or json.loads(line))["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def _summary(cfg, backend, dataset, plan, result: LoopResult, world_size: int = 1) -> dict[str, Any]:
    last = result.evals[-1] if result.evals else {}
    t = cfg.train
    tokens = tokens_through(result.step, t, world_size)  # all ranks, as tokens_seen
    return {
        "backend": backend.name, "steps": result.step, "stopped_because": result.stopped_because,
        "train_time_s": round(result.train_time_s, 2), "eval_time_s": round(result.eval_time_s, 2),
        "tokens_per_s": round(tokens / result.train_time_s) if result.train_time_s else None,
        "final_train_loss": result.last_loss, "val_loss": last.get("val_loss"), "val_bpb": last.get("val_bpb"),
        "val_perplexity": last.get("perplexity"), "val_tokens": last.get("tokens"),
        "eval_mode": last.get("mode"), "entropy_bpb": dataset.entropy_bits_per_byte,
        "entropy_gap_bpb": last.get("entropy_gap_bpb"), "checkpoint": str(result.checkpoint or ""),
        **({k: last.get(k) for k in TEMPERATURE_KEYS} if t.temperature_scaling else {}),
        **({k: last.get(k) for k in TTT_KEYS} if t.ttt != "off" else {}),
        **{k: plan[k] for k in ("parameters", "ternary_parameters", "epochs", "tokens_per_parameter")},
    }


def format_summary(s: dict[str, Any]) -> str:
    def f(v, fmt_="{:.4f}"):
        return "-" if v is None else fmt_.format(v)
    lines = [
        "", f"== summary ({s['backend']}) ==",
        f"  steps          {s['steps']} ({s['stopped_because']})",
        f"  train time     {s['train_time_s']:.1f} s ({f(s['tokens_per_s'], '{:,}')} tokens/s; evaluation {s['eval_time_s']:.1f} s)",
        f"  train loss     {f(s['final_train_loss'])}",
        f"  val_loss       {f(s['val_loss'])}   perplexity {f(s['val_perplexity'], '{:.2f}')}",
        f"  val_bpb        {f(s['val_bpb'])}   ({s['eval_mode'] or '-'}, {s['val_tokens'] or 0:,} tokens)",
    ]
    if s.get("temperature") is not None:  # next to the untempered numbers above, never instead of them
        lines.append(f"  tempered       val_loss {f(s['val_loss_tempered'])}   val_bpb {f(s['val_bpb_tempered'])}"
                     f"   (logits / {s['temperature']:g}, T chosen on training tokens)")
    if s.get("ttt_mode") is not None:  # beside the plain val_bpb above, never instead of it
        lines.append(f"  val_bpb ({s['ttt_mode']})   {f(s['val_bpb_ttt'])}   val_loss {f(s['val_loss_ttt'])}")
    if s["entropy_bpb"] is not None:
        lines.append(f"  source entropy {s['entropy_bpb']:.4f} bpb; gap {f(s['entropy_gap_bpb'], '{:+.4f}')} bpb")
    lines.append(f"  checkpoint     {s['checkpoint'] or '-'}")
    return "\n".join(lines)


def plot_losses(out_dir: Path) -> Path | None:
    """loss.png: train loss per step and val loss per evaluation, from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train, val = [], []
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            val.append((rec["eval"]["step"], rec["eval"]["val_loss"]))
        elif math.isfinite(rec["loss"]):
            train.append((rec["step"], rec["loss"]))
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def default_out_dir(opts: TrainOptions, backend: str) -> Path:
    if opts.preset or opts.config or opts.init is None:
        stem = opts.preset or (opts.config.stem if opts.config else "smoke")
    else:  # fine-tuning from a checkpoint's own config: name the run after it
        d = _checkpoint_dir(opts.init).resolve()
        stem = (d.parent.name if d.name == "checkpoint" else d.name) + "-ft"
    base = Path("runs") / f"{stem}-{backend}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out, n = base, 2
    while out.exists():  # two runs started in the same second: the second gets its own directory
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


def run_training(opts: TrainOptions, backend: Backend) -> int:
    """A whole `train` command: its config and run directory, the data-parallel group around
    `train`; 0, or 130 when interrupted."""
    if opts.resume is not None and opts.init is not None:
        raise ConfigError("use --resume (continue a run) or --init (new run from weights), not both")
    if opts.resume is not None:
        ckpt = existing_checkpoint(opts.resume, "--resume")
        cfg = _resume_config(ckpt, _teacher_overrides(opts))
        if opts.out is None and ckpt.name != "checkpoint":
            raise ConfigError(f"--resume {opts.resume}: not inside a run directory; say where the run "
                              "continues with --out DIR")
        out_dir = opts.out or ckpt.parent
    else:
        ckpt = None
        cfg = config_from_options(opts)
        out_dir = opts.out or default_out_dir(opts, backend.name)
    init = existing_checkpoint(opts.init, "--init") if opts.init else None
    rank, world_size = backend.parallel.setup() if backend.parallel is not None else (0, 1)
    log = print if rank == 0 else (lambda _m: None)
    lock = None
    try:
        lock = _claim_run_dir(out_dir, opts, cfg, ckpt, init, rank, backend.parallel)
        if lock is not None and lock.note:
            log(lock.note)
        result, _ = train(cfg, backend, out_dir, resume=ckpt, init=init, progress=opts.progress, log=log,
                          rank=rank, world_size=world_size, before_write=lock.clear if lock else None)
    except BaseException:
        if backend.parallel is not None:
            backend.parallel.teardown(failed=True)
        raise
    finally:
        if lock is not None:
            lock.release()
    if backend.parallel is not None:
        backend.parallel.teardown()
    return 0 if not result.stopped_because.startswith("interrupted") else 130


def _claim_run_dir(out_dir: Path, opts: TrainOptions, cfg: RunConfig, ckpt: Path | None, init: Path | None,
                   rank: int, parallel) -> run_dir.RunLock | None:
    """Rank 0 checks and locks the run directory (shared/train/run_dir.py); every rank learns its
    verdict through one `agree`, so all of them stop, or none (SEEDS S12). Rank 0's lock, else None."""
    lock, error = None, None
    if rank == 0:
        teacher = _checkpoint_dir(Path(cfg.train.teacher)) if cfg.train.teacher else None
        sources = {"the checkpoint --resume continues from": ckpt, "the --init checkpoint": init,
                   "the teacher checkpoint": teacher, "the --config file": opts.config}
        try:
            lock = run_dir.claim(out_dir, resumes_here=ckpt is not None and inside(ckpt, out_dir),
                                 overwrite=opts.overwrite, sources=sources)
        except Exception as e:  # any failure here (a refusal, a disk error) must reach the agree below
            error = e
    refused = parallel.agree(error is not None) if parallel is not None else error is not None
    if error is not None:
        raise error
    if refused:
        raise run_dir.RunDirError(f"--out {out_dir}: refused by rank 0 (its error says why)")
    return lock
