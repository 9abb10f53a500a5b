"""FSDP2 never puts the whole optimizer state on a rank that does not need it (torchrun, 2 ranks, gloo).

A 7B model's AdamW state is 56 GB of float32: FSDP2 exists so that no rank holds it whole. Three
places used to build it whole on every rank; each is measured here on a tiny model:
- creation: every slot is a DTensor holding this rank's rows, and the largest tensor any
  optimizer operation materialises (seen by a TorchDispatchMode around Optimizer.__init__,
  init_ema and load_numpy_state) is one shard, never a whole parameter;
- save: rank 1 takes part in every gather but keeps nothing (checkpoint_tensors() is None) and its
  NumPy buffers (tracemalloc traces NumPy's allocations), sampled at every gather of
  Trainer.save, stay below one whole tensor, while rank 0, the writer, holds the checkpoint;
- resume: each slot is copied in from the checkpoint's whole array row by row; the shards equal
  the saved trainer's bit for bit and own their storage (no view keeping a whole array alive).
The vocabulary (259 rows) does not split evenly over two ranks.

The file is also the worker: python -m torch.distributed.run --standalone --nproc_per_node=2 \
    -m tests.distributed.test_fsdp2_memory OUT     writes OUT/rank<r>.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

from tests.variants import DEFAULT_INIT, tiny_sets

ROOT = Path(__file__).resolve().parents[2]
# the initializer range a real run starts from: these trajectory tolerances were measured there
SETS = tiny_sets(initializer_range=DEFAULT_INIT,
                 vocab_size=259, intermediate_size=192, data=dict(tokenizer="bytes"),
                 train=dict(seq_len=16, batch_size=2, parallel="fsdp2", optimizer="muon", ema_decay=0.9))


# ---- the worker (one rank) --------------------------------------------------------------------------
def _largest_materialised():
    """A dispatch mode recording the most elements of any tensor an operation returns (a DTensor
    counts its local shard: the memory it holds)."""
    import torch
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, (t.to_local() if isinstance(t, DTensor) else t).numel())
            return out
    return Largest()


def _recording_optimizer(mode):
    """ternary_cuda.optim.Optimizer with its state-building methods run under `mode`."""
    from ternary_cuda.optim import Optimizer

    class Recorded(Optimizer):
        def __init__(self, *a, **k):
            with mode:
                super().__init__(*a, **k)

        def init_ema(self, params):
            with mode:
                super().init_ema(params)

        def load_numpy_state(self, arrays):
            with mode:
                super().load_numpy_state(arrays)
    return Recorded


def _numpy_held_during_gathers(fn) -> int:
    """Run fn() and return the most bytes of NumPy buffers alive when a gather (parallel.full)
    starts: what the gathers so far have left behind. tracemalloc traces NumPy's buffers in a
    domain of their own, apart from the Python objects of torch's collectives. (parallel.gather_numpy
    looks `full` up when it runs, so the patch sees every gather of a save; the optimizer's own
    `full`, given to it at construction, is only used by Muon's step, not by a save.)"""
    import numpy as np

    from ternary_cuda import parallel
    real, most = parallel.full, [0]

    def full(t):
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
        most[0] = max(most[0], sum(s.size for s in snap.statistics("filename")))
        return real(t)
    parallel.full = full
    tracemalloc.start()
    try:
        fn()
    finally:
        tracemalloc.stop()
        parallel.full = real
    return most[0]


def _build(cfg, weights=None, optimizer_state=None) -> tuple:
    """(Trainer, largest tensor its optimizer state building materialised)."""
    from ternary_cuda import train as train_mod
    from ternary_cuda.model import Model
    mode = _largest_materialised()
    real = train_mod.Optimizer
    train_mod.Optimizer = _recording_optimizer(mode)
    try:
        trainer = train_mod.Trainer(cfg, Model(cfg, weights, seed=0), optimizer_state)
    finally:
        train_mod.Optimizer = real
    return trainer, mode.largest


def _state_layout(trainer) -> dict:
    from torch.distributed.tensor import DTensor
    st = trainer.opt.state
    return {"all_dtensor": all(isinstance(v, DTensor) for v in st.values()),
            "local_numel": sum(v.to_local().numel() for v in st.values()),
            "full_numel": sum(v.numel() for v in st.values()),
            # a shard that is a view of something bigger would keep that alive
            "own_storage": all(v.to_local().untyped_storage().nbytes() == 4 * v.to_local().numel()
                               for v in st.values())}


