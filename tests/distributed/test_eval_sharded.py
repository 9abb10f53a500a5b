"""Evaluation spread over data-parallel ranks (shared/train/evaluation.py `Shard`) gives one process's metrics.

Batch b of the validation windows is scored by rank b % world and the per-batch sums are added in
batch order on every rank, so the metrics are bit-identical to one process on the same weights
(with the same BLAS and thread count: the BLAS thread count, fixed when the library loads,
changes the float32 forward itself by ~1e-9 relative, so the one-process reference runs in a
process of its own with one thread, as each rank does; torchrun also sets OMP_NUM_THREADS=1).
The window counts are chosen so the batches do not split evenly over the ranks (5 batches on 2
ranks, the last one short and padded): under FSDP2, whose forward is a collective, the rank with
fewer batches must run one dummy forward, or the job would hang.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from shared.train.evaluation import Shard, evaluate_tokens
from shared.data.tokenizers import get_tokenizer
from tests.variants import DEFAULT_INIT, tiny_sets

ROOT = Path(__file__).resolve().parents[2]
# the initializer range a real run starts from: these trajectory tolerances were measured there
SETS = tiny_sets(initializer_range=DEFAULT_INIT,
                 data=dict(tokenizer="bytes", synthetic_train_bytes=5000, synthetic_val_bytes=10000),
                 train=dict(seq_len=32))
MAX_TOKENS = 37 * 32 + 10  # 38 windows of 32: batches of 8, 8, 8, 8, 6 (the last window 10 long)
FULL, LAST = [8, 32], [6, 32]


# ---- the shared logic, with threads standing in for ranks ------------------------------------------
class ThreadGroup:
    """`world` threads, each evaluating as one rank; sum_over_ranks is a barrier and a sum."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.tables: list[np.ndarray | None] = [None] * world

    def sum_over_ranks(self, rank: int, a: np.ndarray) -> np.ndarray:
        self.tables[rank] = np.array(a)
        self.barrier.wait()
        out = sum(self.tables[::-1])  # any order: each entry has one non-zero contributor
        self.barrier.wait()
        return out

    def run(self, fn) -> list:
        """fn(rank) on every rank at once; its results (or exceptions) by rank."""
        out: list = [None] * self.world

        def target(r):
            try:
                out[r] = fn(r)
            except Exception as e:  # noqa: BLE001 - handed back to the test
                out[r] = e
        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out


def _fake_nll(calls: list, poison: int | None = None):
    """A deterministic per-token loss that depends on the context position (as a model's), with
    magnitudes spread over decades so that float64 sums depend on how they are grouped (a per-rank
    partial sum would not reproduce one process's total); records each input."""
    def nll(x, y):
        calls.append(x.copy())
        v = np.exp(((x * 31 + y * 7) % 97) / 9.0) * (1.0 + np.arange(x.shape[1]) / 7.0)
        if poison is not None and (x == poison).any():
            v[x == poison] = np.nan
        return v
    return nll


