"""AdamW and Muon in MLX (mirrors ternary_cuda/optim.py; the same math, in the same order).

Written out by hand rather than taken from mlx.optimizers / torch.optim because those two differ
(MLX's AdamW has no bias correction by default; torch's fused paths reorder operations), and the
first training steps must agree between the backends. State uses canonical names:
`<param>.exp_avg`, `<param>.exp_avg_sq` (AdamW), `<param>.momentum` (Muon), `<param>.ema`.
Per-step scalars (learning rates, bias corrections) are computed on the host by
`shared.train.optim_rules.step_scalars` and passed in as arrays, so a compiled step never retraces.
The moments are stored at train.optimizer_state_dtype (optim_rules.slot_dtype): a bfloat16 slot is
read as float32, updated in float32 and rounded to nearest even when stored; this step's update
uses the float32 value (torch's the same), so both backends give the same bits.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from shared.spec.config import TrainConfig
from shared.train.optim_rules import (NS_COEFFS, lr_key, muon_scale, slot_dtype, slots_for, uses_muon,
                                      weight_decay_of)
from shared.spec.params import ParamSpec

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def newton_schulz(g: mx.array, steps: int = 5) -> mx.array:
    """Approximate orthogonalisation of a 2-D gradient (Muon's quintic iteration), float32."""
    a, b, c = NS_COEFFS
    x = g.astype(mx.float32)
    x = x / (mx.sqrt(mx.sum(x * x)) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.T if tall else x


class Optimizer:
    """AdamW for every parameter, or Muon for block matrices with AdamW for the rest."""

    # No `device`, `like` or layout hooks (torch's full / shard_like / from_host): MLX data parallel
    # only replicates (train.parallel = fsdp2 is refused), so every slot is whole on every rank and
    # those arguments could only ever be identities here.
    def __init__(self, t: TrainConfig, specs: dict[str, ParamSpec]):
        self.t = t
        self.specs = specs
        self.shapes = {n: s.shape for n, s in specs.items()}
        self.state: dict[str, mx.array] = {}
        for name, shape in self.shapes.items():
            for slot in slots_for(specs[name], t):
                self.state[f"{name}.{slot}"] = mx.zeros(shape, DTYPES[slot_dtype(slot, t)])

    def init_ema(self, params: dict[str, mx.array]) -> None:
        for name in self.shapes:
            self.state[f"{name}.ema"] = mx.array(params[name])

    def apply(self, params: dict[str, mx.array], grads: dict[str, mx.array],
              s: dict[str, mx.array]) -> dict[str, mx.array]:
        """One update; `s` holds shared.train.optim_rules.step_scalars as scalar arrays: lr_<group>
        (each parameter's rate by its spec's group; optim_rules.lr_key), momentum and one_minus_momentum
        (Muon), bc1, bc2, and with EMA ema_decay and one_minus_ema_decay (0 and 1 before train.ema_start_frac)."""
        out = {}
        for name, p in params.items():
            out[name], slots = self.update(name, p, grads[name], self.slots_of(name), s)
            self.state.update(slots)
        return out

    def slots_of(self, name: str) -> dict[str, mx.array]:
        """The state entries of one parameter (`<name>.<slot>`)."""
        return {f"{name}.{slot}": self.state[f"{name}.{slot}"] for slot in slots_for(self.specs[name], self.t)}

    def update(self, name: str, p: mx.array, g: mx.array, slots: dict[str, mx.array],
               s: dict[str, mx.array]) -> tuple[mx.array, dict[str, mx.array]]:
        """(new parameter, its new slots) of one parameter: a pure function of its arguments, so that
        a trainer can also update (and evaluate) the parameters one at a time (Trainer.step)."""
        t, st = self.t, dict(slots)
        spec = self.specs[name]
        decay, lr = weight_decay_of(spec, t), s[lr_key(spec, t)]
        if uses_muon(spec, t):
            mu = s["momentum"]
            buf = mu * _read(st[f"{name}.momentum"]) + s["one_minus_momentum"] * g
            _store(st, f"{name}.momentum", buf)
            update = newton_schulz(g + mu * (buf - g), t.muon_ns_steps) * muon_scale(spec.shape)
        else:
            m = t.beta1 * _read(st[f"{name}.exp_avg"]) + (1 - t.beta1) * g
            v = t.beta2 * _read(st[f"{name}.exp_avg_sq"]) + (1 - t.beta2) * (g * g)
            _store(st, f"{name}.exp_avg", m)
            _store(st, f"{name}.exp_avg_sq", v)
            update = (m / s["bc1"]) / (mx.sqrt(v / s["bc2"]) + t.adam_eps)
        if decay:
            p = p * (1 - lr * decay)
        p = p - lr * update
        if f"{name}.ema" in st:
            st[f"{name}.ema"] = s["ema_decay"] * st[f"{name}.ema"] + s["one_minus_ema_decay"] * p
        return p, st

    def numpy_state(self) -> dict[str, np.ndarray]:
        """Every slot as float32, as torch's (a bfloat16 slot widened: exact)."""
        return {k: np.array(v.astype(mx.float32)) for k, v in self.state.items()}

    def load_numpy_state(self, arrays: dict[str, np.ndarray]) -> None:
        from shared.spec.checkpoint import check_tensor_set
        check_tensor_set({k: tuple(v.shape) for k, v in self.state.items()},
                         {k: tuple(v.shape) for k, v in arrays.items()}, "optimizer state")
        for k, v in arrays.items():  # float32 on disk; to each slot's dtype (a bfloat16 one: to nearest even)
            self.state[k] = mx.array(np.asarray(v, np.float32)).astype(self.state[k].dtype)


def _read(slot: mx.array) -> mx.array:
    """A slot as float32, the dtype every update computes in (a float32 slot as it is)."""
    return slot if slot.dtype == mx.float32 else slot.astype(mx.float32)


def _store(state: dict[str, mx.array], key: str, value: mx.array) -> None:
    """The float32 `value` into the slot `key`, at the slot's dtype (bfloat16: rounded to nearest even)."""
    dtype = state[key].dtype
    state[key] = value if dtype == mx.float32 else value.astype(dtype)