def worker(out: Path) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from shared.spec import checkpoint as fmt
    from shared.spec.config import RunConfig
    from ternary_cuda import parallel
    rank, world = parallel.setup()
    try:
        cfg = RunConfig().with_overrides(SETS)
        trainer, created_largest = _build(cfg)
        params = trainer.params
        res = {"rank": rank, "world": world, "created_largest": created_largest,
               "shard_largest": max(p.to_local().numel() for p in params.values()),
               "param_largest": max(p.numel() for p in params.values()),
               "created": _state_layout(trainer),
               # the optimizer got parallel.py's layout hooks as constructor arguments
               "hooks": [trainer.opt.full is parallel.full, trainer.opt.shard_like is parallel.shard_like,
                         trainer.opt.from_host is parallel.from_host]}
        rng = np.random.default_rng(rank)
        for step in range(2):  # moments and EMA that differ from their initial values
            windows = rng.integers(0, 256, (1, cfg.train.batch_size, cfg.train.seq_len + 1))
            trainer.fetch([trainer.step(windows, step)])

        tensors = trainer.checkpoint_tensors()  # a collective: both ranks call it
        res["kept"] = None if tensors is None else [len(tensors[0]), len(tensors[1])]
        ckpt = out / "ckpt"
        res["save_numpy_peak"] = _numpy_held_during_gathers(lambda: trainer.save(ckpt, {"step": 2}))
        dist.barrier()  # rank 0 has written it
        opt_state = fmt.read_optimizer(ckpt)[0]
        _, weights = fmt.read_checkpoint(ckpt)
        res["written_bytes"] = sum(a.nbytes for a in opt_state.values()) + sum(a.nbytes for a in weights.values())

        resumed, res["resumed_largest"] = _build(cfg, weights, opt_state)
        res["resumed"] = _state_layout(resumed)
        res["resumed_equal"] = all(torch.equal(resumed.opt.state[k].to_local(), v.to_local())
                                   for k, v in trainer.opt.state.items())
        res["resumed_keys"] = sorted(resumed.opt.state) == sorted(trainer.opt.state)
        totals = torch.tensor([res["created"]["local_numel"], res["resumed"]["local_numel"]], dtype=torch.int64)
        dist.all_reduce(totals)
        res["local_numel_over_ranks"] = totals.tolist()
        (out / f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        parallel.teardown()


# ---- the test ---------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def test_fsdp2_ranks_hold_only_their_shard_of_the_optimizer_state(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "tests.distributed.test_fsdp2_memory", str(tmp_path)],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    full = r0["created"]["full_numel"]
    for res in (r0, r1):
        print(f"rank {res['rank']}: state {res['created']['local_numel']} of {full} elements; largest tensor "
              f"built for the state {res['created_largest']} (fresh), {res['resumed_largest']} (resumed), "
              f"a whole parameter {res['param_largest']}; NumPy held during save {res['save_numpy_peak']} B "
              f"(the checkpoint holds {res['written_bytes']} B)")
        for when in ("created", "resumed"):
            lay = res[when]
            assert lay["all_dtensor"] and lay["own_storage"], (res["rank"], when, lay)
            assert lay["full_numel"] == full
            # this rank's rows only: about half (259 vocabulary rows split 130 / 129)
            assert abs(lay["local_numel"] - full / 2) < 0.01 * full, (res["rank"], when, lay)
        assert res["local_numel_over_ranks"] == [full, full]  # the shards cover the state exactly once
        # never a whole parameter-sized tensor while building or loading the state
        assert res["created_largest"] <= res["shard_largest"] < res["param_largest"], res
        assert res["resumed_largest"] <= res["shard_largest"], res
        assert res["resumed_equal"] and res["resumed_keys"], res
    assert r0["kept"] is not None and r1["kept"] is None
    assert r0["hooks"] == r1["hooks"] == [True, True, True]
    largest_bytes = 4 * r0["param_largest"]
    # rank 0 holds the whole checkpoint in NumPy while writing it; rank 1 not even one whole tensor
    assert r0["save_numpy_peak"] >= r0["written_bytes"] - largest_bytes  # all but the last tensor gathered
    assert r1["save_numpy_peak"] < largest_bytes < r0["written_bytes"], (r1["save_numpy_peak"], largest_bytes)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
