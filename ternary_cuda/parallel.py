"""Data parallelism for the PyTorch backend under torchrun: DDP or FSDP2 (DESIGN 2).

The only module of the project that imports torch.distributed. The module itself is the
backend's data-parallel layer (shared.train.interfaces.Parallel; ternary_mlx/parallel.py has the same
names): `setup()` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and, for more than one process, joins the process group (gloo on CPU, nccl on
CUDA); without torchrun it is one process and touches nothing. The Trainer (train.py) asks this
module for the device, the wrapped model (`wrap`), the gradient-sync context of an accumulation
micro-step (`grad_sync`), global means (`mean_`), agreed decisions (`agree`), full <-> sharded
tensors (`full`, `shard_like`) and this rank's share of an evaluation (`eval_shard`).

Every rank takes the same branches (SEEDS S12): decisions that depend on something only one
rank sees (a clock, Ctrl-C) go through `agree`, an all-reduce at the loop's sync points.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from shared.spec.config import ConfigError, TrainConfig
from shared.train.evaluation import Shard

# A collective that waits longer than this ends the job with an error instead of hanging on a dead
# peer (NCCL aborts the communicator; gloo raises). Generous, because rank 0 alone writes each
# checkpoint while the other ranks wait at their next collective.
TIMEOUT = datetime.timedelta(minutes=15)


class DistributedError(RuntimeError):
    """The torchrun environment is incomplete or inconsistent."""


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


_world = World()


def read_env(env=os.environ) -> World:
    """(rank, world_size, local_rank) from the variables torchrun sets; one process without them."""
    if "WORLD_SIZE" not in env:
        return World()
    try:
        w = World(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise DistributedError(f"torchrun environment: RANK={env.get('RANK')!r}, WORLD_SIZE="
                               f"{env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r} "
                               "must be integers") from None
    if w.world_size < 1 or not 0 <= w.rank < w.world_size or w.local_rank < 0:
        raise DistributedError(f"torchrun environment: RANK={w.rank} is not in [0, WORLD_SIZE={w.world_size}) "
                               f"or LOCAL_RANK={w.local_rank} is negative")
    if w.world_size > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise DistributedError(f"WORLD_SIZE={w.world_size} but {', '.join(missing)} is not set; "
                                   "launch with torchrun, e.g. torchrun --nproc_per_node=2 -m ternary_cuda.train")
    return w


def device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    return torch.device("cuda", _world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def rank() -> int:
    return _world.rank


def world_size() -> int:
    return _world.world_size


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup() -> tuple[int, int]:
    """Join the process group when torchrun started more than one process; (rank, world_size)."""
    global _world
    w = read_env()
    _world = w
    if w.world_size > 1 and not distributed():
        cuda = torch.cuda.is_available()
        if cuda:
            if w.local_rank >= torch.cuda.device_count():
                raise DistributedError(f"LOCAL_RANK={w.local_rank} but only {torch.cuda.device_count()} "
                                       "CUDA device(s) are visible; use --nproc_per_node <= the GPU count")
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", rank=w.rank, world_size=w.world_size,
                                timeout=TIMEOUT, **({"device_id": device()} if cuda else {}))
    return w.rank, w.world_size


def teardown(failed: bool = False) -> None:
    """Leave the process group. After a normal end every rank first waits for the others: a rank
    that closes its gloo connections while a peer's background thread still talks to it can abort
    that peer ("terminate called without an active exception", seen in CI). After an error no
    barrier: the other ranks may never arrive (torchrun then stops them)."""
    global _world
    if distributed():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()
    _world = World()


# ---- settings: precision, TF32, compile ----------------------------------------------------------
def settings(t: TrainConfig) -> tuple[bool, bool, list[str]]:
    """(bf16 autocast on, compile on, notes to log) for this device; sets TF32 on CUDA."""
    dev = device()
    # No torch.compile on the CPU: measured on the bench model (bench/train_step.py, hidden 256 x 4,
    # batch 8 x 256, one thread, torch 2.13), compiling took 307 s and the compiled steps were no
    # faster than eager ones (3.9-7.7 s against 2.2-4.3 s, same process, same load): ~60 % of a CPU
    # step is MKL sgemm and ~15 % the flash-attention kernels, which inductor calls as they are.
    if dev.type != "cuda":
        ignored = [k for k, on in (("train.precision=bf16", t.precision == "bf16"), ("train.compile", t.compile),
                                   ("train.tf32", t.tf32)) if on]
        notes = ["torch: training on the CPU in float32"
                 + (f" ({', '.join(ignored)}: CUDA only, ignored)" if ignored else "")]
        return False, False, notes
    torch.backends.cuda.matmul.allow_tf32 = t.tf32
    torch.backends.cudnn.allow_tf32 = t.tf32
    notes = [f"torch: {dev} ({torch.cuda.get_device_name(dev)}), "
             f"{'bf16 autocast' if t.precision == 'bf16' else 'float32'}, TF32 {'on' if t.tf32 else 'off'}, "
             f"torch.compile {'on' if t.compile else 'off'}"]
    return t.precision == "bf16", t.compile, notes


def autocast(bf16: bool):
    """The forward pass's autocast context (bf16 on CUDA), or nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ---- wrapping ------------------------------------------------------------------------------------
