"""Freed host memory back to the OS during training (glibc).

glibc's malloc serves blocks below its mmap threshold from the heap, and raises that threshold (up
to 32 MiB) each time it frees a larger mapped block; a training step allocates and frees thousands
of layer-sized tensors (activations, ternarized weights, gradients, optimizer temporaries), so the
heap's holes add up step after step. Measured with torch at Qwen3-0.6B's width and vocabulary, 8
layers, 1 x 512, a bf16 teacher and activation checkpointing: peak RSS 6.02, 7.05, 7.42 GiB after
steps 1-3 with the default, 5.76 and 5.76 after steps 1-2 with this (bench/results/
qwen_memory_malloc_8_layers.json).
A fixed threshold (mallopt M_MMAP_THRESHOLD) maps every block of 1 MiB or more on its own and
unmaps it when freed. That costs page faults on every new block, which is not small for a small
model: at bench/train_step.py's shape (hidden 256 x 4 layers, batch 8 x 256, one thread) a torch
step took 1.27-1.41 s with it against 0.85-0.86 s without (2 runs each). So the
trainers use it only where memory is the constraint: models of at least LARGE_MODEL_BYTES of
float32 weights (`wanted`), where a step's math dwarfs the faults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD_BYTES = 1 << 20
LARGE_MODEL_BYTES = 1 << 30  # float32 weights: about 268M parameters and up


def wanted(num_parameters: int, device_type: str) -> bool:
    """Whether a trainer should fix the threshold: host memory (the CPU) and a large model."""
    return device_type == "cpu" and 4 * num_parameters >= LARGE_MODEL_BYTES


def map_large_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold))
