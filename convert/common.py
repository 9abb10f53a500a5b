"""Helpers shared by the `ternary` subcommands (convert/commands/): errors, argument groups, configs.

Nothing here imports mlx or torch; the subcommands import them lazily, so `ternary --help`,
`presets` and `config` start fast.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
from pathlib import Path

from convert.runtime import AUTO, CHOICES


class CliError(Exception):
    """A usage problem found after parsing (exit 2, like argparse's own errors)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong" (exit 2, one line, no traceback)."""
    from shared.spec.checkpoint import CheckpointError
    from shared.spec.config import ConfigError
    from shared.data.dataset import DataError
    from shared.data.checks import TokenIdError
    from shared.data.tokenizers import TokenizerError
    # OSError: missing files, permissions
    return (ConfigError, CheckpointError, TokenIdError, TokenizerError, DataError, OSError, CliError)


# Our temporaries: `.NAME.tmp-XXXXXXXX`, `.NAME.tmp-PID-HOST-XXXXXXXX` (shared/spec/atomic_dir.py) or
# `.NAME.tmp`, a sibling written in full, then renamed to NAME.
_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp(-\d+-[^/]+)?(-[0-9a-f]+)?$")
# Errors of a write that the OS reports without a file name.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


def user_path(path: str | os.PathLike) -> str:
    """`path` as the user knows it: a temporary of ours is named after what it becomes."""
    return str(Path(*[m["name"] if (m := _STAGING.match(part)) else part for part in Path(path).parts]))


def error_line(e: BaseException) -> str:
    """The one line a user error prints: an OSError as `PATH: reason` (PATH the user's, never a
    temporary of ours), anything else as its message."""
    if isinstance(e, OSError) and e.filename is not None:
        where = user_path(os.fsdecode(e.filename))
        if e.filename2 is not None:
            where += f" -> {user_path(os.fsdecode(e.filename2))}"
        return f"{where}: {e.strerror or e}"
    return str(e)


@contextlib.contextmanager
def writing(dest: str | os.PathLike | None):
    """A write error the OS gives without a file name (a full disk, a file size limit) names `dest`,
    the output the user asked for (None: nothing to name), instead of nothing."""
    try:
        yield
    except OSError as e:
        if dest is not None and e.filename is None and e.errno in _WRITE_ERRNOS:
            raise OSError(e.errno, f"cannot write: {e.strerror}", str(dest)) from None
        raise


def human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def counts(cfg, sizes: dict[str, int]) -> tuple[int, int]:
    """(total, ternary) parameter counts from per-name sizes."""
    from shared.spec.params import ternary_parameters
    return sum(sizes.values()), sum(sizes[n] for n in ternary_parameters(cfg))


def config_sizes(cfg) -> dict[str, int]:
    from shared.spec.params import parameter_shapes
    return {n: math.prod(s) for n, s in parameter_shapes(cfg.model).items()}


def resolve(args):
    """(RunConfig, source, weights) from --preset / --config / --ckpt, then --set and --seed.

    `weights` are the checkpoint's (verified) latent weights with --ckpt, else None.
    """
    from shared.spec.config import RunConfig
    from shared.spec.presets import get_preset
    weights = None
    if getattr(args, "ckpt", None):
        from shared.spec.checkpoint import read_checkpoint
        (cfg, weights), source = read_checkpoint(args.ckpt), f"checkpoint {args.ckpt}"
    elif args.config:
        cfg, source = RunConfig.load_toml(args.config), f"config {args.config}"
    else:
        cfg, source = get_preset(args.preset or "smoke"), f"preset {args.preset or 'smoke'}"
    overrides = list(args.set or [])
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    return (cfg.with_overrides(overrides) if overrides else cfg), source, weights


def describe(cfg) -> str:
    m, t = cfg.model, cfg.ternary
    tern = (f"ternary {', '.join(t.targets)} (group {t.group_size or 'per tensor'}"
            + (f", {t.activation_bits}-bit activations" if t.activation_bits else "") + ")"
            if t.enabled else "float (ternary disabled)")
    return (f"{m.num_hidden_layers} layers x {m.hidden_size}, {m.num_attention_heads}/"
            f"{m.num_key_value_heads} heads, MLP {m.intermediate_size} {m.hidden_act}, "
            f"vocab {m.vocab_size}, {tern}")


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory holding one in `checkpoint/`."""
    from shared.spec.atomic_dir import recover
    path = Path(path)
    for candidate in (path, path / "checkpoint"):  # a save killed mid-swap, on a filesystem without an atomic exchange
        recover(candidate)
    return path / "checkpoint" if (path / "checkpoint" / "manifest.json").exists() else path


# ---- argument parsing ---------------------------------------------------------------------------
def source_args(p: argparse.ArgumentParser, ckpt: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", metavar="NAME", help="a preset from `ternary presets` (default: smoke)")
    g.add_argument("--config", metavar="FILE.toml", help="a run config file")
    if ckpt:
        g.add_argument("--ckpt", metavar="DIR", help="a checkpoint directory (its config and weights)")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="extend", nargs="+", default=[],
                   help="override config values, e.g. train.lr=3e-4 (several may follow one --set)")


def sub(subs, name: str, help_: str, examples: str, func=None) -> argparse.ArgumentParser:
    """A subcommand parser with a description, an examples epilog and the hidden --no-fast-blas."""
    p = subs.add_parser(name, help=help_, description=help_, epilog="examples:\n" + examples,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        allow_abbrev=False)  # --max-token must not quietly mean --max-tokens
    p.add_argument("--no-fast-blas", action="store_true", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    if func is not None:
        p.set_defaults(func=func)
    return p


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def finite_float(text: str) -> float:
    """An argparse type: a float that is not NaN or infinite (float() accepts 'nan' and 'inf')."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def non_negative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def backend_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--backend", choices=CHOICES, default=AUTO,
                   help=f"framework that {what} (default: auto, MLX on Apple silicon and torch elsewhere; "
                        "torch uses CUDA when available)")


def threads_arg(p: argparse.ArgumentParser, uses: str = "torch and OpenBLAS") -> None:
    """--threads N, resolved by convert/runtime.py (prepare) into args.runtime.threads."""
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help=f"CPU threads for {uses}, at most the CPUs this process may use (default: "
                        "OMP_NUM_THREADS if set, else all of those CPUs)")
