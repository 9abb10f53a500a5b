"""Which backend a command runs and on how many CPU threads, decided once per command (convert/cli.py)
before mlx or torch is imported, and the first line of every computing command, which says both and why.

`--backend auto` (the default) is MLX on Apple silicon and torch anywhere else: MLX's Linux build
ships a slow reference BLAS (the smoke run: ~20 minutes against ~2 with torch on the same CPU), and
MLX has no CUDA. `--resume` with auto continues on the backend that wrote the checkpoint.

`--threads N` (default: OMP_NUM_THREADS if set, else the CPUs this process may use) is applied to
torch (`set_num_threads`, and one inter-op thread: nothing here uses inter-op parallelism) and to an
OpenBLAS in the process (`openblas_set_num_threads`). MLX has no thread setting of its own.
OMP_WAIT_POLICY defaults to PASSIVE: with OpenMP's default (spinning) waits, 40 smoke steps and an
evaluation on two torch threads took 1000 s on a busy 2-core machine (load 9.5), 78 s passive (9.3).
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from convert.backends import NAMES

AUTO = "auto"
CHOICES = (AUTO, *NAMES)  # the --backend choices


@dataclass
class Runtime:
    """What `prepare` decided: the backend and threads, each with why."""
    backend: str
    backend_why: str
    threads: int
    threads_why: str


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container or `taskset` limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def auto_backend(system: str | None = None, machine: str | None = None) -> tuple[str, str]:
    """(backend, why) for `--backend auto` on this platform (or the one given)."""
    system = system or platform.system()
    machine = machine or platform.machine()
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return "mlx", f"auto: macOS {machine}, MLX runs on Metal"
    if system == "Linux":
        from convert.blas import openblas_library
        lib = openblas_library()
        installed = lib is not None and lib.exists()  # MLX on it: near torch's speed, CPU only
        why = "MLX is for Apple silicon (--backend mlx runs it here on OpenBLAS)" if installed else \
            "MLX has no fast BLAS here"
    elif system == "Darwin":
        why = "MLX needs Apple silicon"
    else:
        why = "MLX runs on macOS and Linux only"
    return "torch", f"auto: {'macOS' if system == 'Darwin' else system} {machine}, {why}"


def recorded_backend(run: Path) -> str | None:
    """The backend that wrote the checkpoint of a run directory or checkpoint (its manifest's
    writer), or None when that cannot be read (the command's own checks then say why)."""
    run = Path(run)
    for ckpt in (run / "checkpoint", run):
        try:
            name = json.loads((ckpt / "manifest.json").read_text())["writer"]["backend"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return name if name in NAMES else None
    return None


def resolve_backend(requested: str, resume: Path | None = None) -> tuple[str, str]:
    """(backend, why) for `--backend requested`: auto resumes on the run's own backend."""
    if requested != AUTO:
        return requested, f"--backend {requested}"
    recorded = recorded_backend(resume) if resume is not None else None
    if recorded is not None:
        return recorded, f"auto: --resume continues a run written by {recorded}"
    return auto_backend()


def choose_threads(requested: int | None, environ=None, cpus: int | None = None) -> tuple[int, str]:
    """(threads, why): --threads, else OMP_NUM_THREADS, else the CPUs available. More threads than
    CPUs is refused: they only wait for each other (an evaluation took 20-40x longer that way)."""
    from convert.common import CliError
    environ = os.environ if environ is None else environ
    cpus = cpus or available_cpus()
    if requested is not None:
        if requested > cpus:
            raise CliError(f"--threads {requested}: this process may use {cpus} CPU(s) (its affinity); "
                           f"give at most {cpus}, since more threads than CPUs only wait for each other")
        return requested, "--threads"
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise CliError(f"OMP_NUM_THREADS={env!r} is not a positive integer; unset it or pass --threads N")
        return int(env), "OMP_NUM_THREADS"
    return cpus, "the CPUs this process may use"


def prepare(args) -> None:
    """Resolve `args.backend` (auto -> a backend name) and, for the commands with --threads, the
    threads as `args.runtime`; before any framework is imported, so that the wait policy applies."""
    requested = getattr(args, "backend", None)
    if requested in CHOICES:  # not demo's "both"
        args.backend, why = resolve_backend(requested, getattr(args, "resume", None))
    else:
        why = f"--backend {requested}"
    if hasattr(args, "threads"):
        args.runtime = Runtime(args.backend, why, *choose_threads(args.threads))
        _passive_wait()


def _passive_wait() -> None:
    if "torch" not in sys.modules:  # the OpenMP runtime reads it once, when torch loads it
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fixed(name: str, why: str, threads: int | None) -> Runtime:
    """The Runtime of a command whose backend is given (`python -m ternary_{mlx,cuda}.train`)."""
    _passive_wait()
    return Runtime(name, why, *choose_threads(threads))


def apply_threads(backend, threads: int) -> None:
    """Use `threads` CPU threads in `backend`'s framework and in any OpenBLAS this process runs."""
    if backend.name == "torch":
        import torch
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # a library caller's process already ran parallel work: its pool stays
            pass
    _set_openblas_threads(threads)


def _set_openblas_threads(threads: int) -> bool:
    """openblas_set_num_threads on the OpenBLAS already loaded here (preloaded); False if none is."""
    from convert.blas import openblas_library
    lib = openblas_library()
    if lib is None:
        return False
    try:  # RTLD_NOLOAD: only an OpenBLAS this process has loaded, never a new one
        handle = ctypes.CDLL(str(lib.parent / "libopenblas.so.0"), mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):
        return False
    handle.openblas_set_num_threads(ctypes.c_int(threads))
    return True


def start(rt: Runtime, name: str | None = None, file=None, quiet: bool = False):
    """Load backend `name` (default: the runtime's), apply the threads and print the first line
    (to `file`, default stdout; not at all when `quiet`)."""
    from convert.backends import load_backend
    backend = load_backend(name or rt.backend)
    apply_threads(backend, rt.threads)
    if not quiet:
        print(first_line(backend, rt, name), file=file or sys.stdout, flush=True)
    return backend


def first_line(backend, rt: Runtime, name: str | None = None) -> str:
    """'backend: NAME (WHY; FRAMEWORK VERSION, DEVICE, blas: B, N threads (WHY))'."""
    why = rt.backend_why if name is None or name == rt.backend else f"--backend {rt.backend}"
    blas = f", blas: {backend.blas}" if backend.blas else ""
    return (f"backend: {backend.name} ({why}; {backend.describe()}{blas}, "
            f"{rt.threads} thread{'s' if rt.threads != 1 else ''} ({rt.threads_why}))")
