"""Room for a training checkpoint (DESIGN 3.4): its size from the config, the free space where it
goes, and a save that cannot happen as one line.

A save needs the whole new copy on disk while the old one still exists (it is replaced only once
the new one is complete), so the room needed is one checkpoint's size, whatever is there already.
`TrainerCommon.check_room` runs this before training and before each save; a failed write (a full
disk: ENOSPC) ends up here too, as a `CheckpointSaveError` that leaves the previous checkpoint.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from shared.spec.config import RunConfig
from shared.spec.params import parameter_specs
from shared.train.optim_rules import slots_for

# A tensor's entry in a safetensors header: its name plus ~70 bytes of dtype, shape and offsets.
HEADER_BYTES_PER_TENSOR = 128
# config.json, optimizer.json, trainer_state.json and manifest.json: a few KB each.
JSON_BYTES = 256 * 1024


class CheckpointSaveError(OSError):
    """A checkpoint that could not be saved (no room, or the write failed); the previous one is kept."""


def checkpoint_bytes(cfg: RunConfig) -> int:
    """An upper bound on the bytes of a training checkpoint of `cfg`: float32 weights, one float32
    tensor per optimizer slot (shared.train.optim_rules.slots_for), their headers, the JSON files."""
    total = JSON_BYTES
    for name, spec in parameter_specs(cfg.model).items():
        tensors = 1 + len(slots_for(spec, cfg.train))  # the weight, then '<name>.<slot>' tensors
        total += tensors * (4 * math.prod(spec.shape) + HEADER_BYTES_PER_TENSOR + len(name) + 16)
    return total


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `path`."""
    p = Path(path).absolute()
    while not p.exists():  # the run directory may not exist yet
        p = p.parent
    return shutil.disk_usage(p).free


def _kept(path: Path) -> str:
    return ("the previous checkpoint there is kept" if (path / "manifest.json").exists()
            else "no checkpoint is saved there yet")


def room_problem(path: str | Path, needed: int, *, training_started: bool) -> str | None:
    """None when the disk of `path` has `needed` bytes free; else the line that says so."""
    path = Path(path)
    free = free_bytes(path)
    if free >= needed:
        return None
    then = _kept(path) if training_started else "nothing was trained (free some space, or use another --out)"
    return f"no room for the checkpoint {path}: it needs {needed:,} bytes and its disk has {free:,} free; {then}"


def save_failure(path: str | Path, needed: int, error: BaseException) -> str:
    """The line for a save that raised `error` (OSError: its reason; a full disk: ENOSPC)."""
    path = Path(path)
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (f"cannot save the checkpoint {path} ({reason}): it needs {needed:,} bytes and its disk has "
            f"{free_bytes(path):,} free; {_kept(path)}")
