"""A corpus of token shards as one read-only 1-D token sequence that is never loaded whole (DESIGN 3.5).

`ShardedTokens` stands where a concatenation of the shards used to: its length, its positions and
its slices are those of `np.concatenate(shards)`, so the training windows, their order and the
evaluation windows are unchanged (a window may still cross from one shard into the next). But the
shards stay memory maps on disk: a slice copies only the tokens it covers, a batch of windows only
its windows, so resident memory follows the batch, not the corpus (a 16 GB FineWeb set, per rank).
Where the OS has os.pread (Linux, macOS) a window is one positional read of its bytes from the
shard's file, so no page of the map is ever touched; elsewhere the map is sliced and the pages it
touched are released again (`_read`).

The id check (SEEDS S13: ids outside the vocabulary are an error, never clamped) reads each shard
once, in fixed-size chunks through ordinary file reads into one reused buffer, not through the
map, so that scanning the corpus does not leave all of it mapped into the process; the smallest
and largest id of each shard are kept, so a later check (the training loader's, with the model's
vocabulary) costs nothing. `np.asarray(ShardedTokens)` still gives the whole corpus as one array
(for tests and small data); the loader and the evaluation never call it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mmap
import os
import weakref

import numpy as np

from shared.data.checks import TokenIdError

SCAN_TOKENS = 1 << 22  # tokens per chunk of the id scan (8 MB of uint16, 16 MB of uint32)
PREAD = hasattr(os, "pread")  # POSIX (Linux, macOS): windows are read with positional reads (_read)
_RELEASE_ALIGN = 1 << 21  # release whole 2 MiB blocks around a window: read-around maps its neighbours


class ShardedTokens:
    """The tokens of `parts` (1-D integer arrays, usually shard memory maps) end to end."""

    ndim = 1

    def __init__(self, parts: Sequence[np.ndarray], names: Sequence[str]):
        if len(parts) != len(names) or not parts:
            raise ValueError("ShardedTokens: one name per part, at least one part")
        self.parts = list(parts)
        self.names = [str(n) for n in names]
        self.dtype = np.result_type(*(p.dtype for p in self.parts))  # that of np.concatenate(parts)
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)  # part i: bounds[i]:bounds[i+1]
        self._ranges: list[tuple[int, int] | None] = [None] * len(self.parts)
        self._maps = [_map_of(p) for p in self.parts]
        self._fds = [_file_of(p) for p in self.parts]  # open files of the memory-mapped parts, for pread
        self.close = weakref.finalize(self, _close_files, self._fds)  # also when collected

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self):,} tokens in {len(self.parts)} shard(s), {self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole corpus in memory: an explicit request (tests, small data), never the loader's."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} tokens")
            k = int(np.searchsorted(self.bounds, i, side="right")) - 1
            return self.parts[k][i - self.bounds[k]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise TypeError("ShardedTokens: only contiguous slices (step 1) are supported")
            return self._range(start, max(start, stop))
        raise TypeError(f"ShardedTokens: index with an int or a slice, not {type(key).__name__} "
                        "(use windows() for a batch of windows)")

    def _range(self, start: int, stop: int) -> np.ndarray:
        """tokens[start:stop] as a new array, read piece by piece from the shards it covers."""
        k = max(int(np.searchsorted(self.bounds, start, side="right")) - 1, 0)
        pieces = []
        while k < len(self.parts) and self.bounds[k] < stop:
            lo, hi = max(start, self.bounds[k]) - self.bounds[k], min(stop, self.bounds[k + 1]) - self.bounds[k]
            pieces.append(self._read(k, int(lo), int(hi)))
            k += 1
        if not pieces:
            return np.zeros(0, self.dtype)
        return pieces[0].astype(self.dtype, copy=False) if len(pieces) == 1 else \
            np.concatenate(pieces).astype(self.dtype, copy=False)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 (len(starts), length): row r is tokens[starts[r] : starts[r] + length]."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError(f"a window of {length} tokens runs outside the {len(self)} tokens")
        out = np.empty((len(starts), length), dtype=np.int32)
        part = (np.searchsorted(self.bounds, starts, side="right") - 1).tolist()
        for r, s in enumerate(starts.tolist()):  # window by window
            k = part[r]
            lo = s - int(self.bounds[k])
            if lo + length <= len(self.parts[k]):
                out[r] = self._read(k, lo, lo + length)
            else:  # across a shard end
                out[r] = self._range(s, s + length)
        return out

    def _read(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of part k as a new array. A shard's memory map is read with a positional
        read of exactly those bytes (os.pread on its file): nothing gets mapped into the process,
        and it measured 3-4x faster than touching the map, whose pages (with the kernel's
        read-around, ~300 KB per random window) stay mapped until released, so that a long run's
        resident set would grow towards the corpus size. Without os.pread, or for an in-memory
        part, the array is sliced and the map's pages are released."""
        part, fh = self.parts[k], self._fds[k] if PREAD else None
        if fh is not None:
            size = part.dtype.itemsize
            data = os.pread(fh.fileno(), (hi - lo) * size, part.offset + lo * size)
            if len(data) != (hi - lo) * size:
                raise OSError(f"{self.names[k]}: the file ended early (it changed after it was opened)")
            return np.frombuffer(data, dtype=part.dtype)
        out = np.array(part[lo:hi])
        self._release(k, lo, hi)
        return out

    def _release(self, k: int, lo: int, hi: int) -> None:
        """Unmap the pages of part k that tokens [lo, hi) were read from (MADV_DONTNEED; the kernel's
        page cache keeps them): the 2 MiB blocks around them, as read-around maps neighbours too."""
        if self._maps[k] is None:
            return
        mm, base = self._maps[k]
        size = self.parts[k].dtype.itemsize
        start = (base + lo * size) // _RELEASE_ALIGN * _RELEASE_ALIGN
        end = min(len(mm), -(-(base + hi * size) // _RELEASE_ALIGN) * _RELEASE_ALIGN)
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    # ---- the id check ---------------------------------------------------------------------------
    def id_range(self, k: int) -> tuple[int, int]:
        """(smallest, largest) id of part k, scanned once and kept; (0, -1) for an empty part."""
        if self._ranges[k] is None:
            lo, hi = 0, -1
            for chunk in _chunks(self.parts[k]):
                lo, hi = (int(chunk.min()), int(chunk.max())) if hi < lo else \
                    (min(lo, int(chunk.min())), max(hi, int(chunk.max())))
            self._ranges[k] = (lo, hi)
        return self._ranges[k]

    def min(self) -> int:
        return min(self.id_range(k)[0] for k in range(len(self.parts)) if len(self.parts[k]))

    def max(self) -> int:
        return max(self.id_range(k)[1] for k in range(len(self.parts)) if len(self.parts[k]))

    def check_ids(self, vocab_size: int, where: str | None = None) -> None:
        """check_token_ids over the corpus, shard by shard: the first shard holding an id outside
        [0, vocab_size) is named, with the count and the first position within it."""
        for k, part in enumerate(self.parts):
            lo, hi = self.id_range(k)
            if hi >= lo and (lo < 0 or hi >= vocab_size):
                _raise_bad_ids(part, vocab_size, self.names[k] if where is None else f"{where} ({self.names[k]})")


def _map_of(part: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """(the mmap under a memory-mapped part, the byte offset of the part's first token in it), or
    None where pages cannot be released (not a memory map, or no madvise on this platform)."""
    mm = getattr(part, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or not len(part):
        return None
    base = part.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data
    return mm, int(base)


def _close_files(files) -> None:
    for f in files:
        if f is not None:
            f.close()


def _file_of(part: np.ndarray):
    """The shard file under a memory-mapped part, opened for positional reads; None otherwise."""
    path = getattr(part, "filename", None)
    if not isinstance(part, np.memmap) or path is None or not hasattr(os, "pread") or not len(part):
        return None
    return open(path, "rb", buffering=0)  # closed by ShardedTokens.close(), at the latest when collected


def _chunks(part: np.ndarray, n: int | None = None):
    """Part `part` in chunks of `n` (default SCAN_TOKENS) tokens: read from its file into one buffer when it is a memory
    map (the map itself stays untouched), else views of the array."""
    n = SCAN_TOKENS if n is None else n
    path = getattr(part, "filename", None)
    if not isinstance(part, np.memmap) or path is None:
        for s in range(0, len(part), n):
            yield part[s:s + n]
        return
    buf = np.empty(min(n, len(part)), dtype=part.dtype)
    with open(path, "rb", buffering=0) as f:
        f.seek(part.offset)
        done = 0
        while done < len(part):
            m = min(n, len(part) - done)
            view = buf[:m]
            got = f.readinto(memoryview(view).cast("B"))
            if got != m * part.dtype.itemsize:
                raise TokenIdError(f"{Path(path).name}: the file ended early while reading its tokens")
            done += m
            yield view


def _raise_bad_ids(part: np.ndarray, vocab_size: int, where: str) -> None:
    """check_token_ids's message for the whole part, gathered chunk by chunk."""
    count, first, pos, done = 0, None, None, 0
    for chunk in _chunks(part):
        bad = (chunk < 0) | (chunk >= vocab_size)
        n = int(bad.sum())
        if n and first is None:
            j = int(np.argmax(bad))
            first, pos = int(chunk[j]), done + j
        count += n
        done += len(chunk)
    raise TokenIdError(f"{where}: {count} token id(s) outside the vocabulary [0, {vocab_size}), "
                       f"e.g. {first} at position {[pos]}; ids are never clamped")


def as_tokens(tokens) -> np.ndarray | ShardedTokens:
    """`tokens` as the loader and the evaluation read it: a ShardedTokens as it is (never
    concatenated), anything else as an array."""
    return tokens if isinstance(tokens, ShardedTokens) else np.asarray(tokens)
