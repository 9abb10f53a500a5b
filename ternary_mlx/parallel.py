"""Data parallelism for MLX with `mx.distributed` (mirrors ternary_cuda/parallel.py).

Launch (the ring backend works on CPUs, one host or several; `--` ends mlx.launch's own options
and the command after it is run as is, so name the interpreter):

    mlx.launch --backend ring -n 2 -- python -m ternary_mlx.train --preset smoke --out runs/dp2
    mlx.launch --backend ring --hosts 10.0.0.1,10.0.0.2 -- python -m ternary_mlx.train ...

mlx.launch starts one process per rank with MLX_RANK and MLX_HOSTFILE (a JSON list of
"ip:port" per rank) set; `-p/--starting-port` moves the ports (default 32323, one per rank)
when another job holds them. Run without mlx.launch, training is one plain process (world 1).

mlx.launch itself exits 0 even when a rank fails: it prints "Node with rank R exited with code C"
on stderr; scripts must look for that. A rank that dies makes the others fail at their next
all_sum ("[ring] connection to a peer was lost") and mlx.launch then stops them: no hang.

Each rank reads its own slice of every global batch (shared.data.loader.TokenLoader), so
train.batch_size is per rank and the global batch is batch_size * world_size. The Trainer
averages gradients across ranks (one all_sum per step, inside the compiled step), so every rank
applies the same update and the weights stay bit-identical; `check_identical` verifies that at
the start (same seed, same checkpoint on every host). Evaluation is spread over the ranks
(`eval_shard`, shared/train/evaluation.py): each scores its share of the validation batches, one
float64 all_sum completes the table, and every rank gets the same metrics as one process
(so early stopping agrees).
"""
from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import numpy as np

from shared.train.evaluation import Shard

_group: mx.distributed.Group | None = None  # set by setup(); None: one process


def _launched() -> bool:
    """True when a launcher (mlx.launch ring, or mpirun) started this process as one rank of many."""
    if "MLX_RANK" in os.environ:
        hostfile = os.environ.get("MLX_HOSTFILE", "")
        # `mlx.launch -n 1` writes an empty hostfile: one rank, nothing to connect to
        return not (hostfile and Path(hostfile).is_file() and not Path(hostfile).read_text().strip())
    return "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ


def setup() -> tuple[int, int]:
    """Join the launched group (an error if it cannot be joined); (rank, world_size)."""
    global _group
    if not _launched():
        _group = None
        return 0, 1
    try:
        group = mx.distributed.init(strict=True)  # never a silent fall back to one process
    except RuntimeError as e:
        raise RuntimeError(f"ternary_mlx.parallel: launched as rank {os.environ.get('MLX_RANK', '?')} "
                           f"(MLX_HOSTFILE={os.environ.get('MLX_HOSTFILE', '-')}) but mx.distributed.init "
                           f"failed: {e}") from e
    _group = group if group.size() > 1 else None
    return group.rank(), group.size()


def teardown(failed: bool = False) -> None:
    """MLX has no explicit shutdown of a group; forget it so a later train() in this process is world 1.
    (`failed`: the shared hook's signature; nothing to skip here.)"""
    global _group
    _group = None


def group() -> mx.distributed.Group | None:
    """The group set up by `setup()`, or None for one process."""
    return _group


def rank() -> int:
    return 0 if _group is None else _group.rank()


def world_size() -> int:
    return 1 if _group is None else _group.size()


def all_mean(arrays: dict[str, mx.array], g: mx.distributed.Group) -> dict[str, mx.array]:
    """Mean of each array over the ranks of `g`, with one all_sum per dtype (not one per array:
    a ring message costs milliseconds of latency on CPU, so many small ones dominate a step)."""
    n = g.size()
    out: dict[str, mx.array] = {}
    by_dtype: dict = {}
    for k, a in arrays.items():
        by_dtype.setdefault(a.dtype, []).append(k)
    for keys in by_dtype.values():
        flat = mx.distributed.all_sum(mx.concatenate([arrays[k].reshape(-1) for k in keys]), group=g) / n
        offset = 0
        for k in keys:
            size = arrays[k].size
            out[k] = flat[offset:offset + size].reshape(arrays[k].shape)
            offset += size
    return out


