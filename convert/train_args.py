"""The `train` command line, the same for `ternary train` and `python -m ternary_{mlx,cuda}.train`:
its arguments, and the plain options (shared.train.runner.TrainOptions) the runner takes from them."""
from __future__ import annotations

import argparse
from pathlib import Path

from convert.common import threads_arg
from shared.train.run_dir import OVERWRITE_HELP
from shared.train.runner import TrainOptions


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="named configuration (see `ternary presets`); default: smoke")
    g.add_argument("--config", type=Path, help="TOML run config")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values, e.g. --set train.lr=3e-4 train.steps=100 (repeatable)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", type=Path, help="run directory (default: runs/<preset>-<backend>-<time>); an existing "
                   "one that is not empty is refused unless --resume continues it or --overwrite replaces it, and "
                   "one training at a time writes there (it holds DIR/.lock)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + " or the checkpoint or config this "
                   "run reads")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue a run from its checkpoint (a run directory or a checkpoint); "
                        "--set may change train.* values such as train.steps")
    p.add_argument("--init", type=Path, metavar="CKPT",
                   help="start from these weights (a checkpoint directory) with a fresh optimizer; without "
                        "--preset/--config the run takes the checkpoint's config (change it with --set, "
                        "e.g. --set ternary.enabled=true)")
    p.add_argument("--teacher", type=Path, metavar="CKPT",
                   help="distil from this frozen checkpoint (run as its config says; import a Hugging Face "
                        "model with --no-ternary for a float teacher); sets train.teacher, mixed with "
                        "cross-entropy by train.distill_alpha at train.distill_temperature")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    threads_arg(p)


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The parsed arguments of `add_train_args` as the runner's options."""
    return TrainOptions(preset=args.preset, config=args.config, overrides=list(args.overrides), out=args.out,
                        resume=args.resume, init=args.init, teacher=args.teacher, progress=not args.no_progress,
                        overwrite=args.overwrite)


def main(argv: list[str] | None, backend: str, prog: str) -> int:
    """`python -m ternary_{mlx,cuda}.train`: parse `argv` and train with `backend` ("mlx" | "torch")."""
    import os
    from convert import runtime
    from convert.common import checkpoint_dir, writing
    from shared.train.runner import run_training
    p = argparse.ArgumentParser(prog=prog, description="Train a ternary language model.", allow_abbrev=False)
    add_train_args(p)
    args = p.parse_args(argv)
    opts = train_options(args)
    rt = runtime.fixed(backend, prog, args.threads)
    # one first line per job, not per rank (torchrun sets RANK; mlx.launch MLX_RANK)
    rank0 = os.environ.get("RANK", os.environ.get("MLX_RANK", "0")) == "0"
    loaded = runtime.start(rt, quiet=not rank0)
    with writing(opts.out or (checkpoint_dir(opts.resume).parent if opts.resume else None)):
        return run_training(opts, loaded)
