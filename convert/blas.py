"""A fast BLAS for MLX on Linux CPU.

The Linux CPU wheel of MLX (`mlx[cpu]`) links a bundled reference BLAS, which makes its matmuls
slow (a 1024^3 float32 matmul: 0.49 s here, against 0.012 s with OpenBLAS). Debian's
`libopenblas0-pthread` exports the same symbols, so preloading it (`LD_PRELOAD`) makes MLX call
OpenBLAS instead. A preload only works if it is in place before the process starts, so the CLI
re-executes itself once with `LD_PRELOAD` extended (`ensure_fast_blas`).

Side effect, measured: the preload also reaches PyTorch in the same process. The torch CPU wheel
links MKL statically but exports `sgemm_`, so a preloaded BLAS interposes on it: torch matmuls then
run on OpenBLAS (about as fast on this machine, but not bit-identical to MKL). Only commands that
run MLX re-execute; a torch-only command keeps MKL.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

INSTALL_HINT = "apt-get install libopenblas0-pthread"

_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu",
              "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}


def openblas_library() -> Path | None:
    """Path of Debian's OpenBLAS (pthread) `libblas.so.3` for this machine, or None if not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    arch = _MULTIARCH.get(platform.machine().lower())
    if arch is None:
        return None
    return Path(f"/usr/lib/{arch}/openblas-pthread/libblas.so.3")


def _preloaded(lib: Path, env: dict[str, str]) -> bool:
    entries = env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
    return any(e and os.path.realpath(e) == os.path.realpath(lib) for e in entries)


def ensure_fast_blas(argv: list[str]) -> None:
    """Re-execute this command (`*argv` are its arguments) with OpenBLAS preloaded, where that helps.

    Returns (doing nothing) off Linux, when OpenBLAS is already preloaded, or when it is not
    installed (then prints a one-line hint to stderr). Otherwise it does not return.
    """
    lib = openblas_library()
    if lib is None or _preloaded(lib, os.environ):
        return
    if not lib.exists():
        print(f"ternary: hint: MLX uses a slow reference BLAS on Linux; `{INSTALL_HINT}` makes its "
              "matmuls ~35x faster (--no-fast-blas hides this)", file=sys.stderr)
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (env.get("LD_PRELOAD", ""), str(lib)) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    # The same command line as this process's (console script or `python -m convert.cli`, with any
    # interpreter flags), so nothing is re-imported from a different place.
    cmd = list(getattr(sys, "orig_argv", []))
    if not argv or cmd[-len(argv):] != list(argv):
        cmd = [sys.executable, "-m", "convert.cli", *argv]
    try:
        os.execve(sys.executable, cmd, env)
    except OSError as e:  # pragma: no cover - exec of our own interpreter failing is exotic
        print(f"ternary: note: could not re-run with OpenBLAS preloaded ({e}); continuing with the "
              "bundled BLAS", file=sys.stderr)


def describe() -> str:
    """Which BLAS MLX uses in this process: 'openblas (preloaded)', 'bundled' or the macOS one."""
    if sys.platform == "darwin":
        return "accelerate (macOS)"
    lib = openblas_library()
    if lib is None or not lib.exists() or not _preloaded(lib, os.environ):
        return "bundled"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # pragma: no cover
        return "openblas (preloaded)"
    mapped = {os.path.realpath(lib), str(lib)}
    return "openblas (preloaded)" if any(p in maps for p in mapped) else "bundled"
