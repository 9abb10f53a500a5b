"""What the shared code expects of a backend, written down as typing.Protocols.

`Model` and `Trainer` are what shared/train/loop.py, shared/train/runner.py and shared/train/trainer_common.py call
on a backend's objects; `Parallel` is its data-parallel module (ternary_mlx/parallel.py,
ternary_cuda/parallel.py: a module satisfies a Protocol by its functions). Both backends are
checked against them, names and signatures, by tests/distributed/test_interfaces.py. Arrays are
`Any` here (a backend tensor or a NumPy array, as the docstrings say): this module imports no
framework and not even NumPy.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: shared.train.evaluation and shared.spec.config import NumPy
    from shared.spec.config import RunConfig
    from shared.train.evaluation import Shard
    from shared.data.tokenizers import Tokenizer


@runtime_checkable
class Model(Protocol):
    """model(input_ids (B, T) int tensor) -> logits (B, T, vocab) float32 tensor; weights in and
    out as NumPy under canonical names (shared/spec/params.py). Training also passes layer_keep
    (stochastic depth's (L, B) factors) and with_aux (then (logits, the experts' balance loss));
    generation passes cache (a KVCache: the prompt, then one token per call)."""

    config: RunConfig
    check_ids: bool  # check every id against the vocabulary per call; trainers that checked on the host switch it off

    def __call__(self, input_ids: Any, layer_keep: Any = None, with_aux: bool = False, cache: Any = None) -> Any: ...

    def numpy_weights(self) -> dict[str, Any]:
        """Canonical name -> float32 NumPy copy of every parameter."""

    def load_numpy(self, weights: dict[str, Any]) -> None:
        """Strict: every expected tensor, nothing extra, every shape matching."""

    def set_quant_lambda(self, lam: Any) -> None:
        """Gradual quantization: W + lam * (W_t - W) (a float, or a scalar tensor in a compiled step)."""

    def ternary_modules(self) -> dict[str, Any]:
        """Canonical weight name -> module, for the weights that are ternary."""


class ModelClass(Protocol):
    """A backend's Model class: from `weights` (canonical NumPy) or the shared init with `seed`."""

    def __call__(self, config: RunConfig, weights: dict[str, Any] | None = None, seed: int = 0) -> Model: ...


@runtime_checkable
class Trainer(Protocol):
    """One backend's training state and step; shared/train/loop.py owns the cadence around it.

    step / fetch / agree / evaluate / check_room / save are what the loop calls (the last three
    come from shared/train/trainer_common.py, which builds them on numpy_weights,
    numpy_optimizer_state, lazy_weights, lazy_optimizer_state, ema_weights and checkpoint_tensors)."""

    config: RunConfig
    model: Model
    rank: int          # data parallel: rank 0 writes the checkpoint
    notes: list[str]   # device, precision, data-parallel mode: logged before the first step

    def step(self, windows: Any, step: int) -> Any:
        """One optimizer step on (grad_accum, batch, seq_len + 1) NumPy windows; a lazy handle."""

    def fetch(self, handles: list) -> list[tuple[float, ...]]:
        """Host sync: (loss, grad_norm) of the pending steps, followed by the terms of
        shared.train.loss_terms.extra_terms (z_loss, moe_aux_loss) when they are on (losses
        averaged over the ranks)."""

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (identity for one process)."""

    def evaluate(self, tokens: Any, tokenizer: Tokenizer, max_tokens: int,
                 calibration_tokens: Any | None = None, *, ttt: bool = False) -> dict:
        """Validation metrics of the current (or EMA) weights; every rank calls it. With
        train.temperature_scaling the loop passes training tokens to choose the temperature on;
        with ttt=True (the final evaluation under train.ttt) the score-first TTT metrics are added."""

    def check_room(self, path: Path, *, training_started: bool = True) -> None:
        """CheckpointSaveError on every rank unless rank 0's disk has room for a checkpoint at `path`."""

    def save(self, path: Path, trainer_state: dict) -> None:
        """A resumable checkpoint; every rank calls it, rank 0 writes; CheckpointSaveError on every
        rank when it cannot (the previous checkpoint kept)."""

    def numpy_weights(self) -> dict[str, Any]: ...

    def numpy_optimizer_state(self) -> dict[str, Any]: ...

    def ema_weights(self) -> dict[str, Any] | None: ...

    def lazy_weights(self) -> dict[str, Any]:
        """numpy_weights as shared.spec.safetensors_stream.LazyTensor: each copied when written."""

    def lazy_optimizer_state(self) -> dict[str, Any]:
        """numpy_optimizer_state likewise."""

    def checkpoint_tensors(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(weights, optimizer state) as NumPy arrays or LazyTensors on rank 0, None on the others
        (a collective)."""


class TrainerClass(Protocol):
    """A backend's Trainer class (a frozen `teacher` Model for distillation)."""

    def __call__(self, config: RunConfig, model: Model, optimizer_state: dict[str, Any] | None = None,
                 teacher: Model | None = None) -> Trainer: ...


@runtime_checkable
class Parallel(Protocol):
    """A backend's data-parallel module. Every function acts on the group `setup()` joined (one
    process when not launched as several ranks: then each is the identity / a local answer)."""

    def setup(self) -> tuple[int, int]:
        """Join the launched group (an error if it cannot be joined); (rank, world_size)."""

    def teardown(self, failed: bool = False) -> None:
        """Leave the group; after a failure (`failed`) without waiting for the other ranks."""

    def rank(self) -> int: ...

    def world_size(self) -> int: ...

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (decisions all ranks take alike)."""

    def sum_float64(self, a: Any) -> Any:
        """The elementwise float64 sum of the NumPy array `a` over the ranks, on every rank."""

    def eval_shard(self, model: Model) -> Shard | None:
        """This rank's share of an evaluation of `model` (shared.train.evaluation), None for one process."""
