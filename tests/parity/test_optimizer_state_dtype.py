"""train.optimizer_state_dtype = "bfloat16": AdamW's moments and Muon's momentum stored in bfloat16,
each update computed in float32 and rounded to nearest even. Both backends (and every torch path:
one parameter at a time, flat blocks, one foreach list as on CUDA) give the same weights, slots and
ternary codes bit for bit, equal to a NumPy transcription; the slots really are bfloat16; the
budget counts them at 2 bytes; a checkpoint resumes bit for bit; a bad value is refused."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from shared.spec import checkpoint as fmt
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import parameter_specs, ternary_parameters
from shared.train.memory_budget import memory_budget
from shared.train.optim_rules import lr_key, step_scalars, uses_muon, weight_decay_of
from shared.train.promote import optimizer_state_bytes
from ternary_cuda import layers as TL
from ternary_cuda import optim as topt
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx import layers as ML
from ternary_mlx import optim as mopt
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer
from tests.variants import tiny_config, variant_config

VARIANT = "gqa-tied-silu-G64"
STEPS = 3
BACKENDS = {"mlx": (MLXModel, MLXTrainer), "torch": (TorchModel, TorchTrainer)}


def _cfg(optimizer: str, dtype: str = "bfloat16", **train):
    train = {**dict(optimizer=optimizer, weight_decay=0.1, ema_decay=0.9, lr=0.05, optimizer_state_dtype=dtype), **train}
    return variant_config(VARIANT, train=train)


def _start(cfg):
    """Latent weights and STEPS sets of gradients, float32 NumPy; the gradients are large enough that
    their squares span many bfloat16 roundings."""
    weights = {k: p.detach().numpy().copy() for k, p in TorchModel(cfg, seed=2).named_parameters()}
    rng = np.random.default_rng(0)
    grads = [{k: (rng.standard_normal(v.shape) * 10.0 ** rng.uniform(-3, 1, v.shape)).astype(np.float32)
              for k, v in weights.items()} for _ in range(STEPS)]
    return weights, grads


def _run_mlx(cfg, weights, grads, compiled: bool = False):
    """compiled: apply inside mx.compile with the state as its input and output, as the trainer's step."""
    opt = mopt.Optimizer(cfg.train, parameter_specs(cfg.model))
    params = {k: mx.array(v) for k, v in weights.items()}
    if cfg.train.ema_decay:
        opt.init_ema(params)
    apply = mx.compile(opt.apply, inputs=[opt.state], outputs=[opt.state]) if compiled else opt.apply
    for step, g in enumerate(grads):
        scalars = {k: mx.array(v) for k, v in step_scalars(step, cfg.train).items()}
        params = apply(params, {k: mx.array(v) for k, v in g.items()}, scalars)
        mx.eval(params, opt.state)
    return {k: np.array(v) for k, v in params.items()}, opt


def _run_torch(cfg, weights, grads):
    opt = topt.Optimizer(cfg.train, parameter_specs(cfg.model))
    params = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    if cfg.train.ema_decay:
        opt.init_ema(params)
    for step, g in enumerate(grads):
        scalars = {k: torch.tensor(v) for k, v in step_scalars(step, cfg.train).items()}
        opt.apply(params, {k: torch.from_numpy(v.copy()) for k, v in g.items()}, scalars)
    return {k: v.numpy() for k, v in params.items()}, opt


def _rne_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (rounded to nearest, ties to even) -> float32, on the bits (no NaNs here)."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _numpy_adamw(cfg, weights, grads):
    """AdamW transcribed in NumPy (float32 math, each slot stored rounded): (weights, {slot: value})."""
    t, specs = cfg.train, parameter_specs(cfg.model)
    w, st = dict(weights), {}
    for step, g in enumerate(grads):
        s = step_scalars(step, t)
        for n, p in w.items():
            m = _rne_bf16(t.beta1 * st.get(f"{n}.exp_avg", 0 * p) + (1 - t.beta1) * g[n])
            v = _rne_bf16(t.beta2 * st.get(f"{n}.exp_avg_sq", 0 * p) + (1 - t.beta2) * (g[n] * g[n]))
            m32 = t.beta1 * st.get(f"{n}.exp_avg", 0 * p) + (1 - t.beta1) * g[n]  # this step uses the float32 value
            v32 = t.beta2 * st.get(f"{n}.exp_avg_sq", 0 * p) + (1 - t.beta2) * (g[n] * g[n])
            st[f"{n}.exp_avg"], st[f"{n}.exp_avg_sq"] = m, v
            update = (m32 / s["bc1"]) / (np.sqrt(v32 / s["bc2"]) + np.float32(t.adam_eps))
            decay, lr = weight_decay_of(specs[n], t), s[lr_key(specs[n], t)]
            w[n] = (p * (1 - lr * decay) if decay else p) - lr * update
    return w, st