def agree(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank of the group set up by `setup()`."""
    return any_rank(flag, _group)


def any_rank(flag: bool, g: mx.distributed.Group | None) -> bool:
    """`agree` on a given group: a Trainer's own, taken when it was built, so that it keeps
    working on that group after `teardown()` forgot the module's (MLX groups need no shutdown)."""
    if g is None:
        return bool(flag)
    return bool(mx.distributed.all_sum(mx.array(1 if flag else 0, mx.int32), group=g).item() > 0)


def sum_float64(a: np.ndarray) -> np.ndarray:
    """The elementwise float64 sum of `a` over all ranks, on every rank (a copy for one process)."""
    return _sum_float64(a, _group)


def _sum_float64(a: np.ndarray, g: mx.distributed.Group | None) -> np.ndarray:
    """On the CPU stream: Metal has no float64."""
    if g is None:
        return np.array(a, np.float64)
    return np.array(mx.distributed.all_sum(mx.array(np.asarray(a, np.float64), mx.float64), group=g,
                                           stream=mx.cpu), np.float64)


def eval_shard(model) -> Shard | None:
    """This rank's share of an evaluation (shared.train.evaluation), None for one process. `model` is
    not needed: an MLX forward needs no peer (every rank holds the whole model), so the ranks'
    batch counts may differ."""
    g = _group
    if g is None:
        return None
    return Shard(g.rank(), g.size(), lambda a: _sum_float64(a, g))


def check_identical(arrays: dict[str, mx.array], g: mx.distributed.Group | None, what: str) -> None:
    """Raise unless every rank holds bitwise the same `arrays` (compares per-array checksums)."""
    if g is None or not arrays:
        return
    keys = sorted(arrays)
    # sum and sum of |x| * position-weight: equal inputs give equal checksums on every rank
    sums = mx.stack([mx.sum(arrays[k].astype(mx.float32)) for k in keys]
                    + [mx.sum(mx.abs(arrays[k].astype(mx.float32).reshape(-1))
                              * mx.arange(1, arrays[k].size + 1, dtype=mx.float32)) for k in keys])
    gathered = np.array(mx.distributed.all_gather(sums[None], group=g))  # (world, 2 * len(keys))
    same = np.all((gathered == gathered[0]) | (np.isnan(gathered) & np.isnan(gathered[0])), axis=0)
    bad = sorted({keys[i % len(keys)] for i in np.flatnonzero(~same)})
    if bad:
        raise RuntimeError(f"ternary_mlx.parallel: the ranks start from different {what} "
                           f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}: {len(bad)} differ). "
                           "Every rank must use the same seed and read the same checkpoint.")


def notes(t, g: mx.distributed.Group | None) -> list[str]:
    """What this backend does with the torch/CUDA settings of train.* (said, never silently ignored)."""
    from shared.spec.config import ConfigError
    if t.parallel == "fsdp2" and g is not None and g.size() > 1:
        raise ConfigError("train.parallel = 'fsdp2': MLX data parallel replicates the model on every rank "
                          "(no sharding); use train.parallel = 'ddp' with mlx.launch, or the torch backend")
    ignored = [k for k, on in (("train.precision=bf16", t.precision == "bf16"), ("train.compile", t.compile),
                               ("train.tf32", t.tf32)) if on]
    return ["mlx: training in float32 with mx.compile"
            + (f" ({', '.join(ignored)}: torch/CUDA settings, ignored)" if ignored else "")
            + (f"; data parallel over {g.size()} ranks (ring all_sum)" if g is not None and g.size() > 1 else "")]
