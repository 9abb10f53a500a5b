"""Training in PyTorch (mirrors ternary_mlx/train.py). The loop itself is shared: shared/loop.py.

`Trainer` owns the model, the optimizer and one step function; `main` is
`python -m ternary_cuda.train` (also `ternary train --backend torch`, and under torchrun).
"""
from __future__ import annotations

import numpy as np
import torch

from shared.batching import inputs_and_targets
from shared.config import RunConfig
from shared.optim_rules import step_scalars
from shared.ternary import quant_lambda
from shared.trainer_common import TrainerCommon
from ternary_cuda import checkpoint
from ternary_cuda.evaluate import evaluate
from ternary_cuda.loss import cross_entropy, distillation_loss
from ternary_cuda.model import Model
from ternary_cuda.optim import Optimizer


class Trainer(TrainerCommon):
    backend = "torch"
    checkpoint = checkpoint
    evaluate_model = staticmethod(evaluate)

    def __init__(self, config: RunConfig, model: Model, optimizer_state: dict[str, np.ndarray] | None = None,
                 teacher: Model | None = None):
        self.config, self.model, self.teacher = config, model, teacher
        model.check_ids = False  # the loader validated every id once (S13); no device sync per step
        self.device = next(model.parameters()).device
        self.params = dict(model.named_parameters())
        self.opt = Optimizer(config.train, {k: tuple(v.shape) for k, v in self.params.items()}, self.device)
        if optimizer_state is not None:
            self.opt.load_numpy_state(optimizer_state)
        elif config.train.ema_decay:
            self.opt.init_ema(self.params)
        self.dynamic_lambda = config.ternary.enabled and config.ternary.warmup_steps > 0
        if teacher is not None:  # frozen: no gradients, never saved
            teacher.check_ids = False
            teacher.requires_grad_(False)
            teacher.eval()

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return cross_entropy(self.model(x), y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        t = self.config.train
        return distillation_loss(self.model(x), y, teacher_logits, t.distill_alpha, t.distill_temperature)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def step(self, windows: np.ndarray, step: int):
        """One optimizer step on (grad_accum, batch, seq_len + 1) windows; returns lazy (loss, grad_norm)."""
        xs, ys = inputs_and_targets(windows.reshape(-1, windows.shape[-1]))
        shape = windows.shape[:2] + (windows.shape[-1] - 1,)
        xs, ys = self._tensor(xs.reshape(shape).astype(np.int64)), self._tensor(ys.reshape(shape).astype(np.int64))
        scalars = {k: self._tensor(v) for k, v in step_scalars(step, self.config.train).items()}
        if self.dynamic_lambda:
            self.model.set_quant_lambda(quant_lambda(step, self.config.ternary.warmup_steps))
        loss = None
        for a in range(xs.shape[0]):  # gradient accumulation: sum, then divide once
            la = self._loss(xs[a], ys[a])
            la.backward()
            loss = la.detach() if loss is None else loss + la.detach()
        with torch.no_grad():
            loss = loss / xs.shape[0]
            grads = {k: p.grad for k, p in self.params.items()}
            if xs.shape[0] > 1:  # x / 1 == x: no extra full pass over the gradients without accumulation
                grads = {k: g / xs.shape[0] for k, g in grads.items()}
            gnorm = torch.sqrt(sum(torch.sum(g * g) for g in grads.values()))
            clip = self.config.train.grad_clip
            if clip:
                scale = torch.clamp(torch.full_like(gnorm, clip) / (gnorm + 1e-6), max=1.0)  # a true division, as MLX
                grads = {k: g * scale for k, g in grads.items()}
            new = self.opt.apply({k: p.detach() for k, p in self.params.items()}, grads, scalars)
            for k, p in self.params.items():
                p.copy_(new[k])
                p.grad = None
        if self.dynamic_lambda:  # evaluation between steps sees the lambda of the steps done
            self.model.set_quant_lambda(quant_lambda(step + 1, self.config.ternary.warmup_steps))
        return loss, gnorm

    @staticmethod
    def fetch(handles: list) -> list[tuple[float, float]]:
        """Host sync: (loss, grad_norm) floats for the pending steps, in one transfer."""
        if not handles:
            return []
        flat = torch.stack([torch.stack([loss, gn]) for loss, gn in handles]).cpu().tolist()
        return [(float(a), float(b)) for a, b in flat]

    def numpy_weights(self) -> dict[str, np.ndarray]:
        return self.model.numpy_weights()

    def numpy_optimizer_state(self) -> dict[str, np.ndarray]:
        return self.opt.numpy_state()

    def ema_weights(self) -> dict[str, np.ndarray] | None:
        st = self.opt.state
        if not self.config.train.ema_decay:
            return None
        return {n: st[f"{n}.ema"].detach().float().cpu().numpy().copy() for n in self.opt.shapes}


def main(argv: list[str] | None = None) -> int:
    from shared.runner import Backend, main as run_main
    return run_main(argv, Backend("torch", Model, Trainer, torch.__version__), prog="python -m ternary_cuda.train")


if __name__ == "__main__":
    raise SystemExit(main())
