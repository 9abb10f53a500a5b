"""AdamW and Muon in PyTorch (mirrors ternary_mlx/optim.py; the same math, in the same order).

Written out by hand rather than taken from torch.optim / mlx.optimizers because those two differ
(MLX's AdamW has no bias correction by default; torch's fused paths reorder operations), and the
first training steps must agree between the backends. State uses canonical names:
`<param>.exp_avg`, `<param>.exp_avg_sq` (AdamW), `<param>.momentum` (Muon), `<param>.ema`.
Per-step scalars (learning rates, bias corrections) are computed on the host by
`shared.train.optim_rules.step_scalars` and passed in as tensors, so a compiled step never recompiles.
The moments are stored at train.optimizer_state_dtype (optim_rules.slot_dtype): a bfloat16 slot is
read into a float32 copy, updated in float32 and copied back (rounded to nearest even); this step's
update uses the float32 value (ternary_mlx's the same), so both backends give the same bits.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from shared.spec.config import TrainConfig
from shared.train.optim_rules import (NS_COEFFS, lr_key, muon_scale, slot_dtype, slots_for, uses_muon,
                                      weight_decay_of)
from shared.spec.params import ParamSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ELEMENTWISE_BLOCK = 1 << 22  # CPU: AdamW of a larger parameter runs over flat blocks of this many elements


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonalisation of a 2-D gradient (Muon's quintic iteration), float32."""
    return newton_schulz_batched(g[None], steps)[0]


