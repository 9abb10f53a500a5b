"""The `ternary` command line: one console script whose subcommands dispatch to the packages.

Each subcommand is a module of convert/commands/ (one per verb; its index docstring lists them), and
build_parser registers them in the order of convert.commands.COMMANDS. mlx and torch are
imported inside the subcommands that need them, so `ternary --help`, `presets` and `config` start
fast. User errors (bad config, bad checkpoint, bad token ids, bad data or tokenizer, missing or
unwritable files) print `ternary: error: <message>` on stderr and exit 2; a failed demo check or a
training run stopped by a non-finite loss exits 1; an interrupted command exits 130.
"""
from __future__ import annotations

import argparse
import sys

from convert import blas
from convert.backends import NAMES, backend_class
from convert.commands import COMMANDS
from convert.common import CliError, user_errors

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ternary", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ternary (BitNet b1.58-style) language models: one spec, MLX and PyTorch backends.",
        epilog="examples:\n"
               "  ternary train --preset smoke\n"
               "  ternary eval runs/smoke-mlx-<time>\n"
               "  ternary generate runs/smoke-mlx-<time> --prompt \"the\"\n"
               "  ternary presets\n"
               "  ternary config --preset smoke --set train.lr=1e-3\n"
               "  ternary demo --preset smoke\n\nRun `ternary COMMAND --help` for a command's options.")
    p.add_argument("--no-fast-blas", action="store_true",
                   help="on Linux, do not re-run MLX commands with Debian's OpenBLAS preloaded")
    subs = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subs)
    return p


def _wants_fast_blas(args) -> bool:
    """Whether this command runs a backend that is re-executed with OpenBLAS (MLX on Linux)."""
    if args.command == "demo":
        names = NAMES if args.backend == "both" else [args.backend]
    elif args.command in ("train", "eval", "generate"):
        names = [args.backend]
    else:
        return False
    return any(backend_class(n).fast_blas for n in names)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ternary` and `python -m convert.cli`.

    Only a real command line (argv None) may re-execute itself with OpenBLAS preloaded; a caller
    passing argv keeps its process.
    """
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if from_command_line and _wants_fast_blas(args) and not args.no_fast_blas:
        blas.ensure_fast_blas(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ternary: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"ternary: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
