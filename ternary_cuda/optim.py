"""AdamW and Muon in PyTorch (mirrors ternary_mlx/optim.py; the same math, in the same order).

Written out by hand rather than taken from torch.optim / mlx.optimizers because those two differ
(MLX's AdamW has no bias correction by default; torch's fused paths reorder operations), and the
first training steps must agree between the backends. State uses canonical names:
`<param>.exp_avg`, `<param>.exp_avg_sq` (AdamW), `<param>.momentum` (Muon), `<param>.ema`.
Per-step scalars (learning rates, bias corrections) are computed on the host by
`shared.train.optim_rules.step_scalars` and passed in as tensors, so a compiled step never recompiles.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from shared.spec.config import TrainConfig
from shared.train.optim_rules import NS_COEFFS, lr_key, muon_scale, slots_for, uses_muon, weight_decay_of
from shared.spec.params import ParamSpec


IN_PLACE_BLOCK = 1 << 22  # elements per block of Optimizer.apply_in_place (16 MiB of float32)


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonalisation of a 2-D gradient (Muon's quintic iteration), float32."""
    a, b, c = NS_COEFFS
    x = g.float()
    x = x / (torch.sqrt(torch.sum(x * x)) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.T if tall else x


def _host_copy(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(np.asarray(a, np.float32), device=like.device)


class Optimizer:
    """AdamW for every parameter, or Muon for block matrices with AdamW for the rest."""

    def __init__(self, t: TrainConfig, specs: dict[str, ParamSpec], device: torch.device | str = "cpu",
                 like: dict[str, torch.Tensor] | None = None, *,
                 full: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                 shard_like: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda x, like: x,
                 from_host: Callable[[np.ndarray, torch.Tensor], torch.Tensor] = _host_copy):
        """State slots are zeros of the specs' shapes on `device`, or, given `like` (the parameters), laid out
        as each parameter: under FSDP2 a DTensor holding only this rank's rows, so no rank ever
        allocates a whole slot (AdamW at 7B parameters: 56 GB of float32 state).

        The layout hooks (ternary_cuda/parallel.py passes its own; the defaults are one process's):
        Muon orthogonalises whole matrices, but under FSDP2 parameters, gradients and state are
        row shards, so `full` gathers the whole matrix (the same on every rank) and
        `shard_like(x, p)` takes this rank's rows of the update back. `from_host(a, slot)` lays
        out a whole host array (a checkpoint's) as a slot; FSDP2 copies only this rank's rows."""
        self.t = t
        self.specs = specs
        self.shapes = {n: s.shape for n, s in specs.items()}
        self.state: dict[str, torch.Tensor] = {}
        self.full, self.shard_like, self.from_host = full, shard_like, from_host
        for name, shape in self.shapes.items():
            for slot in slots_for(specs[name], t):
                self.state[f"{name}.{slot}"] = (
                    torch.zeros(shape, dtype=torch.float32, device=device) if like is None
                    else torch.zeros_like(like[name].detach(), dtype=torch.float32))

    def init_ema(self, params: dict[str, torch.Tensor]) -> None:
        for name in self.shapes:
            self.state[f"{name}.ema"] = params[name].detach().clone()

    @torch.no_grad()
    def apply(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
              s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update; `s` holds shared.train.optim_rules.step_scalars as scalar tensors: lr_<group>
        (each parameter's rate by its spec's group; optim_rules.lr_key), momentum and one_minus_momentum
        (Muon), bc1, bc2, and with EMA ema_decay and one_minus_ema_decay (0 and 1 before train.ema_start_frac)."""
        return {name: self._updated(name, p, grads[name], s, self.state) for name, p in params.items()}

    @torch.no_grad()
    def apply_in_place(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                       s: dict[str, torch.Tensor]) -> None:
        """apply's values written into `params` and the slots (one process: no DTensors), bounding the
        step's transient memory: parameter by parameter, each gradient popped from `grads` (the caller
        holds no other reference, so it is freed after its update), and every elementwise update
        (AdamW) over flat blocks of IN_PLACE_BLOCK elements, so that a 151,936-row embedding's
        temporaries are a block's, not several copies of the embedding. Elementwise: bit for bit apply."""
        for name in list(params):
            p, g = params[name], grads.pop(name)
            if uses_muon(self.specs[name], self.t) or p.numel() <= IN_PLACE_BLOCK:  # Muon: whole matrices
                p.copy_(self._updated(name, p, g, s, self.state))
                continue
            keys = [k for k in self.state if k.rsplit(".", 1)[0] == name]
            flat_p, flat_g = p.view(-1), g.reshape(-1)
            for a in range(0, flat_p.numel(), IN_PLACE_BLOCK):
                block = slice(a, a + IN_PLACE_BLOCK)
                views = {k: self.state[k].view(-1)[block] for k in keys}
                flat_p[block].copy_(self._updated(name, flat_p[block], flat_g[block], s, views))
                for k in keys:  # _updated rebinds each slot to its new values
                    self.state[k].view(-1)[block].copy_(views[k])

    def _updated(self, name: str, p: torch.Tensor, g: torch.Tensor, s: dict[str, torch.Tensor],
                 st: dict[str, torch.Tensor]) -> torch.Tensor:
        """The new value of parameter `name` (or a flat block of it: AdamW and EMA are elementwise);
        its slots in `st` are rebound to their new values."""
        t = self.t
        spec = self.specs[name]
        decay, lr = weight_decay_of(spec, t), s[lr_key(spec, t)]
        if uses_muon(spec, t):
            mu = s["momentum"]
            buf = mu * st[f"{name}.momentum"] + s["one_minus_momentum"] * g
            st[f"{name}.momentum"] = buf
            whole = self.full(g + mu * (buf - g))
            update = self.shard_like(newton_schulz(whole, t.muon_ns_steps) * muon_scale(spec.shape), p)
        else:
            m = t.beta1 * st[f"{name}.exp_avg"] + (1 - t.beta1) * g
            v = t.beta2 * st[f"{name}.exp_avg_sq"] + (1 - t.beta2) * (g * g)
            st[f"{name}.exp_avg"], st[f"{name}.exp_avg_sq"] = m, v
            update = (m / s["bc1"]) / (torch.sqrt(v / s["bc2"]) + t.adam_eps)
        if decay:
            p = p * (1 - lr * decay)
        out = p - lr * update
        if f"{name}.ema" in st:
            st[f"{name}.ema"] = s["ema_decay"] * st[f"{name}.ema"] + s["one_minus_ema_decay"] * out
        return out

    def numpy_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().float().cpu().numpy().copy() for k, v in self.state.items()}  # no aliasing

    def load_numpy_state(self, arrays: dict[str, np.ndarray]) -> None:
        from shared.spec.checkpoint import check_tensor_set
        check_tensor_set({k: tuple(v.shape) for k, v in self.state.items()},
                         {k: tuple(v.shape) for k, v in arrays.items()}, "optimizer state")
        for k in self.state:  # one tensor at a time: FSDP2 never holds a whole slot beside the caller's array
            self.state[k] = self.from_host(arrays[k], self.state[k])