def wrap(model: torch.nn.Module, t: TrainConfig, bf16: bool) -> tuple[torch.nn.Module, list[str]]:
    """The module to run forward/backward through: `model` itself for one process, DDP or FSDP2
    (train.parallel) for several, on this rank's device. FSDP2 shards `model` in place: its
    parameters become DTensors, moved to the device layer by layer (never the whole model at once)."""
    if not distributed() or t.parallel == "ddp":
        model.to(device())
    if not distributed():
        return model, ([] if t.parallel == "ddp" else [f"train.parallel={t.parallel}: one process, nothing to shard"])
    check_identical(model)
    if t.parallel == "ddp":
        dev = device()
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
        return wrapped, [f"data parallel: DDP over {world_size()} processes ({dist.get_backend()})"]
    if t.parallel == "fsdp2":
        _fully_shard(model)
        return model, [f"data parallel: FSDP2 over {world_size()} processes ({dist.get_backend()}), "
                       + ("one shard group per decoder layer + root" if model.model.depth == len(model.model.layers)
                          else "one shard group (shared blocks)") + ", float32 parameters"
                       + (" (bf16 matmuls through autocast)" if bf16 else "")]
    raise ConfigError(f"train.parallel: {t.parallel!r} is not ddp or fsdp2")


def _fully_shard(model) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device().type, (world_size(),))
    # Parameters stay float32 even with bf16 (autocast casts inside the matmuls, as under DDP):
    # the ternary codes and scales must come from the float32 latents that checkpoints and exports
    # hold (SEEDS S15), not from bf16-rounded copies. The cost: float32 all-gathers.
    mp = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    # Depth recurrence applies a stored block several times per forward; rather than rely on a
    # shard group being gathered and its gradients reduced once per application, such a model is
    # one group (the root's) -- simple and correct, its memory saving smaller.
    for layer in (model.model.layers if model.model.depth == len(model.model.layers) else ()):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # The root reshards after forward too: evaluation (no backward) must not leave gathered root
    # weights behind that a later load_numpy (EMA swap, resume) would not reach.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    # Keep the canonical NumPy interface (checkpoints, EMA evaluation) on the sharded model:
    # numpy_weights gathers (a collective: every rank calls it), load_numpy scatters locally.
    model.numpy_weights = types.MethodType(_numpy_weights_sharded, model)
    model.load_numpy = types.MethodType(_load_numpy_sharded, model)


