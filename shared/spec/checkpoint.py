"""The checkpoint format shared by both backends (DESIGN 3.4), in NumPy and JSON only.

A checkpoint is a directory written atomically (a hidden sibling, then one atomic exchange of the
two names: shared/spec/atomic_dir.py):
  config.json             the resolved RunConfig
  model.safetensors       latent weights under canonical names
  optimizer.safetensors   optional: optimizer state under '<param>.<slot>' names
  optimizer.json          optional: optimizer step counts and hyperparameters
  trainer_state.json      optional: step, tokens seen, data position, seeds, metrics
  manifest.json           sha256 and size of every file, and who wrote it
Nothing is unpickled. Loading verifies the manifest and says exactly what is wrong.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from shared.spec.atomic_dir import discard, recover, staging_dir, swap_dir  # noqa: F401 - swap_dir: for the other writers
from shared.spec.config import RunConfig
from shared.spec.params import parameter_shapes
from shared.spec.safetensors_stream import LazyTensor, save_streaming

FORMAT = "ternary-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, partial or does not match its config."""


def check_tensor_set(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]],
                     where: str) -> None:
    """Strict match of names and shapes; lists every problem at once (SEEDS S10)."""
    missing = [n for n in expected if n not in got]
    unexpected = [n for n in got if n not in expected]
    misshapen = [f"{n}: expected {tuple(expected[n])}, found {tuple(got[n])}"
                 for n in expected if n in got and tuple(got[n]) != tuple(expected[n])]
    if missing or unexpected or misshapen:
        lines = [f"{where} does not match the model's config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise CheckpointError("\n".join(lines))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def save_safetensors(tensors: dict[str, np.ndarray], filename: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, leaving the file with the mode open() gives (0666 less the umask), as the
    JSON files beside it (save_file itself leaves 0600, safetensors 0.8), and turning its I/O failures
    (a full disk) back into the OSError they are: safetensors raises its own SafetensorError with the
    OS error only in its message."""
    try:
        save_file(tensors, filename, metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(filename)) from None
    os.chmod(filename, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, np.ndarray | LazyTensor], file: Path) -> None:
    """One tensor in host memory at a time (LazyTensor: loaded for its own write only)."""
    save_streaming(tensors, str(file), metadata={"format": FORMAT})


def write_checkpoint(path: str | Path, config: RunConfig, weights: dict[str, np.ndarray], *,
                     writer: dict[str, Any], optimizer_state: dict[str, np.ndarray] | None = None,
                     optimizer_meta: dict[str, Any] | None = None,
                     trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically; an existing checkpoint at `path` is replaced. On
    any exception (a full disk: OSError ENOSPC) the checkpoint at `path` is as it was."""
    path = Path(path)
    check_tensor_set(parameter_shapes(config.model), {k: v.shape for k, v in weights.items()},
                     "weights to save")
    if path.exists() and not (path.is_dir() and ((path / "manifest.json").exists() or not any(path.iterdir()))):
        raise CheckpointError(f"{path} exists and is not a checkpoint; refusing to overwrite it")
    tmp = staging_dir(path)  # also clears what killed writes to `path` left behind
    try:
        _write_json(tmp / "config.json", config.to_dict())
        _save_tensors(weights, tmp / MODEL_FILE)
        if optimizer_state is not None:
            _save_tensors(optimizer_state, tmp / OPTIMIZER_FILE)
            _write_json(tmp / "optimizer.json", optimizer_meta or {})
        if trainer_state is not None:
            _write_json(tmp / "trainer_state.json", trainer_state)
        files = {}
        for f in sorted(tmp.iterdir()):
            _fsync(f)
            files[f.name] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
        _write_json(tmp / "manifest.json", {
            "format": FORMAT, "version": VERSION, "files": files,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "writer": {**writer, "numpy": np.__version__, "python": platform.python_version(),
                       "git_commit": _git_commit()},
        })
        _fsync(tmp / "manifest.json")
        swap_dir(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: leave nothing half-written behind
        discard(tmp)
        raise
    return path


def verify_manifest(path: str | Path) -> dict[str, Any]:
    """Check that every file in the manifest is present with its size and sha256; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory" +
                              (" (it does not exist)" if not path.exists() else ""))
    mf = path / "manifest.json"
    if not mf.exists():
        raise CheckpointError(f"{path}: no manifest.json; this is not a checkpoint, or a partial one "
                              "whose write did not finish")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mf}: damaged manifest ({e})") from None
    files = _manifest_files(manifest, mf)
    for name, meta in files.items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{path}: {name} is listed in the manifest but missing")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, the manifest says "
                                  f"{meta['bytes']} (truncated or replaced)")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} fails its sha256 checksum (the file is damaged "
                                  "or was changed after saving)")
    for required in ("config.json", MODEL_FILE):
        if required not in files:
            raise CheckpointError(f"{path}: manifest does not list {required}")
    return manifest


def _manifest_files(manifest: Any, mf: Path) -> dict[str, dict[str, Any]]:
    """The manifest's file table, {name: {"sha256": str, "bytes": int}}, after checking the shape of
    everything verify_manifest reads (valid JSON of another shape is as damaged as invalid JSON)."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mf}: damaged manifest (a JSON {type(manifest).__name__}, expected an object)")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mf}: format {manifest.get('format')!r} is not {FORMAT!r}")
    version = manifest.get("version", 0)
    if not _is_count(version):
        raise CheckpointError(f"{mf}: damaged manifest (version {version!r} is not an integer)")
    if version > VERSION:
        raise CheckpointError(f"{mf}: format version {version} is newer than this tool reads ({VERSION}); "
                              "upgrade ternary")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{mf}: damaged manifest ('files' is {type(files).__name__}, expected an object "
                              "of file name -> {sha256, bytes})")
    for name, meta in files.items():
        if Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{mf}: damaged manifest (file name {name!r} is not a plain name)")
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and _is_count(meta.get("bytes"))):
            raise CheckpointError(f"{mf}: damaged manifest (the entry of {name} needs a 'sha256' string and a "
                                  f"'bytes' count, got {json.dumps(meta)[:80]})")
    return files


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_finite(tensors: dict[str, np.ndarray], where: str) -> None:
    """Refuse NaN or inf in stored tensors, naming them: no command can use such weights (a run that
    diverged, or a file changed after saving), and each would fail later and less clearly."""
    bad = []
    for name, t in tensors.items():
        if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
            bad.append(f"{name} ({int(np.isnan(t).sum())} NaN, {int(np.isinf(t).sum())} inf)")
    if bad:
        raise CheckpointError(f"{where}: non-finite values in {len(bad)} tensor(s): {', '.join(bad[:3])}"
                              + (", ..." if len(bad) > 3 else "") + "; these weights cannot be used")