def newton_schulz_batched(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """newton_schulz of each matrix of a (k, m, n) stack at once, float32: the quintic iteration
    X <- a X + (b A + c A @ A) X, A = X X^T, written as two baddbmm calls (no elementwise passes of
    their own, no temporaries for b A, c A^2, a X) and one bmm per step; same math as ternary_mlx's
    newton_schulz, float rounding aside."""
    a, b, c = NS_COEFFS
    x = g.float()
    x = x / (torch.sqrt(torch.sum(x * x, dim=(1, 2), keepdim=True)) + 1e-7)
    tall = x.shape[1] > x.shape[2]
    if tall:
        x = x.transpose(1, 2)
    for _ in range(steps):
        A = torch.bmm(x, x.transpose(1, 2))
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A A
        x = torch.baddbmm(x, B, x, beta=a)  # a X + B X
    return x.transpose(1, 2) if tall else x


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
        self.sharded = like is not None  # the trainer passes `like` for FSDP2 shards only
        for name, shape in self.shapes.items():
            for slot in slots_for(specs[name], t):
                dtype = DTYPES[slot_dtype(slot, t)]
                self.state[f"{name}.{slot}"] = (
                    torch.zeros(shape, dtype=dtype, device=device) if like is None
                    else torch.zeros_like(like[name].detach(), dtype=dtype))

    def init_ema(self, params: dict[str, torch.Tensor]) -> None:
        for name in self.shapes:
            self.state[f"{name}.ema"] = params[name].detach().clone()

    @torch.no_grad()
    def apply(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
              s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update, in place: `params` (detached views of the parameters) and the state slots are
        overwritten and `params` is returned (ternary_mlx's apply returns new arrays). `s` holds
        shared.train.optim_rules.step_scalars as scalar tensors: lr_<group> (each parameter's rate by
        its spec's group; optim_rules.lr_key), momentum and one_minus_momentum (Muon), bc1, bc2, and
        with EMA ema_decay and one_minus_ema_decay (0 and 1 before train.ema_start_frac).
        Parameters that share (optimizer, rate, decay) are updated together with torch._foreach_*
        ops, one call per operation (see _lists for the CPU); Muon's matrices of one shape go through
        one batched Newton-Schulz. Each gradient is dropped from `grads` once its parameter is updated,
        so a caller that holds no other reference frees it there (at Qwen3-0.6B: never all gradients
        and the step's temporaries at once)."""
        cpu = next(iter(params.values())).device.type == "cpu"
        # a lower train.optimizer_state_dtype updates from float32 copies of the moments: on CUDA too one
        # parameter at a time (large ones in blocks, but not FSDP2's DTensor shards), else the copies of
        # every moment would exist at once, more memory than the lower dtype saves
        split = cpu or self.t.optimizer_state_dtype != "float32"
        blocks = cpu or (split and not self.sharded)
        for (muon, lr_name, decay), names in self._buckets(params).items():
            for part in ([names] if muon else self._lists(names, split)):
                if blocks and not muon and len(part) == 1 and params[part[0]].numel() > ELEMENTWISE_BLOCK:
                    self._adamw_in_blocks(part[0], s[lr_name], decay, params, grads, s)
                else:
                    self._update(part, muon, s[lr_name], decay, params, grads, s)
                for n in part:
                    del grads[n]
        for part in self._lists([n for n in params if f"{n}.ema" in self.state], cpu):
            slots = [self.state[f"{n}.ema"] for n in part]
            torch._foreach_mul_(slots, s["ema_decay"])
            torch._foreach_add_(slots, torch._foreach_mul([params[n] for n in part], s["one_minus_ema_decay"]))
        return params

    @staticmethod
    def _lists(names: list[str], cpu: bool) -> list[list[str]]:
        """The foreach lists of an elementwise update: all of `names` at once (CUDA: one launch per
        operation), or one parameter at a time on the CPU (`cpu`; apply passes it on CUDA too with a
        lower train.optimizer_state_dtype), where a foreach op is a loop over its
        tensors: a whole list would stream every tensor through the cache once per operation, one
        parameter keeps its working set in cache (AdamW at the bench shape: 35 ms per step as one
        list, 21 ms one parameter at a time, 30 ms before, out of place)."""
        return [[n] for n in names] if cpu else ([names] if names else [])

    def _adamw_in_blocks(self, name: str, lr: torch.Tensor, decay: float, params, grads, s) -> None:
        """AdamW of one large parameter (a 151,936-row embedding) over flat blocks of ELEMENTWISE_BLOCK
        elements: views of the parameter, its gradient and slots, so that the update's temporaries
        are one block's, not several copies of the parameter. Elementwise, so the same bits."""
        p, g = params[name].view(-1), grads[name].reshape(-1)
        slots = (f"{name}.exp_avg", f"{name}.exp_avg_sq")
        for a in range(0, p.numel(), ELEMENTWISE_BLOCK):
            block = slice(a, a + ELEMENTWISE_BLOCK)
            views = {k: self.state[k].view(-1)[block] for k in slots}
            self._update([name], False, lr, decay, {name: p[block]}, {name: g[block]}, s, views)

    def _update(self, names: list[str], muon: bool, lr: torch.Tensor, decay: float, params, grads, s,
                slots: dict[str, torch.Tensor] | None = None) -> None:
        """`slots`: views standing in for self.state's AdamW slots (_adamw_in_blocks)."""
        ps = [params[n] for n in names]
        updates = (self._muon_updates(names, ps, grads, s) if muon
                   else self._adamw_updates(names, grads, s, slots or self.state))
        if decay:
            torch._foreach_mul_(ps, 1 - lr * decay)  # p * (1 - lr * decay)
        torch._foreach_mul_(updates, lr)
        torch._foreach_sub_(ps, updates)  # p - lr * update

    def _buckets(self, params: dict[str, torch.Tensor]) -> dict[tuple, list[str]]:
        """(uses Muon, lr key, weight decay) -> the names of `params` updated alike, in order."""
        out: dict[tuple, list[str]] = {}
        for name in params:
            spec = self.specs[name]
            key = (uses_muon(spec, self.t), lr_key(spec, self.t), weight_decay_of(spec, self.t))
            out.setdefault(key, []).append(name)
        return out

    def _adamw_updates(self, names: list[str], grads: dict[str, torch.Tensor],
                       s: dict[str, torch.Tensor], st: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (slots of `st` in place); (m / bc1) / (sqrt(v / bc2)
        + eps), each product and sum rounded as written (no fused multiply-adds), as ternary_mlx's AdamW."""
        t = self.t
        g = [grads[n] for n in names]
        m_slots, v_slots = [st[f"{n}.exp_avg"] for n in names], [st[f"{n}.exp_avg_sq"] for n in names]
        m, v = _float32(m_slots), _float32(v_slots)
        torch._foreach_mul_(m, t.beta1)
        torch._foreach_add_(m, torch._foreach_mul(g, 1 - t.beta1))
        g2 = torch._foreach_mul(g, g)
        torch._foreach_mul_(g2, 1 - t.beta2)
        torch._foreach_mul_(v, t.beta2)
        torch._foreach_add_(v, g2)
        _store(m_slots, m)
        _store(v_slots, v)
        denom = torch._foreach_div(v, s["bc2"])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, t.adam_eps)
        update = torch._foreach_div(m, s["bc1"])
        torch._foreach_div_(update, denom)
        return update

    def _muon_updates(self, names: list[str], ps: list[torch.Tensor], grads: dict[str, torch.Tensor],
                      s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """buf = mu buf + (1 - mu) g (in place); orthogonalised g + mu (buf - g), times muon_scale, laid
        out as each parameter (FSDP2: the whole matrix in, this rank's rows out)."""
        mu, st = s["momentum"], self.state
        g = [grads[n] for n in names]
        slots = [st[f"{n}.momentum"] for n in names]
        buf = _float32(slots)
        torch._foreach_mul_(buf, mu)
        torch._foreach_add_(buf, torch._foreach_mul(g, s["one_minus_momentum"]))
        _store(slots, buf)
        nesterov = torch._foreach_sub(buf, g)
        torch._foreach_mul_(nesterov, mu)
        torch._foreach_add_(nesterov, g)  # g + mu (buf - g)
        whole = [self.full(x) for x in nesterov]
        by_shape: dict[tuple, list[int]] = {}
        for i, w in enumerate(whole):
            by_shape.setdefault(tuple(w.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(names)
        for shape, idx in by_shape.items():
            ortho = newton_schulz_batched(torch.stack([whole[i] for i in idx]), self.t.muon_ns_steps)
            ortho = ortho * muon_scale(shape)
            for j, i in enumerate(idx):
                out[i] = self.shard_like(ortho[j], ps[i])
        return out

    def numpy_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().float().cpu().numpy().copy() for k, v in self.state.items()}  # no aliasing

    def load_numpy_state(self, arrays: dict[str, np.ndarray]) -> None:
        from shared.spec.checkpoint import check_tensor_set
        check_tensor_set({k: tuple(v.shape) for k, v in self.state.items()},
                         {k: tuple(v.shape) for k, v in arrays.items()}, "optimizer state")
        for k in self.state:  # one tensor at a time: FSDP2 never holds a whole slot beside the caller's array
            # float32 on disk; to the slot's dtype (a bfloat16 one: rounded to nearest even)
            self.state[k] = self.from_host(arrays[k], self.state[k]).to(self.state[k].dtype)


def _float32(slots: list[torch.Tensor]) -> list[torch.Tensor]:
    """The slots as float32 tensors to update in place: a float32 slot itself, a bfloat16 one's float32 copy."""
    return [x if x.dtype == torch.float32 else x.float() for x in slots]


def _store(slots: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Copy the updated float32 `values` (_float32's) into slots of a lower dtype, rounded to nearest
    even; a float32 slot was updated in place already. One copy_ per tensor: DTensor (FSDP2) has no
    _foreach_copy_."""
    for slot, value in zip(slots, values):
        if slot is not value:
            slot.copy_(value)