def check_identical(model: torch.nn.Module) -> None:
    """Refuse to train when the ranks hold different starting weights (another seed or checkpoint):
    FSDP2 would silently stitch a model together from each rank's own rows (DDP would silently take
    rank 0's). Compares two float64 checksums per tensor across ranks (one all-gather)."""
    names = [k for k, _ in model.named_parameters()]
    sums = []
    for _, p in model.named_parameters():
        flat = p.detach().double().reshape(-1)
        sums += [flat.sum(), (flat.abs() * torch.arange(1, flat.numel() + 1, dtype=torch.float64,
                                                         device=flat.device)).sum()]
    local = torch.stack(sums).to(device())
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()
    bad = sorted({names[i // 2] for i in torch.nonzero((table != table[0]).any(0)).flatten().tolist()})
    if bad:
        raise RuntimeError(f"ternary_cuda.parallel: the ranks start from different weights ({', '.join(bad[:3])}"
                           f"{', ...' if len(bad) > 3 else ''}: {len(bad)} differ). Every rank must use the "
                           "same seed and read the same checkpoint.")


def _numpy_weights_sharded(model) -> dict[str, np.ndarray]:
    return gather_numpy(dict(model.named_parameters()))


def _load_numpy_sharded(model, weights: dict[str, np.ndarray], device_=None) -> None:
    from shared.spec.checkpoint import check_tensor_set
    from shared.spec.params import parameter_shapes
    check_tensor_set(parameter_shapes(model.config.model), {k: tuple(v.shape) for k, v in weights.items()},
                     "weights")
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(shard_like(torch.from_numpy(np.asarray(weights[k], np.float32)), p))


def grad_sync(wrapped, last: bool):
    """Context of one accumulation micro-step: gradients are reduced across ranks only on the last."""
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


# ---- collectives and tensors ---------------------------------------------------------------------
def mean_(t: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `t` over all ranks (identity for one process)."""
    if distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t


def agree(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (one all-reduce), so all take the same branch."""
    if not distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_float64(a: np.ndarray) -> np.ndarray:
    """The elementwise float64 sum of `a` over all ranks, on every rank (identity for one process)."""
    a = np.array(a, np.float64)  # a copy: the all-reduce works in place
    if not distributed():
        return a
    t = torch.from_numpy(a)
    if dist.get_backend() == "nccl":
        t = t.to(device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def eval_shard(model: torch.nn.Module) -> Shard | None:
    """This rank's share of an evaluation of `model` (shared.train.evaluation), None for one process.
    The model is the bare one (DDP: its forward needs no peer) or FSDP2-sharded (its forward
    gathers weights, a collective: every rank then runs equally many forward calls)."""
    if not distributed():
        return None
    return Shard(rank(), world_size(), sum_float64,
                 collective_forward=sharded(dict(model.named_parameters())))


def _loaded_dtensor():
    """The DTensor class if torch.distributed.tensor is imported, else None: no DTensor can exist
    before its package is imported, and importing it costs ~1 s of CPU, which every one-process
    torch run paid for these isinstance checks."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def sharded(params: dict[str, torch.Tensor]) -> bool:
    """Whether these parameters are FSDP2 shards (optimizer state then holds only this rank's rows)."""
    dtensor = _loaded_dtensor()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params.values())


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (a collective: every rank calls it); others unchanged."""
    dtensor = _loaded_dtensor()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def shard_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` (the whole tensor, the same on every rank) laid out as `like`: this rank's shard when
    `like` is a DTensor (no communication), else `t` on `like`'s device."""
    if _loaded_dtensor() is None:  # no DTensor exists
        return t.to(like.device)
    from torch.distributed.tensor import DTensor, distribute_tensor
    if isinstance(t, DTensor):
        return t  # already laid out (EMA initialised from sharded parameters)
    if isinstance(like, DTensor):
        return distribute_tensor(t.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)
    return t.to(like.device)


def from_host(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A whole host array (a checkpoint's, the same on every rank) as a float32 tensor laid out as
    `like`. Under FSDP2 only this rank's rows are sliced out and copied to the device: the whole
    tensor is never copied, on the host or the device, and the result is no view of `a` (which
    the caller may then release). Else a float32 copy on `like`'s device."""
    dtensor = _loaded_dtensor()
    if dtensor is None or not isinstance(like, dtensor):
        return torch.tensor(np.asarray(a, np.float32), device=like.device)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    if tuple(a.shape) != tuple(like.shape):
        raise ValueError(f"from_host: array of shape {tuple(a.shape)} for a tensor of shape {tuple(like.shape)}")
    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    rows = np.asarray(a[tuple(slice(o, o + n) for o, n in zip(offset, shape))], np.float32)
    local = torch.tensor(rows, device=like.device)  # a copy of this rank's rows only
    if local.shape != like.to_local().shape:
        raise RuntimeError(f"from_host: this rank's shard of {tuple(like.shape)} is {tuple(like.to_local().shape)}, "
                           f"but {like.placements} gave rows of shape {tuple(local.shape)}")
    return dtensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def gather_numpy(tensors: dict[str, torch.Tensor], keep: bool = True) -> dict[str, np.ndarray] | None:
    """Whole float32 NumPy copies of `tensors`, gathered one tensor at a time. Under FSDP2 each
    `full` is a collective: every rank calls this with the same names in the same order. A rank
    that does not need the result (keep=False: not the checkpoint writer) drops each gathered
    tensor at once and gets None, so it never holds more than one whole tensor."""
    out: dict[str, np.ndarray] | None = {} if keep else None
    for k, v in tensors.items():
        whole = full(v)
        if out is not None:
            out[k] = whole.detach().float().cpu().numpy().copy()  # no aliasing of live tensors
        del whole  # released before the next gather
    return out
