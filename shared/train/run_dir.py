"""The run directory a `train` command writes into: whether it may, and one training at a time.

`claim(out_dir, ...)` is called by rank 0 only (shared/train/runner.py shares its verdict with the
other ranks, SEEDS S12) before anything is written, and returns the held `RunLock`:
- an existing directory with anything in it is refused unless `--resume` continues that very run
  or `--overwrite` asks to start it afresh;
- `--overwrite` replaces only what a run writes (RUN_FILES, checkpoint/ holding a checkpoint, and
  the temporary names those writes leave when interrupted), and is refused when the directory holds
  anything else or the checkpoint, teacher or config the run reads; `RunLock.clear()` deletes those
  entries, called by `train` just before its first write, after every check of the config and data;
- a lock: `.lock` in the directory, held with fcntl.flock for the whole run and holding the pid,
  host and start time; a second training into the same directory fails at once, naming the holder.
  The kernel drops the flock of a process that died, so a `.lock` left by a killed run is stale and
  is taken over. Where the filesystem has no flock (some network mounts), the pid in the file decides
  (a live process on this host holds it) and the run says so.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from shared.spec.config import ConfigError
from shared.spec.ownership import checkpoint_refusal, foreign_entries, listing, source_conflict

LOCK = ".lock"
RUN_FILES = ("config.toml", "metrics.jsonl", "loss.png", "summary.json")
CHECKPOINT = "checkpoint"
# what an interrupted write of the run leaves: config.toml's and _truncate_metrics' temporary files,
# write_checkpoint's staging and moved-aside folders
LEFTOVER = re.compile(r"\.config\.toml\.tmp|metrics\.jsonl\.tmp|\.checkpoint\.(tmp|old)-[0-9a-f]+")
OVERWRITE_HELP = ("start afresh in an existing run directory: deletes only what a run writes there "
                  f"({', '.join(RUN_FILES)}, {CHECKPOINT}/) and refuses if it holds anything else")


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (exit 2 on the command line)."""


def _own(entry: Path) -> bool:
    if entry.name in RUN_FILES:
        return entry.is_file()
    if entry.name == CHECKPOINT:
        return entry.is_dir() and checkpoint_refusal(entry) is None
    return entry.name == LOCK or LEFTOVER.fullmatch(entry.name) is not None


def _contents(out_dir: Path) -> list[Path]:
    return sorted(e for e in out_dir.iterdir() if e.name != LOCK)


def check(out_dir: Path, *, resumes_here: bool, overwrite: bool, sources: dict[str, Path | None],
          holding_lock: bool = False) -> None:
    """Refuse `out_dir` (RunDirError) unless it is new, empty, the run --resume continues, or a run
    that --overwrite may replace; reads only."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise RunDirError(f"--out {out_dir}: exists and is not a directory")
    if not out_dir.exists():
        return
    if not holding_lock:
        _refuse_if_locked(out_dir)  # first: "in use" says more than any other reason
    if not _contents(out_dir) or (resumes_here and not overwrite):
        return
    foreign = [n + (" (not as a run writes it)" if n == CHECKPOINT + "/" else "")
               for n in foreign_entries(out_dir, _own)]
    if foreign:
        raise RunDirError(f"--out {out_dir}: holds {listing(foreign)}, which a training run does not write; "
                          "choose another --out (nothing was changed)")
    if not overwrite:
        raise RunDirError(f"--out {out_dir}: an existing run (it holds {listing(e.name for e in _contents(out_dir))}); "
                          f"continue it with --resume {out_dir}, start it afresh with --overwrite, or "
                          "choose another --out")
    why = source_conflict(out_dir, sources)
    if why:
        raise RunDirError(f"--overwrite: {why}, which it would delete; choose another --out (nothing was changed)")


class RunLock:
    """The held `.lock` of a run directory; `release()` removes it (and a directory it created, if
    still empty)."""

    def __init__(self, out_dir: Path, fd: int, created: bool, note: str | None = None):
        self.out_dir, self.fd, self.created, self.note = out_dir, fd, created, note
        self.overwrite = False

    def clear(self) -> None:
        """--overwrite: delete the previous run's entries (checked by `check`), never the lock."""
        if not self.overwrite:
            return
        for e in _contents(self.out_dir):
            if _own(e) and not e.is_symlink():
                shutil.rmtree(e) if e.is_dir() else e.unlink()

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            (self.out_dir / LOCK).unlink(missing_ok=True)  # before closing: still ours while we unlink
        finally:
            os.close(self.fd)
            self.fd = -1
        if self.created:
            try:
                self.out_dir.rmdir()  # only if empty: a run that failed before writing leaves nothing
            except OSError:
                pass


def _holder(fd: int) -> dict:
    try:
        rec = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return rec if isinstance(rec, dict) else {}
    except ValueError:
        return {}


def _describe(rec: dict) -> str:
    if not rec:
        return "holder unknown"
    return f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}, since {rec.get('started', '?')}"


def _pid_alive(rec: dict) -> bool:
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return bool(rec)  # another host's lock cannot be checked: held
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(out_dir: Path, rec: dict) -> RunDirError:
    return RunDirError(f"--out {out_dir}: in use by another training ({_describe(rec)}; {out_dir / LOCK}); "
                       "wait for it to finish or choose another --out")


def _refuse_if_locked(out_dir: Path) -> None:
    """A RunDirError if a live training holds `out_dir`'s lock (an existing .lock is only opened)."""
    try:
        fd = os.open(out_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out_dir, _holder(fd)) from None
    except OSError:
        pass  # no flock here: acquire() decides by the pid
    finally:
        os.close(fd)


def _flock(fd: int, out_dir: Path) -> str | None:
    """Take the flock of `fd` (a RunDirError if another process holds it); a note when a stale lock was
    taken over, or when the filesystem has no flock and the pid in the file decided."""
    for attempt in range(3):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rec = _holder(fd)  # a record left under a free flock: its process is gone
            return f"note: {out_dir / LOCK}: took over the stale lock of {_describe(rec)}" if rec else None
        except BlockingIOError:
            if attempt == 2:
                raise _busy(out_dir, _holder(fd)) from None
            time.sleep(0.05)  # another start's _refuse_if_locked may hold its shared lock for a moment
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            break
    rec = _holder(fd)
    if rec.get("pid") != os.getpid() and _pid_alive(rec):
        raise _busy(out_dir, rec)
    return f"note: {out_dir}: no file locks on this filesystem; {LOCK} is checked by its pid only"


def acquire(out_dir: Path) -> RunLock:
    """Create `out_dir` if needed and hold its lock (RunDirError naming the holder if another has it)."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            note = _flock(fd, out_dir)
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it between our open and flock: open the new one
            break
        os.close(fd)
    else:
        raise RunDirError(f"--out {out_dir}: could not take {path} (other trainings keep starting there)")
    rec = {"pid": os.getpid(), "host": socket.gethostname(),
           "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
    return RunLock(out_dir, fd, created, note)


def claim(out_dir: Path, *, resumes_here: bool, overwrite: bool, sources: dict[str, Path | None]) -> RunLock:
    """`check` the directory, take its lock, and check again under the lock (another run may have
    written in between); the held lock, whose `clear()` --overwrite's deletion is."""
    check(out_dir, resumes_here=resumes_here, overwrite=overwrite, sources=sources)
    lock = acquire(out_dir)
    try:
        check(out_dir, resumes_here=resumes_here, overwrite=overwrite, sources=sources, holding_lock=True)
    except BaseException:
        lock.release()
        raise
    lock.overwrite = overwrite
    return lock