@pytest.mark.parametrize("stride", [None, 12])
@pytest.mark.parametrize("collective", [False, True])
def test_shards_cover_every_batch_once_and_sum_bit_identically(stride, collective):
    tok = get_tokenizer("bytes")
    tokens = np.random.default_rng(0).integers(0, 256, 1500).astype(np.int32)
    ref_calls: list = []
    ref = evaluate_tokens(_fake_nll(ref_calls), tokens, tok, 32, stride=stride, max_tokens=1250, batch_size=4)
    world = 3
    assert len(ref_calls) % world != 0  # uneven shares: the padding is exercised
    group = ThreadGroup(world)
    calls: list[list] = [[] for _ in range(world)]
    got = group.run(lambda r: evaluate_tokens(
        _fake_nll(calls[r]), tokens, tok, 32, stride=stride, max_tokens=1250, batch_size=4,
        shard=Shard(r, world, lambda a, r=r: group.sum_over_ranks(r, a), collective_forward=collective)))
    for r in range(world):
        assert got[r] == ref, f"rank {r}: {got[r]} != one process {ref}"
    # rank r scored batches r, r + world, ... (the same arrays one process scored), nothing else
    for r in range(world):
        real = [c for c in calls[r] if c.shape != (1, 1)]
        assert len(real) == len(ref_calls[r::world])
        for a, b in zip(real, ref_calls[r::world]):
            np.testing.assert_array_equal(a, b)
    counts = [len(c) for c in calls]
    if collective:  # every rank the same number of forward calls, the extra ones dummies
        assert counts == [-(-len(ref_calls) // world)] * world
    else:
        assert sum(counts) == len(ref_calls)


def test_ranks_without_a_batch_still_join_and_agree():
    tok = get_tokenizer("bytes")
    tokens = (np.arange(200) % 97).astype(np.int32)
    ref = evaluate_tokens(_fake_nll([]), tokens, tok, 32, batch_size=4)  # 7 windows: 2 batches
    group = ThreadGroup(4)
    calls: list[list] = [[] for _ in range(4)]
    got = group.run(lambda r: evaluate_tokens(
        _fake_nll(calls[r]), tokens, tok, 32, batch_size=4,
        shard=Shard(r, 4, lambda a, r=r: group.sum_over_ranks(r, a), collective_forward=True)))
    assert got == [ref] * 4
    assert [[c.shape for c in cs] for cs in calls] == [[(4, 32)], [(3, 32)], [(1, 1)], [(1, 1)]]


def test_a_non_finite_loss_on_one_rank_is_an_error_on_every_rank():
    tok = get_tokenizer("bytes")
    tokens = (np.arange(700) % 200).astype(np.int32)
    tokens[400] = 250  # in window 12 (batch 3 of 4 windows): scored by rank 1 of 2
    group = ThreadGroup(2)
    got = group.run(lambda r: evaluate_tokens(
        _fake_nll([], poison=250), tokens, tok, 32, batch_size=4,
        shard=Shard(r, 2, lambda a, r=r: group.sum_over_ranks(r, a))))
    for r in range(2):  # S12: both ranks take the same branch, neither waits for the other
        assert isinstance(got[r], ValueError) and "non-finite loss nan in batch 3" in str(got[r]), got[r]


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        Shard(2, 2, lambda a: a)


# ---- real launches --------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("MLX_")}
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    # mlx.launch exits 0 even when a rank fails; it reports "Node with rank R exited with code C"
    assert r.returncode == 0 and "exited with code" not in r.stderr, \
        f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    print(r.stdout.strip())


def _worker(backend: str, out: Path, *extra: str) -> list[str]:
    return ["-m", "tests.distributed.eval_sharded_worker", backend, str(out), "--max-tokens", str(MAX_TOKENS),
            *extra, "--set", *SETS]


def _ranks(out: Path, backend: str, world: int) -> list[dict]:
    got = [json.loads((out / f"{backend}-rank{r}.json").read_text()) for r in range(world)]
    assert [g["world"] for g in got] == [world] * world
    return got


def test_torchrun_ddp_and_fsdp2_match_one_process(tmp_path):
    _run([sys.executable, *_worker("torch", tmp_path / "one")])  # a process of its own: one BLAS thread too
    ref = _ranks(tmp_path / "one", "torch", 1)[0]["ddp"]
    assert ref["calls"] == [FULL] * 4 + [LAST]
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          *_worker("torch", tmp_path / "two", "--modes", "ddp,fsdp2")])
    r0, r1 = _ranks(tmp_path / "two", "torch", 2)
    for mode in ("ddp", "fsdp2"):
        assert r0[mode]["metrics"] == r1[mode]["metrics"] == ref["metrics"], mode
        assert r0[mode]["calls"] == [FULL, FULL, LAST], mode  # batches 0, 2, 4
    assert r1["ddp"]["calls"] == [FULL, FULL]  # batches 1, 3; the bare model needs no peer
    assert r1["fsdp2"]["calls"] == [FULL, FULL, [1, 1]]  # + one dummy: FSDP2's forward is a collective


def test_mlx_ring_matches_one_process(tmp_path):
    from tests.distributed.test_mlx_ring import MLX_LAUNCH, _free_ports
    if not MLX_LAUNCH.exists():
        pytest.skip("mlx.launch is not installed next to python")
    _run([sys.executable, *_worker("mlx", tmp_path / "one")])  # a process of its own: one BLAS thread too
    ref = _ranks(tmp_path / "one", "mlx", 1)[0]["ring"]
    _run([str(MLX_LAUNCH), "--backend", "ring", "-n", "2", "-p", str(_free_ports(2)), "--",
          sys.executable, *_worker("mlx", tmp_path / "two")])
    r0, r1 = _ranks(tmp_path / "two", "mlx", 2)
    assert r0["ring"]["metrics"] == r1["ring"]["metrics"] == ref["metrics"]
    assert r0["ring"]["calls"] == [FULL, FULL, LAST] and r1["ring"]["calls"] == [FULL, FULL]
