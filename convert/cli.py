"""The `ternary` command line: one console script whose subcommands dispatch to the packages.

Each subcommand is a module of convert/commands/ (one per verb; its index docstring lists them), and
build_parser registers them in the order of convert.commands.COMMANDS. mlx and torch are
imported inside the subcommands that need them, so `ternary --help`, `presets` and `config` start
fast. User errors (bad config, bad checkpoint, bad token ids, bad data or tokenizer, missing or
unwritable files) print `ternary: error: <message>` on stderr and exit 2; a failed demo check or a
training run stopped by a non-finite loss exits 1; an interrupted command exits 130.
"""
from __future__ import annotations

# Only the standard library here: everything else is imported inside `guarded`, so that a Ctrl-C
# while it imports (start-up takes a second or more) exits 130 with one line like any other. (The
# interpreter's own start, the few tens of milliseconds before this file runs, is out of our hands.)
import argparse
import sys

__all__ = ["CliError", "build_parser", "guarded", "main", "train_module"]


def __getattr__(name: str):
    if name == "CliError":  # convert.cli.CliError, without importing convert.common at start-up
        from convert.common import CliError
        return CliError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    from convert.commands import COMMANDS
    p = argparse.ArgumentParser(
        prog="ternary", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Ternary (BitNet b1.58-style) language models: one spec, MLX and PyTorch backends.",
        epilog="examples:\n"
               "  ternary train --preset smoke\n"
               "  ternary eval runs/smoke-<backend>-<time>\n"
               "  ternary generate runs/smoke-<backend>-<time> --prompt \"the\"\n"
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
    from convert.backends import NAMES, backend_class
    if args.command not in ("train", "eval", "generate", "demo"):
        return False
    names = NAMES if args.backend == "both" else [args.backend]  # resolved: never "auto" here
    return any(backend_class(n).fast_blas for n in names)


def guarded(command) -> int:
    """Run `command()` (its imports included) as the command line does: a user error is one line
    `ternary: error: ...` and exit 2 (convert.common.user_errors), Ctrl-C is `ternary: interrupted`
    and exit 130."""
    try:
        from convert.common import error_line, user_errors
        try:
            return command()
        except Exception as e:
            if not isinstance(e, user_errors()):
                raise
            print(f"ternary: error: {error_line(e)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("ternary: interrupted", file=sys.stderr)
        _forget_interrupt()
        return 130


def _forget_interrupt() -> None:
    """CPython (3.11) remembers a KeyboardInterrupt raised inside exec()'d source, which dataclasses
    and namedtuple run while torch or mlx import, even once it is caught, and then ends the process
    by SIGINT instead of with our exit status. Running any source resets that flag."""
    exec("None")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ternary` and `python -m convert.cli`.

    Only a real command line (argv None) may re-execute itself with OpenBLAS preloaded; a caller
    passing argv keeps its process.
    """
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)

    def command() -> int:
        args = build_parser().parse_args(argv)
        from convert import runtime
        runtime.prepare(args)  # --backend auto and --threads, before mlx or torch is imported
        if from_command_line and _wants_fast_blas(args) and not args.no_fast_blas:
            from convert import blas
            blas.ensure_fast_blas(argv)
        from convert.common import writing
        with writing(getattr(args, "out", None)):  # the --out of the commands that have one
            return args.func(args)
    return guarded(command)


def train_module(backend: str) -> int:
    """`python -m ternary_{mlx,cuda}.train`: the `train` command line of convert/train_args.py on one
    backend, with `ternary`'s handling of errors and Ctrl-C (its modules are imported inside)."""
    package = {"mlx": "ternary_mlx", "torch": "ternary_cuda"}[backend]

    def command() -> int:
        from convert.train_args import main as train_main
        from shared.train.loop import NonFiniteLoss
        try:
            return train_main(sys.argv[1:], backend, prog=f"python -m {package}.train")
        except NonFiniteLoss as e:  # as `ternary train`: exit 1, the last good checkpoint named
            print(f"ternary: error: {e}", file=sys.stderr)
            return 1
    return guarded(command)


if __name__ == "__main__":
    sys.exit(main())
