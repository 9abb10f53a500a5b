"""What `ternary convert --force` may replace: only an export of the same kind that we wrote.

- hf, mlx-lm, hf-bitnet (directories): every export holds MARKER, ternary_export.json, naming the
  format and listing every file the export wrote; --force replaces a directory only when it holds
  that marker for the same --to and nothing but the files it lists (an export written before the
  marker existed, or a model downloaded from the hub, is refused: delete it yourself).
- canonical: a checkpoint directory holding only the files its manifest lists.
- packed: a file that begins with the packed magic (TERNPK1); gguf: a file that begins with GGUF.
In every case --out may neither hold the source checkpoint nor lie inside it, with or without --force.
The checks read only and run before the export is computed, and again just before it is renamed
into place (shared.spec.checkpoint.swap_dir / os.replace).
"""
from __future__ import annotations

import json
from pathlib import Path

from shared.spec.checkpoint import CheckpointError
from shared.spec.ownership import checkpoint_refusal, foreign_entries, listing, occupied, source_conflict

MARKER = "ternary_export.json"
MARKER_FORMAT = "ternary-export"
FORCE_HELP = ("replace an existing output, but only one of the same format that ternary wrote: a directory "
              f"export holding our {MARKER} and only the files it lists, a canonical checkpoint directory "
              "(its manifest's files only), a packed file (TERNPK1) or a GGUF file; never the source")


def _existing(out: Path, src: str | Path, force: bool) -> bool:
    """Whether `out` exists (a dangling link counts); refuses a clash with the source, and an existing
    `out` without --force."""
    why = source_conflict(out, {"the source checkpoint": Path(src)})
    if why:
        raise CheckpointError(f"--out {why}; write the export somewhere else")
    if not (out.exists() or out.is_symlink()):
        return False
    if not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
    return True


def _refuse(why: str, what: str) -> None:
    raise CheckpointError(f"--force: {why}; it replaces only {what} (nothing was changed)")


def marker_refusal(out: Path, fmt: str) -> str | None:
    """None when the directory `out` is our --to `fmt` export and holds nothing else; else why not."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return f"{out} is not an export of ternary convert (no readable {MARKER})"
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return f"{out / MARKER} is not a ternary export marker"
    if marker.get("to") != fmt:
        return f"{out} is a --to {marker.get('to')} export, not --to {fmt}"
    files = set(marker.get("files") or []) | {MARKER}
    other = foreign_entries(out, lambda e: e.name in files and e.is_file())
    if other:
        return f"{out} also holds {listing(other)}, which the export did not write"
    return None


def check_dir_out(out: Path, src: str | Path, fmt: str, force: bool) -> None:
    """--to hf | mlx-lm | hf-bitnet: may `out` be written (CheckpointError if not)."""
    if not _existing(out, src, force) or not occupied(out):  # an empty directory holds nothing to lose
        return
    if out.is_symlink() or not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory")
    why = marker_refusal(out, fmt)
    if why:
        _refuse(why, f"a --to {fmt} export written by ternary convert")


def write_marker(tmp: Path, fmt: str, src: str | Path) -> None:
    """The marker of the finished export in `tmp`, listing every file in it."""
    files = sorted(f.name for f in tmp.iterdir())
    (tmp / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "version": 1, "to": fmt,
                                          "source": str(src), "files": files}, indent=2) + "\n")


def check_checkpoint_out(out: Path, src: str | Path, force: bool) -> None:
    """--to canonical: may `out` be written (CheckpointError if not)."""
    if not _existing(out, src, force) or not occupied(out):
        return
    why = checkpoint_refusal(out)
    if why:
        _refuse(why, "a checkpoint directory holding only the files its manifest lists")


def check_file_out(out: Path, src: str | Path, fmt: str, force: bool, magic: bytes, what: str) -> None:
    """--to packed | gguf: may the file `out` be written (CheckpointError if not); --force replaces
    only a file that begins with `magic` (the format's own, e.g. b"GGUF"), a `what`."""
    if not _existing(out, src, force):
        return
    if out.is_symlink() or not out.is_file():
        raise CheckpointError(f"{out} exists and is not a file; --to {fmt} writes one file")
    with open(out, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        _refuse(f"{out} is not a {what} (it does not begin with {magic.decode().strip()})", f"a {what}")
