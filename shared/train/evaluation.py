"""Scoring a token stream with any backend: windows, byte accounting, metrics (DESIGN 3.6).

The backend supplies `nll_fn(inputs (B, T), targets (B, T)) -> nats (B, T)`; everything else
(which tokens are scored, how many bytes they stand for) is decided here, once.

Data parallel (`shard`): the windows are cut into batches of `batch_size` exactly as in one
process, and batch b is scored by rank b % world. Each rank fills its batches' (nats, tokens,
bytes) into a table of all batches, zeros elsewhere; one float64 sum over ranks completes the
table exactly (x + 0.0 == x: every entry has one non-zero contributor), and every rank then adds
the rows in batch order, as one process does. Same batches (so the same forward shapes) and the
same additions in the same order: the metrics are bit-identical to one process on the same
weights, and the same on every rank (SEEDS S12: early stopping decides on them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.data.loader import val_windows
from shared.data.metrics import EvalAccumulator
from shared.data.tokenizers import Tokenizer


@dataclass(frozen=True)
class Shard:
    """This process's part of an evaluation spread over `world` data-parallel ranks.

    sum_over_ranks(a) -> the elementwise sum of the float64 array `a` over all ranks, returned to
    every rank (an all-reduce: every rank calls it once per evaluation, with an equal shape).
    collective_forward: the forward pass itself is a collective (FSDP2 gathers each layer's
    weights), so every rank must call nll_fn equally often: a rank with fewer batches runs
    dummy one-token batches whose result is discarded.
    """
    rank: int
    world: int
    sum_over_ranks: Callable[[np.ndarray], np.ndarray]
    collective_forward: bool = False

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"Shard: rank {self.rank} is not in [0, world={self.world})")


def evaluate_tokens(nll_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], tokens: np.ndarray,
                    tokenizer: Tokenizer, seq_len: int, *, stride: int | None = None,
                    max_tokens: int | None = None, batch_size: int = 8, progress: bool = False,
                    shard: Shard | None = None) -> dict:
    """Score every token of `tokens[1:]` exactly once (or the first `max_tokens`).

    stride None (or == seq_len): non-overlapping windows. stride < seq_len: sliding windows,
    each scoring only its last `stride` tokens, so every token sees at least seq_len - stride
    tokens of context. The result names the mode it used (SEEDS S14). With `shard`, this rank
    scores its share of the batches and every rank returns the same metrics (module docstring).
    """
    if batch_size <= 0:
        raise ValueError(f"evaluate_tokens: batch_size must be positive, got {batch_size}")
    rank, world = (shard.rank, shard.world) if shard is not None else (0, 1)
    mine: dict[int, tuple[float, int, int]] = {}  # batch index -> (nats, tokens, bytes) scored here
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_batches = 0
    windows = val_windows(tokens, seq_len, stride=stride, max_tokens=max_tokens)
    if progress:
        from tqdm.auto import tqdm
        windows = tqdm(windows, unit="window", desc="eval" if world == 1 else f"eval (rank {rank}/{world})",
                       leave=False)

    def flush() -> None:
        nonlocal n_batches
        if not batch:
            return
        b, n_batches = n_batches, n_batches + 1
        if b % world == rank:
            mine[b] = _score(nll_fn, batch, tokenizer)
        batch.clear()

    for x, y, m in windows:
        batch.append((x, y, m))
        if len(batch) == batch_size:
            flush()
    flush()
    if shard is not None and shard.collective_forward:
        dummy = np.zeros((1, 1), np.int64)
        for _ in range(-(-n_batches // world) - len(mine)):  # ceil(n / world) calls on every rank
            nll_fn(dummy, dummy)
    table = np.zeros((n_batches, 3), np.float64)
    for b, row in mine.items():
        table[b] = row
    if world > 1:
        table = np.asarray(shard.sum_over_ranks(table), np.float64).reshape(n_batches, 3)
    acc = EvalAccumulator()
    for b, (nats, n_tok, n_bytes) in enumerate(table):  # batch order, as one process adds them
        if not math.isfinite(nats):
            raise ValueError(f"evaluate_tokens: non-finite loss {nats} in batch {b} (windows "
                             f"{b * batch_size}..{b * batch_size + batch_size - 1}): the model diverged")
        acc.add_totals(nats, int(n_tok), int(n_bytes))
    out = acc.result()
    sliding = stride is not None and stride < seq_len
    out["mode"] = (f"{'sliding' if sliding else 'non-overlapping'} windows of {seq_len} tokens"
                   + (f", stride {stride}" if sliding else "") + ", no test-time training")
    return out


# Temperature scaling (train.temperature_scaling), parameter-golf's find_temp: of these temperatures
# the one with the lowest loss on the first min(CALIBRATION_TOKENS, train.eval_tokens) training tokens
# (parameter-golf: the next 65536 of its stream; the first wins a tie) divides
# the validation logits; the tempered numbers are reported beside the untempered ones.
TEMPERATURE_GRID = (0.90, 0.95, 1.00, 1.05, 1.10)
CALIBRATION_TOKENS = 65536
TEMPERATURE_KEYS = ("temperature", "val_loss_tempered", "val_bpb_tempered")


def choose_temperature(loss_at: Callable[[float], float]) -> float:
    """The temperature of TEMPERATURE_GRID with the lowest `loss_at(T)`, the first among equals."""
    best_t, best = 1.0, math.inf
    for t in TEMPERATURE_GRID:
        loss = loss_at(t)
        if loss < best:
            best_t, best = t, loss
    return best_t


def with_temperature(metrics: dict, evaluate_at: Callable[..., dict], val_tokens, calibration_tokens) -> dict:
    """`metrics` (untempered, kept as they are) plus temperature, val_loss_tempered and
    val_bpb_tempered; evaluate_at(tokens, temperature=T, max_tokens=...) scores a stream."""
    t = choose_temperature(lambda T: evaluate_at(calibration_tokens, temperature=T,
                                                 max_tokens=len(calibration_tokens) - 1)["val_loss"])
    tempered = metrics if t == 1.0 else evaluate_at(val_tokens, temperature=t)
    return {**metrics, "temperature": t, "val_loss_tempered": tempered["val_loss"],
            "val_bpb_tempered": tempered["val_bpb"]}


def _score(nll_fn, batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tokenizer: Tokenizer) -> tuple[float, int, int]:
    """(summed nats, scored tokens, their UTF-8 bytes) of one batch of windows."""
    T = max(len(x) for x, _, _ in batch)
    xs = np.zeros((len(batch), T), np.int64)
    ys = np.zeros((len(batch), T), np.int64)
    ms = np.zeros((len(batch), T), bool)
    for i, (x, y, m) in enumerate(batch):  # a short last window is padded and masked out
        xs[i, :len(x)], ys[i, :len(y)], ms[i, :len(m)] = x, y, m
    nll = np.asarray(nll_fn(xs, ys), np.float64)
    if nll.shape != ys.shape:
        raise ValueError(f"evaluate_tokens: nll_fn returned shape {nll.shape} for targets {ys.shape}")
    targets, prev = ys[ms], xs[ms]
    return float(nll[ms].sum()), int(targets.size), int(tokenizer.byte_counts(targets, prev).sum())
