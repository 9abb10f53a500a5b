"""The torch optimizer's batched (torch._foreach_*, bmm) update against the per-parameter formulas it
replaced, and the ternary projection's dequantized form against codes x scales."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.spec.params import parameter_specs
from shared.train.optim_rules import NS_COEFFS, lr_key, muon_scale, step_scalars, uses_muon, weight_decay_of
from ternary_cuda.layers import _grouped, dequantized_ternary, ternarize
from ternary_cuda.optim import Optimizer, newton_schulz_batched
from tests.variants import tiny_config


def ns_one(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Muon's quintic Newton-Schulz on one matrix, as written in the papers (one op per term)."""
    a, b, c = NS_COEFFS
    x = g / (torch.sqrt(torch.sum(g * g)) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * (A @ A)) @ x
    return x.T if tall else x


def reference_update(opt: Optimizer, params, grads, s, state):
    """One step of AdamW / Muon / EMA per parameter, out of place (the loop apply() replaced)."""
    t, out = opt.t, {}
    for name, p in params.items():
        g, spec = grads[name], opt.specs[name]
        decay, lr = weight_decay_of(spec, t), s[lr_key(spec, t)]
        if uses_muon(spec, t):
            mu = s["momentum"]
            buf = mu * state[f"{name}.momentum"] + s["one_minus_momentum"] * g
            state[f"{name}.momentum"] = buf
            update = ns_one(g + mu * (buf - g), t.muon_ns_steps) * muon_scale(spec.shape)
        else:
            m = t.beta1 * state[f"{name}.exp_avg"] + (1 - t.beta1) * g
            v = t.beta2 * state[f"{name}.exp_avg_sq"] + (1 - t.beta2) * (g * g)
            state[f"{name}.exp_avg"], state[f"{name}.exp_avg_sq"] = m, v
            update = (m / s["bc1"]) / (torch.sqrt(v / s["bc2"]) + t.adam_eps)
        if decay:
            p = p * (1 - lr * decay)
        out[name] = p - lr * update
        if f"{name}.ema" in state:
            state[f"{name}.ema"] = s["ema_decay"] * state[f"{name}.ema"] + s["one_minus_ema_decay"] * out[name]
    return out


@pytest.mark.parametrize("whole_lists", [False, True])  # True: CUDA's grouping, tested on the CPU
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_batched_update_equals_the_per_parameter_formulas(optimizer, whole_lists, monkeypatch):
    if whole_lists:
        monkeypatch.setattr(Optimizer, "_lists", staticmethod(lambda names, cpu: [names] if names else []))
    cfg = tiny_config(train=dict(optimizer=optimizer, weight_decay=0.1, ema_decay=0.9, lr_scalar=0.02,
                                 muon_ns_steps=3, steps=10))
    specs = parameter_specs(cfg.model)
    rng = np.random.default_rng(0)
    params = {n: torch.from_numpy(rng.standard_normal(sp.shape).astype(np.float32)) for n, sp in specs.items()}
    opt = Optimizer(cfg.train, specs)
    opt.init_ema(params)
    state = {k: v.clone() for k, v in opt.state.items()}
    ref = {k: v.clone() for k, v in params.items()}
    mine = {k: v.clone() for k, v in params.items()}
    for step in range(3):
        grads = {n: torch.from_numpy(rng.standard_normal(sp.shape).astype(np.float32)) for n, sp in specs.items()}
        s = {k: torch.tensor(v) for k, v in step_scalars(step, cfg.train).items()}
        ref = reference_update(opt, ref, grads, s, state)
        returned = opt.apply(mine, grads, s)
        assert all(returned[k] is mine[k] for k in mine)  # in place
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], rtol=1e-5, atol=1e-6)
    for k in state:
        torch.testing.assert_close(opt.state[k], state[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(mine[k], params[k]) for k in mine)  # it moved


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    g = torch.randn(3, 12, 40, generator=torch.Generator().manual_seed(1))
    for stack in (g, g.transpose(1, 2)):  # wide and tall
        got = newton_schulz_batched(stack, 5)
        for i in range(stack.shape[0]):
            torch.testing.assert_close(got[i], ns_one(stack[i], 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [0, 4, 16])
def test_dequantized_ternary_is_codes_times_scales_bit_for_bit(group):
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    w[0, :4] = torch.tensor([0.5, -0.5, 1.5, 0.0]) * w[0].abs().mean()  # values at rounding ties too
    codes, s = ternarize(w, group)
    expected = (_grouped(codes.float(), group) * s[..., None]).reshape(w.shape)
    got = dequantized_ternary(w, group)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # bits: +0.0 is not -0.0
