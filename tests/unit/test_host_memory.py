"""shared/train/host_memory.py: with the fixed mmap threshold, freed layer-sized blocks leave the
process (glibc); without it, after one larger block has raised glibc's dynamic threshold, the same
blocks stay in the heap as holes. Each case runs in its own process: the setting is process-wide."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, re, sys
from pathlib import Path
from shared.train.host_memory import map_large_blocks
if sys.argv[1] == "fixed":
    assert map_large_blocks()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
big = libc.malloc(8 << 20); libc.memset(big, 1, 8 << 20); libc.free(big)  # glibc's threshold -> 8 MiB
blocks, pins = [], []
for _ in range(64):  # 128 MiB of 2 MiB blocks, a 64 KiB live block after each (no trimming at the top)
    blocks.append(libc.malloc(2 << 20)); libc.memset(blocks[-1], 1, 2 << 20); pins.append(libc.malloc(64 << 10))
full = rss()
for b in blocks:
    libc.free(b)
print(round(full - rss()))
"""


def _freed_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_fixed_threshold_returns_freed_blocks_and_default_does_not():
    assert _freed_mib("fixed") >= 120  # of 128 MiB
    assert _freed_mib("default") < 16


def test_only_large_models_on_the_cpu_fix_the_threshold():
    from shared.train.host_memory import LARGE_MODEL_BYTES, wanted
    big = LARGE_MODEL_BYTES // 4  # parameters of float32 weights at the limit
    assert wanted(big, "cpu") and wanted(596_000_000, "cpu")
    assert not wanted(big - 1, "cpu")  # small models keep glibc's fast default (page faults cost there)
    assert not wanted(596_000_000, "cuda")  # device memory is not malloc's
