"""Training in MLX (mirrors ternary_cuda/train.py). The loop itself is shared: shared/train/loop.py.

`Trainer` owns the model, the optimizer and one compiled step; `main` is
`python -m ternary_mlx.train` (also `ternary train --backend mlx`). Data parallel on N processes:
`mlx.launch --backend ring -n N -- python -m ternary_mlx.train ...` (see ternary_mlx/parallel.py).
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m ternary_mlx.train`: run from convert.cli, before the imports
    from convert.cli import train_module  # below (seconds), so a Ctrl-C during them exits 130 in one line
    raise SystemExit(train_module("mlx"))

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.data.batching import inputs_and_targets
from shared.spec.config import RunConfig, TrainConfig
from shared.train import host_memory
from shared.train.optim_rules import step_scalars
from shared.spec.params import parameter_specs
from shared.spec.safetensors_stream import LazyTensor
from shared.spec.ternary import quant_lambda
from shared.train.trainer_common import TrainerCommon
from ternary_mlx import checkpoint, parallel
from ternary_mlx.evaluate import evaluate, evaluate_ttt
from shared.spec.layer_drop import layer_keep_scales
from shared.train.loss_terms import extra_terms
from ternary_mlx.loss import chunked_loss, cross_entropy, distillation_loss, hidden_states, with_extra_terms
from ternary_mlx.model import Model
from ternary_mlx.optim import Optimizer


def _loss_function(model: Model, teacher: Model | None, t: TrainConfig, reports_terms: bool):
    """loss_fn(x, y, keep) for value_and_grad: the loss, or with extra terms (objective, loss, *terms)."""
    def chunked_loss_fn(x: mx.array, y: mx.array, keep: mx.array | None):
        """loss_fn through chunked_loss: never the whole micro-batch's logits (train.loss_chunk_tokens)."""
        h, moe_aux = hidden_states(model.model, x, keep, with_aux=bool(t.moe_aux_loss))
        th = None if teacher is None else mx.stop_gradient(teacher.model(x))
        loss, z_term = chunked_loss(model, h, y, t.loss_chunk_tokens, teacher, th, t.distill_alpha,
                                    t.distill_temperature)
        if not reports_terms:
            return loss
        objective, parts = with_extra_terms(loss, None, moe_aux, t, z_term=z_term)
        return (objective, *parts)

    def loss_fn(x: mx.array, y: mx.array, keep: mx.array | None):
        """The loss, or with extra terms (objective, loss, *terms): value_and_grad differentiates the first.
        keep (L, B): stochastic depth's factors for this micro-batch, or None."""
        if t.loss_chunk_tokens and x.size > t.loss_chunk_tokens:  # shapes are fixed when the step is traced
            return chunked_loss_fn(x, y, keep)
        logits, moe_aux = model(x, keep, with_aux=True) if t.moe_aux_loss else (model(x, keep), None)
        if teacher is None:
            loss = cross_entropy(logits, y)
        else:
            teacher_logits = mx.stop_gradient(teacher(x))
            loss = distillation_loss(logits, y, teacher_logits, t.distill_alpha, t.distill_temperature)
        if not reports_terms:
            return loss
        objective, parts = with_extra_terms(loss, logits, moe_aux, t)
        return (objective, *parts)

    return loss_fn


