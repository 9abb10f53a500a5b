"""`ternary config`: the fully resolved, validated run config (--preset / --config, then --set) as TOML."""
from __future__ import annotations

import sys

from convert.common import resolve, source_args, sub


def run(args) -> int:
    cfg, _, _ = resolve(args)
    if args.out:
        cfg.save_toml(args.out)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(cfg.to_toml())
    return 0


def register(subs) -> None:
    c = sub(subs, "config", "Print (or write) the fully resolved, validated run config as TOML.",
            "  ternary config --preset pg-ternary\n"
            "  ternary config --preset smoke --set train.lr=1e-3 model.num_hidden_layers=2\n"
            "  ternary config --config run.toml --set ternary.group_size=64 --out resolved.toml",
            run)
    source_args(c)
    c.add_argument("--out", metavar="FILE.toml", help="write the TOML here (atomically) instead of stdout")
