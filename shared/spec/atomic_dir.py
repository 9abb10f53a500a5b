"""Replacing a directory in one step, and clearing what killed writers leave behind (DESIGN 3.4).

A writer builds the new directory in a hidden sibling (`staging_dir`), then `swap_dir` puts it in
place. Where the system can exchange two names atomically (Linux `renameat2(RENAME_EXCHANGE)`,
macOS `renamex_np(RENAME_SWAP)`, both through ctypes) the live name holds the old directory until
the exchange and the new one after it: there is no moment without one. A filesystem that refuses
the exchange (NFS, SMB, FAT, ...) gets two renames, the old directory aside and the new one in;
a writer killed between them leaves the old one under `.NAME.old-*`, and `recover` (the next
write, and every checkpoint reader) renames it back.

Siblings are named `.NAME.tmp-PID-HOST-XXXXXXXX` and `.NAME.old-PID-HOST-XXXXXXXX`, so a leftover
is provably ours (that exact pattern, a real directory) and provably stale (written on this host
by a process that no longer exists, or by this process outside any write in progress).
`clean_leftovers` removes those; `staging_dir` runs it before every write. Siblings named by
earlier versions (`.NAME.tmp-XXXXXXXX`, no pid) count as stale once untouched for an hour.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

LEGACY_STALE_S = 3600  # a writer of the pid-less names is gone once its directory is this old
_ACTIVE: set[str] = set()  # this process's staging directories whose write is in progress


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _sibling(dest: Path, kind: str) -> Path:
    return dest.parent / f".{dest.name}.{kind}-{os.getpid()}-{_host()}-{uuid.uuid4().hex[:8]}"


def staging_dir(dest: str | os.PathLike) -> Path:
    """A new empty hidden sibling of `dest` to build the replacement in, for `swap_dir`; stale
    leftovers of earlier writes to `dest` are cleared first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
    tmp = _sibling(dest, "tmp")
    tmp.mkdir()
    _ACTIVE.add(str(tmp))
    return tmp


def swap_dir(tmp: Path, dest: Path) -> None:
    """Put the finished directory `tmp` at `dest` (its sibling); the directory that was at `dest`
    is removed. On an exception `dest` is as it was and `tmp` is the caller's to remove."""
    tmp, dest = Path(tmp), Path(dest)
    try:
        if not os.path.lexists(dest):
            _rename(tmp, dest)
        elif _exchange(tmp, dest):
            _remove_tree(tmp)  # after the exchange, the old directory
        else:
            _swap_by_renames(tmp, dest)
    finally:
        _ACTIVE.discard(str(tmp))


def discard(tmp: Path) -> None:
    """Remove a staging directory whose write failed."""
    _remove_tree(Path(tmp))
    _ACTIVE.discard(str(tmp))


def _swap_by_renames(tmp: Path, dest: Path) -> None:
    old = _sibling(dest, "old")
    _rename(dest, old)
    try:
        _rename(tmp, dest)  # a kill before this line: recover(dest) puts `old` back
    except BaseException:
        _rename(old, dest)
        raise
    _remove_tree(old)


def recover(dest: str | os.PathLike) -> Path | None:
    """If `dest` is missing because its writer died between the two renames of the fallback, put
    the old directory back; the directory restored from, or None."""
    dest = Path(dest)
    if os.path.lexists(dest):
        return None
    olds = [p for p, kind in _leftovers(dest, recovering=True) if kind == "old"]
    if not olds:
        return None
    newest = max(olds, key=lambda p: p.stat().st_mtime)
    _rename(newest, dest)
    return newest


def clean_leftovers(dest: str | os.PathLike) -> list[Path]:
    """Recover `dest` if need be, then remove the stale staging and old directories of writes to
    it; the paths removed."""
    dest = Path(dest)
    recover(dest)
    gone = []
    for p, _kind in _leftovers(dest):
        _remove_tree(p)
        gone.append(p)
    return gone


def _leftovers(dest: Path, recovering: bool = False) -> list[tuple[Path, str]]:
    """(path, "tmp" | "old") of every sibling of `dest` that is provably ours and stale."""
    name = re.escape(dest.name)
    ours = re.compile(rf"\.{name}\.(tmp|old)-(\d+)-([A-Za-z0-9]+)-[0-9a-f]{{8}}")
    legacy = re.compile(rf"\.{name}\.(tmp|old)-[0-9a-f]{{8}}")
    try:
        entries = list(dest.parent.iterdir())
    except OSError:  # no parent directory, or not one we may read: nothing of ours to find
        return []
    out = []
    for p in entries:
        if p.is_symlink() or not p.is_dir():
            continue
        if m := ours.fullmatch(p.name):
            if m.group(3) == _host() and not _writing(int(m.group(2)), p):
                out.append((p, m.group(1)))
        elif m := legacy.fullmatch(p.name):
            # a pid-less old copy with `dest` missing is the only copy: recovered whatever its age
            if (recovering and m.group(1) == "old") or _untouched_for(p, LEGACY_STALE_S):
                out.append((p, m.group(1)))
    return out


def _writing(pid: int, path: Path) -> bool:
    """Whether a write into `path` may still be going on: its process exists (this one only while
    the write is in progress)."""
    if pid == os.getpid():
        return str(path) in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _untouched_for(path: Path, seconds: float) -> bool:
    try:
        newest = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
    except FileNotFoundError:  # removed meanwhile by someone else
        return False
    return time.time() - newest > seconds


# ---- the filesystem steps (module functions, so tests can fail or kill each one) ---------------
def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _remove_tree(path: Path) -> None:
    """Remove a directory we wrote; a symlink found in its place is unlinked, never followed."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


# Linux renameat2 flags / macOS renamex_np flags; AT_FDCWD: paths relative to the working directory.
_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2
# errno values meaning "this system or filesystem cannot exchange": use the two renames instead
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def _exchange_function():
    """The C function that swaps two names, or None where there is none."""
    try:
        if sys.platform.startswith("linux"):
            fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            return lambda a, b: fn(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
        if sys.platform == "darwin":
            fn = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True).renamex_np  # macOS >= 10.12
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            return lambda a, b: fn(a, b, _RENAME_SWAP)
    except (OSError, AttributeError):
        pass
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` (both existing) in one atomic step; False where not supported."""
    fn = _exchange_function()
    if fn is None:
        return False
    if fn(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling (named by this process), so a kill leaves
    the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
