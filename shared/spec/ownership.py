"""What a command may replace: never delete what the project did not write, whatever flag was given.

A command that replaces an existing output (`--force`, `--overwrite`) first recognises it as its
own kind of output, and refuses anything else, naming what it found. The checks here only read;
each returns None when the path may be replaced, or the reason in words, which the caller raises
as its own error type (one line, exit 2 on the command line). They run before anything is written.

- `source_conflict`: an output must neither contain nor lie inside what the command reads (the
  source checkpoint, the input text, the weights a run starts from).
- `foreign_entries`: the names in a directory that are not on a command's list of its own files
  (a symbolic link is always foreign: replacing it would act on whatever it points to).
- `checkpoint_refusal`: a checkpoint directory (shared/spec/checkpoint.py) holds manifest.json and
  exactly the files that manifest lists.
- `new_checkpoint_refusal`: where an importer (import-hf, import-pg) may write a new checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from shared.spec.checkpoint import FORMAT as CHECKPOINT_FORMAT


def inside(path: Path, other: Path) -> bool:
    """Whether `path` is `other` or lies inside it (both resolved, so links and `..` count)."""
    p, o = Path(path).resolve(), Path(other).resolve()
    return p == o or o in p.parents


def source_conflict(out: Path, sources: dict[str, Path | None]) -> str | None:
    """Why `out` may not be written over, given what the command reads (label -> path), or None."""
    for label, src in sources.items():
        if src is None:
            continue
        if Path(src).resolve() == Path(out).resolve():
            return f"{out} is {label}"
        if inside(src, out):
            return f"{out} holds {label} {src}"
        if inside(out, src):
            return f"{out} is inside {label} {src}"
    return None


def foreign_entries(d: Path, own: Callable[[Path], bool]) -> list[str]:
    """Entries of the directory `d` that `own` does not recognise (directories shown with a slash)."""
    bad = [e for e in d.iterdir() if e.is_symlink() or not own(e)]
    return sorted(e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in bad)


def listing(names: Iterable[str], limit: int = 5) -> str:
    """'a, b, c' (and how many more), for an error line."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def occupied(p: Path) -> bool:
    """Whether writing `p` would replace something: it exists (a dangling link counts) and is not an
    empty directory."""
    if p.is_symlink() or p.is_file():
        return True
    return p.is_dir() and any(p.iterdir())


def checkpoint_files(d: Path) -> set[str] | None:
    """The files a checkpoint directory's manifest lists, manifest.json included; None when `d` has no
    readable manifest of the checkpoint format."""
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        return None
    return set(manifest.get("files") or {}) | {"manifest.json"}


def checkpoint_refusal(d: Path, extra: Callable[[Path], bool] = lambda _e: False) -> str | None:
    """None when `d` is a checkpoint directory holding only its manifest's files (and entries that
    `extra` recognises, e.g. import-hf's tokenizer/); else why not."""
    if d.is_symlink() or not d.is_dir():
        return f"{d} is not a checkpoint directory"
    listed = checkpoint_files(d)
    if listed is None:
        return f"{d} is not a checkpoint directory (no manifest.json of a ternary checkpoint)"
    other = foreign_entries(d, lambda e: (e.name in listed and e.is_file()) or extra(e))
    if other:
        return f"{d} holds {listing(other)}, which its checkpoint manifest does not list"
    return None


def new_checkpoint_refusal(out: Path, force: bool, keeps: str = "",
                           extra: Callable[[Path], bool] = lambda _e: False) -> str | None:
    """None when an importer may write a checkpoint at `out`: nothing there, an empty directory, or
    (with `force`) a checkpoint directory holding only its manifest's files and entries `extra`
    recognises (`keeps` names those in the message); else why not."""
    if (out / "manifest.json").exists() and not force:
        return f"{out} is an existing checkpoint; pass --force to replace it"
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a directory"
    if force and occupied(out):
        why = checkpoint_refusal(out, extra=extra)
        if why:
            return (f"--force: {why}; it replaces only a checkpoint directory (the files its manifest lists)"
                    f"{keeps} (nothing was changed)")
    return None