def _assert_same_bits(a: np.ndarray, b: np.ndarray, what: str):
    assert a.dtype == b.dtype == np.float32, what
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=what)


def _assert_close_weights(a: np.ndarray, b: np.ndarray, what: str):
    """Equal but for torch's CPU sqrt: the last bits of lr * update (lr 0.05, |update| <= about 1)."""
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=what)


def _torch_paths(monkeypatch, path: str):
    """torch's update paths on the CPU: one parameter at a time (the default), flat blocks of 1000
    elements (the 256 x 64 embedding spans 17), or one foreach list per bucket (CUDA's)."""
    if path == "blocks":
        monkeypatch.setattr(topt, "ELEMENTWISE_BLOCK", 1000)
    elif path == "lists":
        monkeypatch.setattr(topt.Optimizer, "_lists", staticmethod(lambda names, cpu: [names] if names else []))


@pytest.mark.parametrize("compiled", [False, True])
def test_adamw_bf16_slots_match_numpy_bit_for_bit(compiled):
    """MLX's AdamW with bfloat16 slots gives the NumPy transcription's weights and slots bit for bit:
    each slot the float32 update rounded to nearest even (not truncated), the update from float32;
    compiled (fused) or not."""
    cfg = _cfg("adamw", ema_decay=None)
    weights, grads = _start(cfg)
    mlx_w, mlx_opt = _run_mlx(cfg, weights, grads, compiled)
    want_w, want_st = _numpy_adamw(cfg, weights, grads)
    got_st = mlx_opt.numpy_state()
    assert sorted(got_st) == sorted(want_st)
    for k in want_st:
        _assert_same_bits(got_st[k], want_st[k], k)
    for k in weights:
        _assert_same_bits(mlx_w[k], want_w[k], k)
        assert not np.array_equal(mlx_w[k], weights[k]), k  # it moved


@pytest.mark.parametrize("path", ["params", "blocks", "lists"])
def test_adamw_bf16_slots_same_bits_in_both_backends(monkeypatch, path):
    """Every torch path gives MLX's slots and ternary codes bit for bit. The weights: torch's CPU
    sqrt is not correctly rounded (about 1 in 6 float32 results 1 ulp off; MLX's and NumPy's are
    exact, and so is CUDA's), so they agree to float32 rounding here, float32 slots or bfloat16 alike."""
    cfg = _cfg("adamw")
    weights, grads = _start(cfg)
    mlx_w, mlx_opt = _run_mlx(cfg, weights, grads)
    torch_default = _run_torch(cfg, weights, grads)[0]
    _torch_paths(monkeypatch, path)
    torch_w, torch_opt = _run_torch(cfg, weights, grads)
    ms, ts = mlx_opt.numpy_state(), torch_opt.numpy_state()
    assert sorted(ms) == sorted(ts)
    for k in ms:
        if k.endswith(".ema"):  # the EMA averages the weights in
            _assert_close_weights(ms[k], ts[k], k)
        else:
            _assert_same_bits(ms[k], ts[k], k)
    for k in weights:
        _assert_same_bits(torch_w[k], torch_default[k], k)  # the paths agree among themselves exactly
        _assert_close_weights(mlx_w[k], torch_w[k], k)
    for name in ternary_parameters(cfg):  # each backend's own ternarize of its weights
        mc, msc = ML.ternarize(mx.array(mlx_w[name]), cfg.ternary.group_size)
        tc, tsc = TL.ternarize(torch.from_numpy(torch_w[name]), cfg.ternary.group_size)
        np.testing.assert_array_equal(np.array(mc), tc.numpy(), err_msg=name)
        np.testing.assert_allclose(np.array(msc), tsc.numpy(), rtol=1e-6, err_msg=name)


