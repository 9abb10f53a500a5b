"""`ternary init`: a freshly initialised checkpoint directory, built and saved by either backend."""
from __future__ import annotations

from pathlib import Path

from convert.backends import load_backend
from convert.runtime import AUTO, CHOICES
from convert.common import CliError, config_sizes, counts, human, resolve, source_args, sub
from shared.spec.ownership import checkpoint_refusal, occupied


def run(args) -> int:
    cfg, source, _ = resolve(args)
    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise CliError(f"{out} is an existing checkpoint; pass --force to replace it")
    why = checkpoint_refusal(out) if args.force and occupied(out) else None
    if why:
        raise CliError(f"--force: {why}; it replaces only a checkpoint directory holding only the files its "
                       "manifest lists (nothing was changed)")
    backend = load_backend(args.backend)
    model = backend.Model(cfg, seed=cfg.train.seed)  # on the CPU in either backend: it is only saved
    backend.checkpoint.save(model, cfg, out)
    total, tern = counts(cfg, config_sizes(cfg))
    print(f"wrote {out}: {source}, {human(total)} parameters ({human(tern)} ternary), "
          f"backend {args.backend}, seed {cfg.train.seed}")
    return 0


def register(subs) -> None:
    i = sub(subs, "init", "Write a freshly initialised checkpoint directory.",
            "  ternary init --preset smoke --out runs/smoke-init\n"
            "  ternary init --config run.toml --backend torch --seed 1 --out runs/init", run)
    source_args(i)
    i.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to create")
    i.add_argument("--backend", choices=CHOICES, default=AUTO, help="backend that builds and saves the "
                   "model (default: auto, MLX on Apple silicon and torch elsewhere; the format is the same)")
    i.add_argument("--seed", type=int, metavar="N", help="initialisation seed (default: train.seed; stored as train.seed)")
    i.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out, but only a "
                   "checkpoint directory holding nothing but the files its manifest lists")
