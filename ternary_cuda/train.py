"""Training in PyTorch (mirrors ternary_mlx/train.py). The loop itself is shared: shared/train/loop.py.

`Trainer` owns the model, the optimizer and one step function; `main` is
`python -m ternary_cuda.train` (also `ternary train --backend torch`, and under torchrun).
Data parallel (parallel.py; train.parallel = ddp | fsdp2), e.g. on one node with 8 GPUs:
    torchrun --nproc_per_node=8 -m ternary_cuda.train --config run.toml --out runs/big
    torchrun --nproc_per_node=8 -m ternary_cuda.train --resume runs/big
train.batch_size is per rank: the global batch is world_size * batch_size * grad_accum sequences.
The training forward goes through `self.forward` (DDP / compiled); `self.model` is the bare model.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m ternary_cuda.train`: run from convert.cli, before the imports
    from convert.cli import train_module  # below (seconds), so a Ctrl-C during them exits 130 in one line
    raise SystemExit(train_module("torch"))

import numpy as np
import torch

from shared.data.batching import inputs_and_targets
from shared.spec.config import ConfigError, RunConfig
from shared.train.optim_rules import step_scalars
from shared.spec.params import parameter_specs
from shared.spec.safetensors_stream import LazyTensor
from shared.spec.ternary import quant_lambda
from shared.train import host_memory
from shared.train.trainer_common import TrainerCommon
from ternary_cuda import checkpoint, parallel
from ternary_cuda.evaluate import evaluate, evaluate_ttt
from shared.spec.layer_drop import layer_keep_scales
from ternary_cuda.loss import chunked_loss, cross_entropy, distillation_loss, hidden_states, with_extra_terms
from ternary_cuda.model import Model
from ternary_cuda.optim import Optimizer


class Trainer(TrainerCommon):
    backend = "torch"
    checkpoint = checkpoint
    evaluate_model = staticmethod(evaluate)
    evaluate_ttt_model = staticmethod(evaluate_ttt)

    def __init__(self, config: RunConfig, model: Model, optimizer_state: dict[str, np.ndarray] | None = None,
                 teacher: Model | None = None):
        self.config, self.model, self.teacher = config, model, teacher
        model.check_ids = False  # the loader validated every id once (S13); no device sync per step
        model.model.checkpoint_layers = config.train.activation_checkpointing  # recompute each layer in the backward
        # One process, or one rank of torchrun (parallel.setup() ran): its device, its wrapper.
        self.rank, self.world_size = parallel.rank(), parallel.world_size()
        self.device = parallel.device()
        self.bf16, use_compile, self.notes = parallel.settings(config.train)
        if host_memory.wanted(sum(p.numel() for p in model.parameters()), self.device.type):
            host_memory.map_large_blocks()  # freed blocks go back to the OS (shared/train/host_memory.py)
        self.wrapped, notes = parallel.wrap(model, config.train, self.bf16)  # FSDP2: params become shards
        self.notes += notes
        self.forward = torch.compile(self.wrapped) if use_compile else self.wrapped
        self.decoder = None  # the unwrapped decoder of train.loss_chunk_tokens' path, compiled as the model is
        if config.train.loss_chunk_tokens:
            self.decoder = torch.compile(model.model) if use_compile else model.model
        self.params = dict(model.named_parameters())
        # Every slot is laid out as its parameter from the start (FSDP2: this rank's rows only; a
        # resumed slot is copied in row by row, EMA clones the sharded parameters), so no rank
        # ever holds the whole optimizer state.
        self.opt = Optimizer(config.train, parameter_specs(config.model), self.device,
                             like=self.params if parallel.sharded(self.params) else None,
                             full=parallel.full, shard_like=parallel.shard_like, from_host=parallel.from_host)
        if optimizer_state is not None:
            self.opt.load_numpy_state(optimizer_state)
        elif config.train.ema_decay:
            self.opt.init_ema(self.params)
        self.dynamic_lambda = config.ternary.enabled and config.ternary.warmup_steps > 0
        if self.dynamic_lambda and use_compile:  # one lambda tensor, updated in place: no recompiles
            self._lambda = torch.zeros((), device=self.device)
            model.set_quant_lambda(self._lambda)
        if teacher is not None:  # frozen: no gradients, never saved; replicated on every rank
            teacher.check_ids = False
            teacher.requires_grad_(False)
            teacher.eval()
            teacher.to(self.device)
            if config.train.teacher_dtype == "bfloat16":  # half the teacher's memory; logits cast to float32
                teacher.to(torch.bfloat16)
        if config.train.loss_chunk_tokens and self.world_size > 1:
            raise ConfigError(f"train.loss_chunk_tokens = {config.train.loss_chunk_tokens} runs in one process, "
                              f"not on {self.world_size} ranks; set it to 0 under torchrun")

    def _loss(self, x: torch.Tensor, y: torch.Tensor,
              keep: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(objective to differentiate, [loss, *terms of shared.train.loss_terms.extra_terms]); keep (L, B):
        stochastic depth's factors for this micro-batch, or None."""
        t = self.config.train
        if t.loss_chunk_tokens and x.numel() > t.loss_chunk_tokens:
            return self._chunked_loss(x, y, keep)
        if t.moe_aux_loss:
            logits, moe_aux = self.forward(x, layer_keep=keep, with_aux=True)
        else:
            logits, moe_aux = self.forward(x, layer_keep=keep), None
        if self.teacher is None:
            loss = cross_entropy(logits, y)
        else:
            with torch.no_grad(), self._teacher_autocast():
                teacher_logits = self.teacher(x)
            loss = distillation_loss(logits, y, teacher_logits, t.distill_alpha, t.distill_temperature)
        return with_extra_terms(loss, logits, moe_aux, t)

    def _chunked_loss(self, x: torch.Tensor, y: torch.Tensor,
                      keep: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """_loss through chunked_loss: never the whole micro-batch's logits (train.loss_chunk_tokens).
        The decoder runs unwrapped (one process: refused under torchrun in __init__), compiled when
        the whole model would be."""
        t = self.config.train
        h, moe_aux = hidden_states(self.decoder, x, keep, with_aux=bool(t.moe_aux_loss))
        th = None
        if self.teacher is not None:
            with torch.no_grad(), self._teacher_autocast():
                th = self.teacher.model(x)
        loss, z_term = chunked_loss(self.model, h, y, t.loss_chunk_tokens, self.teacher, th, t.distill_alpha,
                                    t.distill_temperature)
        return with_extra_terms(loss, None, moe_aux, t, z_term=z_term)

    def _teacher_autocast(self):
        """A bfloat16 teacher (train.teacher_dtype) runs under autocast, so that ops whose buffers stay
        float32 (e.g. RoPE's tables) meet its bfloat16 weights without a dtype error."""
        bf16 = self.config.train.teacher_dtype == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        a = np.asarray(a)  # (ascontiguousarray alone makes 0-d scalars 1-d, which DTensor warns about)
        return torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape)).to(self.device, non_blocking=True)

    def _step_scalars(self, step: int) -> dict[str, torch.Tensor]:
        """step_scalars as 0-d tensors on the device, from one host-to-device copy (not one per scalar)."""
        host = step_scalars(step, self.config.train)
        packed = self._tensor(np.array([host[k] for k in host], np.float32))
        return dict(zip(host, packed.unbind(0)))

    def step(self, windows: np.ndarray, step: int):
        """One optimizer step on (grad_accum, batch, seq_len + 1) windows; returns lazy (loss, grad_norm,
        *terms), the terms of shared.train.loss_terms.extra_terms."""
        xs, ys = inputs_and_targets(windows.reshape(-1, windows.shape[-1]))
        shape = windows.shape[:2] + (windows.shape[-1] - 1,)
        xs, ys = self._tensor(xs.reshape(shape).astype(np.int64)), self._tensor(ys.reshape(shape).astype(np.int64))
        scalars = self._step_scalars(step)
        if self.dynamic_lambda:
            self._set_lambda(quant_lambda(step, self.config.ternary.warmup_steps))
        reported = None  # [loss, *extra terms]
        n = xs.shape[0]
        keeps = None
        if self.config.model.stochastic_depth:  # drawn on the host: the same draws as the other backend
            keeps = self._tensor(layer_keep_scales(self.config.model, self.config.train.seed, step, self.rank,
                                                   *windows.shape[:2]))
        for a in range(n):  # gradient accumulation: sum, then divide once
            with parallel.grad_sync(self.wrapped, last=a == n - 1):  # ranks reduce gradients once per step
                with parallel.autocast(self.bf16):
                    objective, parts = self._loss(xs[a], ys[a], None if keeps is None else keeps[a])
                objective.backward()
            parts = [p.detach() for p in parts]
            reported = parts if reported is None else [r + p for r, p in zip(reported, parts)]
        with torch.no_grad():
            reported = [r / xs.shape[0] for r in reported]
            grads = {k: p.grad for k, p in self.params.items()}
            if xs.shape[0] > 1:  # x / 1 == x: no extra full pass over the gradients without accumulation
                torch._foreach_div_(list(grads.values()), xs.shape[0])  # in place: no second copy of every gradient
            gnorm = parallel.full(torch.sqrt(sum(torch.sum(g * g) for g in grads.values())))  # FSDP2: over all shards
            clip = self.config.train.grad_clip
            if clip:
                scale = torch.clamp(torch.full_like(gnorm, clip) / (gnorm + 1e-6), max=1.0)  # a true division, as MLX
                torch._foreach_mul_(list(grads.values()), scale)  # in place, as the division above
            weights = {k: p.detach() for k, p in self.params.items()}
            for p in self.params.values():  # `grads` holds the only reference: each is freed after its update
                p.grad = None
            self.opt.apply(weights, grads, scalars)  # in place; drops each gradient from `grads` once used
        if self.dynamic_lambda:  # evaluation between steps sees the lambda of the steps done
            self._set_lambda(quant_lambda(step + 1, self.config.ternary.warmup_steps))
        return (reported[0], gnorm, *reported[1:])

    def _set_lambda(self, lam: float) -> None:
        if hasattr(self, "_lambda"):
            self._lambda.fill_(lam)
        else:
            self.model.set_quant_lambda(lam)

    def fetch(self, handles: list) -> list[tuple[float, float]]:
        """Host sync: (loss, grad_norm, *terms) floats for the pending steps, in one transfer. The
        losses are means over all ranks (one all-reduce); the gradient norm is already global."""
        if not handles:
            return []
        stacked = torch.stack([torch.stack(list(h)) for h in handles])
        losses = [0] + list(range(2, stacked.shape[1]))
        stacked[:, losses] = parallel.mean_(stacked[:, losses].contiguous())
        flat = stacked.cpu().tolist()
        return [tuple(float(v) for v in row) for row in flat]

    def agree(self, flag: bool) -> bool:
        """The loop's decisions (stop, early stop, NaN) taken by every rank alike (SEEDS S12)."""
        return parallel.agree(flag)

    def numpy_weights(self) -> dict[str, np.ndarray]:
        return self.model.numpy_weights()

    def lazy_weights(self) -> dict[str, LazyTensor]:
        """numpy_weights, each tensor copied only when the checkpoint writer reaches it."""
        return {k: LazyTensor(tuple(v.shape), np.dtype(np.float32), lambda v=v: v.detach().float().cpu().numpy())
                for k, v in self.model.named_parameters()}

    def lazy_optimizer_state(self) -> dict[str, LazyTensor]:
        """numpy_optimizer_state, tensor by tensor as lazy_weights."""
        return {k: LazyTensor(tuple(v.shape), np.dtype(np.float32), lambda v=v: v.detach().float().cpu().numpy())
                for k, v in self.opt.state.items()}

    def numpy_optimizer_state(self) -> dict[str, np.ndarray]:
        """The whole state (FSDP2: gathered, a collective every rank calls)."""
        return parallel.gather_numpy(self.opt.state)

    def checkpoint_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(weights, optimizer state) on rank 0, which writes the checkpoint; None on the others.
        Under FSDP2 every rank takes part in each gather, tensor by tensor, and the other ranks
        drop each whole tensor at once: only the writer ever holds the whole state in host RAM."""
        if not parallel.sharded(self.params):  # whole tensors on every rank: only the writer copies them
            return super().checkpoint_tensors()
        keep = self.rank == 0
        state = parallel.gather_numpy(self.opt.state, keep)  # the same order on every rank
        weights = parallel.gather_numpy(self.params, keep)
        return (weights, state) if keep else None

    def ema_weights(self) -> dict[str, np.ndarray] | None:
        st = self.opt.state
        if not self.config.train.ema_decay:
            return None
        return parallel.gather_numpy({n: st[f"{n}.ema"] for n in self.opt.shapes})


def main(argv: list[str] | None = None) -> int:
    """The `train` command line (convert/train_args.py) on this backend, for callers in Python;
    `python -m ternary_cuda.train` runs it through convert.cli.train_module (see the top of this file)."""
    from convert.train_args import main as train_main
    return train_main(argv, "torch", prog="python -m ternary_cuda.train")