def test_muon_bf16_momentum_same_bits_in_both_backends():
    """The momentum and AdamW slots bit for bit (NumPy's transcription too); the weights to float32
    rounding: Muon's matrices go through Newton-Schulz matmuls, whose rounding differs between the
    backends, the AdamW ones through torch's CPU sqrt."""
    cfg = _cfg("muon")
    weights, grads = _start(cfg)
    mlx_w, mlx_opt = _run_mlx(cfg, weights, grads)
    torch_w, torch_opt = _run_torch(cfg, weights, grads)
    ms, ts = mlx_opt.numpy_state(), torch_opt.numpy_state()
    specs = parameter_specs(cfg.model)
    muon = [n for n in weights if uses_muon(specs[n], cfg.train)]
    assert muon and len(muon) < len(weights)
    for k in ms:
        if k.endswith(".ema"):
            np.testing.assert_allclose(ms[k], ts[k], rtol=0, atol=1e-5, err_msg=k)
        else:
            _assert_same_bits(ms[k], ts[k], k)
    for n in weights:
        if n in muon:
            np.testing.assert_allclose(mlx_w[n], torch_w[n], rtol=0, atol=1e-5, err_msg=n)
        else:
            _assert_close_weights(mlx_w[n], torch_w[n], n)
    mu = [step_scalars(s, cfg.train) for s in range(STEPS)]
    for n in muon:  # buf = mu buf + (1 - mu) g in float32, stored rounded
        buf = np.zeros_like(weights[n])
        for g, sc in zip(grads, mu):
            buf = _rne_bf16(sc["momentum"] * buf + sc["one_minus_momentum"] * g[n])
        _assert_same_bits(ms[f"{n}.momentum"], buf, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_bf16_slots_are_bf16_and_budget_counts_them(backend, optimizer):
    Model, Trainer = BACKENDS[backend]
    cfg = _cfg(optimizer)
    st = Trainer(cfg, Model(cfg, seed=1)).opt.state
    low = mx.bfloat16 if backend == "mlx" else torch.bfloat16
    high = mx.float32 if backend == "mlx" else torch.float32
    for k, v in st.items():
        assert v.dtype == (high if k.endswith(".ema") else low), k
    nbytes = sum(v.nbytes for v in st.values())
    assert nbytes == optimizer_state_bytes(cfg)
    f32 = _cfg(optimizer, "float32")
    moments = sum(v.size if backend == "mlx" else v.numel() for k, v in st.items() if not k.endswith(".ema"))
    assert optimizer_state_bytes(f32) - optimizer_state_bytes(cfg) == 2 * moments
    assert memory_budget(f32)["total"] - memory_budget(cfg)["total"] == 2 * moments


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_resume_continues_bit_for_bit(tmp_path, backend):
    """2 steps, checkpoint (slots saved as float32: exact), 2 more == 4 steps in one go; a float32
    checkpoint resumed with bfloat16 slots gets them rounded to nearest even."""
    Model, Trainer = BACKENDS[backend]
    cfg = tiny_config(ternary=dict(enabled=False), train=dict(optimizer="adamw", lr=3e-3,
                                                              optimizer_state_dtype="bfloat16"))
    rng = np.random.default_rng(3)
    data = [rng.integers(0, 256, (1, 4, 17)).astype(np.int32) for _ in range(4)]
    alone = Trainer(cfg, Model(cfg, seed=2))
    alone.fetch([alone.step(w, i) for i, w in enumerate(data)])
    first = Trainer(cfg, Model(cfg, seed=2))
    first.fetch([first.step(w, i) for i, w in enumerate(data[:2])])
    first.save(tmp_path / "ck", {"step": 2})
    _, weights = fmt.read_checkpoint(tmp_path / "ck")
    saved, _ = fmt.read_optimizer(tmp_path / "ck")
    assert all(v.dtype == np.float32 for v in saved.values())
    resumed = Trainer(cfg, Model(cfg, weights), saved)
    resumed.fetch([resumed.step(w, 2 + i) for i, w in enumerate(data[2:])])
    for got, want in ((resumed.numpy_weights(), alone.numpy_weights()),
                      (resumed.numpy_optimizer_state(), alone.numpy_optimizer_state())):
        assert sorted(got) == sorted(want)
        for k in want:
            _assert_same_bits(got[k], want[k], k)
    f32 = tiny_config(ternary=dict(enabled=False), train=dict(optimizer="adamw", lr=3e-3))
    wide = Trainer(f32, Model(f32, seed=2))
    wide.fetch([wide.step(w, i) for i, w in enumerate(data[:2])])
    wide_state = wide.numpy_optimizer_state()
    narrowed = Trainer(cfg, Model(cfg, seed=2), wide_state).numpy_optimizer_state()
    for k, v in wide_state.items():
        _assert_same_bits(narrowed[k], _rne_bf16(v), k)
        assert not np.array_equal(narrowed[k], v), k  # float32 values that bfloat16 cannot hold


def test_bad_state_dtype_is_refused_in_one_line():
    d = tiny_config().to_dict()
    d["train"]["optimizer_state_dtype"] = "float16"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    assert str(e.value).startswith("train.optimizer_state_dtype: 'float16' is not one of float32, bfloat16")
    assert "\n" not in str(e.value)