def _read_json_object(f: Path) -> dict[str, Any]:
    try:
        obj = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing (the checkpoint is incomplete)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: damaged ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{f}: damaged (a JSON {type(obj).__name__}, expected an object)")
    return obj


def read_config(path: str | Path) -> RunConfig:
    path = Path(path)
    recover(path)  # a writer killed mid-swap on a filesystem without an atomic exchange
    return RunConfig.from_json((path / "config.json").read_text(), where=str(path / "config.json"))


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(file), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from None


def read_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, np.ndarray]]:
    """Verify and read a checkpoint: (config, latent weights as float32 arrays), strictly checked."""
    path = Path(path)
    recover(path)  # a writer killed mid-swap on a filesystem without an atomic exchange
    verify_manifest(path)
    config = read_config(path)
    weights = read_safetensors(path / MODEL_FILE)
    check_tensor_set(parameter_shapes(config.model), {k: v.shape for k, v in weights.items()},
                     f"{path / MODEL_FILE}")
    check_finite(weights, str(path / MODEL_FILE))
    return config, weights


def read_optimizer(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    path = Path(path)
    if not (path / OPTIMIZER_FILE).exists():
        return None
    state = read_safetensors(path / OPTIMIZER_FILE)
    check_finite(state, str(path / OPTIMIZER_FILE))  # moments and the EMA weights eval uses
    return state, _read_json_object(path / "optimizer.json")


def read_trainer_state(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / "trainer_state.json"
    if not f.exists():
        return None
    state = _read_json_object(f)
    for key, (ok, what) in _TRAINER_STATE.items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"{f}: {key} must be {what}, got {json.dumps(state[key])[:80]}")
    return state


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


# The trainer_state.json keys `--resume` reads (shared/train/runner.py, loop.py, loader.py) and what each must be.
_TRAINER_STATE = {
    "step": (_is_count, "a count (an integer >= 0)"),
    "bad_evals": (_is_count, "a count (an integer >= 0)"),
    "train_time_s": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "best_val_loss": (lambda v: v is None or _is_number(v), "a number or null"),
    "loader": (lambda v: v is None or (isinstance(v, dict) and all(_is_count(v.get(k)) for k in ("epoch", "position"))
                                       and all(_is_count(v[k]) for k in ("seed", "seq_len", "num_windows") if k in v)),
               "an object with counts epoch and position (and seed, seq_len, num_windows)"),
}
