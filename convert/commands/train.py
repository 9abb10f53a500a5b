"""`ternary train`: the training run (shared/train/runner.py) in MLX or PyTorch (convert/backends.py;
imported lazily); its options are convert/train_args.py's, shared with `python -m ternary_{mlx,cuda}.train`."""
from __future__ import annotations

import sys

from convert import runtime
from convert.common import CliError, backend_arg, sub, writing
from convert.train_args import add_train_args, train_options


def run(args) -> int:
    from shared.train.loop import NonFiniteLoss
    from shared.train.runner import default_out_dir, existing_checkpoint, run_training
    if args.resume is not None and (args.preset or args.config):
        raise CliError("--resume continues with the checkpoint's own config; drop --preset/--config "
                       "(--set may still change train.* values such as train.steps)")
    opts = train_options(args)
    if opts.resume is None and opts.out is None:  # args.backend is resolved (convert/runtime.py): never "auto"
        opts.out = default_out_dir(opts, args.backend)  # what run_training would pick; said up front
    for flag, path in (("--resume", opts.resume), ("--init", opts.init)):
        if path is not None:  # a missing one is named before the framework loads (seconds of import)
            existing_checkpoint(path, flag)
    backend = runtime.start(args.runtime)
    where = opts.out or existing_checkpoint(opts.resume, "--resume").parent
    print(f"ternary train: run directory {where}", flush=True)
    try:
        with writing(where):
            code = run_training(opts, backend)
    except NonFiniteLoss as e:
        print(f"ternary: error: {e}", file=sys.stderr)
        return 1
    if code == 0:
        print(f"\nnext: ternary eval {where} --backend {args.backend}\n"
              f"      ternary generate {where} --backend {args.backend} --prompt \"...\"")
    else:
        print(f"\nresume with: ternary train --backend {args.backend} --resume {where}")
    return code


def register(subs) -> None:
    t = sub(subs, "train", "Train a model: metrics, loss plot, summary and checkpoint in a run directory.",
            "  ternary train --preset smoke\n"
            "  ternary train --preset smoke --backend mlx --out runs/smoke-mlx --threads 1\n"
            "  ternary train --config run.toml --set train.steps=1000 train.lr=2e-3\n"
            "  ternary train --resume runs/smoke-mlx --set train.steps=600\n"
            "  ternary train --preset smoke --init runs/smoke-mlx/checkpoint --out runs/finetune\n"
            "  ternary train --init ckpt/student --teacher ckpt/teacher --set ternary.warmup_steps=200 model.subln=true\n\n"
            "Several processes (train.batch_size is per rank):\n"
            "  torchrun --standalone --nproc_per_node=8 -m ternary_cuda.train --config run.toml --out runs/big\n"
            "  mlx.launch --backend ring -n 2 -- python -m ternary_mlx.train --preset smoke --out runs/dp2\n\n"
            "The run directory holds config.toml, metrics.jsonl, loss.png, summary.json and\n"
            "checkpoint/ (and tokenizer/, a copy of the one inside an --init checkpoint). An existing\n"
            "one is refused unless --resume continues it or --overwrite starts it afresh (deleting\n"
            "only those), and one training at a time holds DIR/.lock. The first Ctrl-C finishes the\n"
            "current step, saves checkpoint/ and exits 130 (resume with --resume DIR); a second\n"
            "Ctrl-C aborts at once. Exits 1 if the loss becomes non-finite.", run)
    add_train_args(t)
    backend_arg(t, "trains")