class Trainer(TrainerCommon):
    backend = "mlx"
    checkpoint = checkpoint
    evaluate_model = staticmethod(evaluate)
    evaluate_ttt_model = staticmethod(evaluate_ttt)

    def __init__(self, config: RunConfig, model: Model, optimizer_state: dict[str, np.ndarray] | None = None,
                 teacher: Model | None = None):
        self.config, self.model, self.teacher = config, model, teacher
        model.check_ids = False  # the loader validated every id once (S13); compiled code cannot read back
        model.model.checkpoint_layers = config.train.activation_checkpointing  # recompute each layer in the backward
        params = dict(tree_flatten(model.parameters()))
        # a large model on the host: memory is the constraint (shared/train/host_memory.py)
        self.update_one_by_one = host_memory.wanted(sum(v.size for v in params.values()), mx.default_device().type.name)
        if self.update_one_by_one:
            host_memory.map_large_blocks()  # freed blocks go back to the OS
        self.opt = Optimizer(config.train, parameter_specs(config.model))
        if optimizer_state is not None:
            self.opt.load_numpy_state(optimizer_state)
        elif config.train.ema_decay:
            self.opt.init_ema(params)
        # data parallel (parallel.setup() ran first): equal updates keep equal weights, so check the start
        self.group = parallel.group()
        self.rank = 0 if self.group is None else self.group.rank()  # TrainerCommon.save: rank 0 writes
        parallel.check_identical(params, self.group, "weights")
        parallel.check_identical(self.opt.state, self.group, "optimizer state")
        self.notes = parallel.notes(config.train, self.group)
        self.dynamic_lambda = config.ternary.enabled and config.ternary.warmup_steps > 0
        t = config.train
        if teacher is not None:  # frozen: outside value_and_grad, so no gradients; never saved
            teacher.check_ids = False
            teacher.freeze()
            if t.teacher_dtype == "bfloat16":  # half the teacher's memory; its logits are cast to float32
                teacher.set_dtype(mx.bfloat16)
        reports_terms = bool(extra_terms(t))  # train.z_loss, train.moe_aux_loss
        loss_fn = _loss_function(model, teacher, t, reports_terms)
        self._compile_steps(nn.value_and_grad(model, loss_fn), reports_terms)

    def _compile_steps(self, loss_and_grad, reports_terms: bool) -> None:
        """The compiled step (gradients, clip, optimizer update in one graph) and, for
        update_one_by_one, the gradients alone plus one compiled update per parameter."""
        model, clip = self.model, self.config.train.grad_clip

        def gradients(xs: mx.array, ys: mx.array, scalars: dict[str, mx.array]):
            """([loss, *extra terms], grad norm, gradients): the step before the clip."""
            if self.dynamic_lambda:
                model.set_quant_lambda(scalars["lam"])
            reported, grads = None, None  # [loss, *extra terms]
            keeps = scalars.get("layer_keep")  # (grad_accum, L, B) with model.stochastic_depth
            for a in range(xs.shape[0]):  # gradient accumulation: sum, then divide once
                out, ga = loss_and_grad(xs[a], ys[a], None if keeps is None else keeps[a])
                parts = list(out[1:]) if reports_terms else [out]
                ga = dict(tree_flatten(ga))
                reported = parts if reported is None else [r + p for r, p in zip(reported, parts)]
                grads = ga if grads is None else {k: grads[k] + ga[k] for k in grads}
            reported = [r / xs.shape[0] for r in reported]
            if xs.shape[0] > 1:  # x / 1 == x: no extra full pass over the gradients without accumulation
                grads = {k: g / xs.shape[0] for k, g in grads.items()}
            if self.group is not None:  # global means; one all_sum carries the losses and every gradient
                extra = {f"<loss{i}>": r.reshape(1) for i, r in enumerate(reported)}
                mean = parallel.all_mean({**grads, **extra}, self.group)
                reported = [mean.pop(f"<loss{i}>")[0] for i in range(len(reported))]
                grads = mean
            return reported, mx.sqrt(sum(mx.sum(g * g) for g in grads.values())), grads

        def clipped(g: mx.array, gnorm: mx.array) -> mx.array:
            return g * mx.minimum(1.0, clip / (gnorm + 1e-6)) if clip else g

        def step_fn(xs: mx.array, ys: mx.array, scalars: dict[str, mx.array]):
            reported, gnorm, grads = gradients(xs, ys, scalars)
            grads = {k: clipped(g, gnorm) for k, g in grads.items()}
            new = self.opt.apply(dict(tree_flatten(model.parameters())), grads, scalars)
            model.update(tree_unflatten(list(new.items())))
            return (reported[0], gnorm, *reported[1:])

        def gradients_fn(xs: mx.array, ys: mx.array, scalars: dict[str, mx.array]):
            reported, gnorm, grads = gradients(xs, ys, scalars)
            return (reported[0], gnorm, *reported[1:]), grads

        def update_fn(name: str, p: mx.array, g: mx.array, slots: dict, scalars: dict, gnorm: mx.array):
            return self.opt.update(name, p, clipped(g, gnorm), slots, scalars)

        self._state = [model.state, self.opt.state]
        if self.teacher is not None:  # an input of the compiled step, not a constant baked into it
            self._state.append(self.teacher.state)
        self._step = mx.compile(step_fn, inputs=self._state, outputs=self._state)
        self._gradients = mx.compile(gradients_fn, inputs=self._state, outputs=self._state)
        self._updates = {n: mx.compile(partial(update_fn, n)) for n in self.opt.shapes}

    def _step_one_by_one(self, xs: mx.array, ys: mx.array, scalars: dict[str, mx.array]) -> tuple:
        """update_one_by_one: the gradients first, then each parameter's update evaluated on its own,
        its old weight and slots and its gradient dropped before the next: the compiled step would hold
        every old and every new weight and slot at once (measured at Qwen3 width, 4 layers: all three
        copies, 0.75 GiB over 0.25 GiB of weights). The same compiled arithmetic, so the same bits."""
        out, grads = self._gradients(xs, ys, scalars)
        mx.eval(out, grads)
        params = dict(tree_flatten(self.model.parameters()))
        # smallest first: the largest (the embedding: old and new weight and slots at once, 6 copies) comes
        # when the other gradients are gone
        for name in sorted(grads, key=lambda k: grads[k].size):
            p = params.pop(name)  # then the model's reference is the old weight's last one
            new, slots = self._updates[name](p, grads.pop(name), self.opt.slots_of(name), scalars, out[1])
            mx.eval(new, slots)
            self.opt.state.update(slots)
            self.model.update(tree_unflatten([(name, new)]))
            del p, new, slots
        return out

    def step(self, windows: np.ndarray, step: int):
        """One optimizer step on (grad_accum, batch, seq_len + 1) windows; returns lazy (loss, grad_norm,
        *terms), the terms of shared.train.loss_terms.extra_terms (already evaluated with update_one_by_one)."""
        xs, ys = inputs_and_targets(windows.reshape(-1, windows.shape[-1]))
        shape = windows.shape[:2] + (windows.shape[-1] - 1,)
        scalars = {k: mx.array(v) for k, v in step_scalars(step, self.config.train).items()}
        if self.config.model.stochastic_depth:  # an input of the compiled step, drawn on the host
            scalars["layer_keep"] = mx.array(layer_keep_scales(self.config.model, self.config.train.seed, step,
                                                               self.rank, *windows.shape[:2]))
        lam = quant_lambda(step, self.config.ternary.warmup_steps)
        if self.dynamic_lambda:
            scalars["lam"] = mx.array(lam, mx.float32)
        step_inputs = (mx.array(xs.reshape(shape)), mx.array(ys.reshape(shape)), scalars)
        out = self._step_one_by_one(*step_inputs) if self.update_one_by_one else self._step(*step_inputs)
        if self.dynamic_lambda:  # no traced value left behind; evaluation sees the lambda of the steps done
            self.model.set_quant_lambda(quant_lambda(step + 1, self.config.ternary.warmup_steps))
        mx.async_eval(out, self._state)
        return out

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (the loop's stop decisions)."""
        return parallel.any_rank(flag, self.group)

    @staticmethod
    def fetch(handles: list) -> list[tuple[float, float]]:
        """Host sync: (loss, grad_norm, *terms) floats for the pending steps."""
        return [tuple(float(v.item()) for v in h) for h in handles]

    def numpy_weights(self) -> dict[str, np.ndarray]:
        return self.model.numpy_weights()

    def numpy_optimizer_state(self) -> dict[str, np.ndarray]:
        return self.opt.numpy_state()

    def lazy_weights(self) -> dict[str, LazyTensor]:
        """numpy_weights, each tensor copied only when the checkpoint writer reaches it."""
        flat = dict(tree_flatten(self.model.parameters()))
        return {k: LazyTensor(tuple(v.shape), np.dtype(np.float32), lambda v=v: np.array(v.astype(mx.float32)))
                for k, v in flat.items()}

    def lazy_optimizer_state(self) -> dict[str, LazyTensor]:
        """numpy_optimizer_state, tensor by tensor as lazy_weights."""
        return {k: LazyTensor(tuple(v.shape), np.dtype(np.float32), lambda v=v: np.array(v.astype(mx.float32)))
                for k, v in self.opt.state.items()}  # float32 slots, as torch's

    def ema_weights(self) -> dict[str, np.ndarray] | None:
        st = self.opt.state
        return {n: np.array(st[f"{n}.ema"]) for n in self.opt.shapes} if self.config.train.ema_decay else None


def main(argv: list[str] | None = None) -> int:
    """The `train` command line (convert/train_args.py) on this backend, for callers in Python;
    `python -m ternary_mlx.train` runs it through convert.cli.train_module (see the top of this file)."""
    from convert.train_args import main as train_main
    return train_main(argv, "mlx", prog="python -m ternary_mlx.train")

