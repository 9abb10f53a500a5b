"""train.decoder_lr_mult and train.ema_start_frac (issue 11), in both backends through the real Trainers."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import parameter_specs
from shared.train.optim_rules import ema_start_step, lr_key, step_scalars
from tests.train.common import backend, config

BACKENDS = ["mlx", "torch"]


def _batches(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (1, 4, 33)).astype(np.int32) for _ in range(n)]


def _trainer(name, *overrides, seed=0):
    cfg = config(*overrides)
    b = backend(name)
    return b.Trainer(cfg, b.Model(cfg, seed=seed)), cfg


def _weights(tr):  # copies: torch's numpy_weights() on the CPU are views of the live parameters
    return {k: v.copy() for k, v in tr.numpy_weights().items()}


def test_the_decoder_half_is_the_layers_from_half_the_depth_on():
    cfg = config("model.num_hidden_layers=5")
    specs = parameter_specs(cfg.model)
    decoder = {n for n, s in specs.items() if s.decoder}
    assert decoder and decoder == {n for n in specs if n.startswith(("model.layers.2.", "model.layers.3.",
                                                                        "model.layers.4."))}
    assert {specs[n].layer for n in decoder} == {2, 3, 4}
    t = cfg.train
    assert {lr_key(s, t) for s in specs.values()} == {f"lr_{s.group}" for s in specs.values()}  # mult 1: as before
    t.decoder_lr_mult = 3.0
    s = step_scalars(5, t)
    for g in ("matrix", "scalar", "embed", "head"):
        np.testing.assert_allclose(s[f"lr_{g}_decoder"], 3 * s[f"lr_{g}"], rtol=1e-6)
    assert lr_key(specs["model.layers.4.self_attn.q_proj.weight"], t) == "lr_matrix_decoder"
    assert lr_key(specs["model.layers.1.self_attn.q_proj.weight"], t) == "lr_matrix"
    assert lr_key(specs["model.norm.weight"], t) == "lr_scalar"  # outside the layers: its group's rate


@pytest.mark.parametrize("name", BACKENDS)
def test_decoder_lr_mult_scales_only_the_decoder_updates(name):
    """One AdamW step (weight decay 0, no warm-up) at mult 1 and at mult 2 from the same weights and
    batch: the same gradients, so the encoder half and the model-level tensors move exactly alike
    and every decoder parameter moves twice as far."""
    common = ["train.optimizer=adamw", "train.warmup_steps=0", "train.weight_decay=0.0"]
    moved = {}
    for mult in (1.0, 2.0):
        tr, cfg = _trainer(name, *common, f"train.decoder_lr_mult={mult}")
        w0 = _weights(tr)
        tr.fetch([tr.step(_batches(1, cfg.model.vocab_size)[0], 0)])
        moved[mult] = {k: v - w0[k] for k, v in _weights(tr).items()}
    specs = parameter_specs(cfg.model)
    for k, spec in specs.items():
        if spec.decoder:
            np.testing.assert_allclose(moved[2.0][k], 2 * moved[1.0][k], rtol=1e-4, atol=1e-9, err_msg=k)
            assert np.abs(moved[1.0][k]).max() > 0, k
        else:
            np.testing.assert_array_equal(moved[2.0][k], moved[1.0][k], err_msg=k)


@pytest.mark.parametrize("name", BACKENDS)
def test_decoder_lr_mult_zero_freezes_the_decoder_half(name):
    tr, cfg = _trainer(name, "train.optimizer=muon", "train.decoder_lr_mult=0.0", "train.weight_decay=0.1")
    w0 = _weights(tr)
    for i, b in enumerate(_batches(3, cfg.model.vocab_size)):
        tr.fetch([tr.step(b, i)])
    w = _weights(tr)
    for k, spec in parameter_specs(cfg.model).items():
        if spec.decoder:
            np.testing.assert_array_equal(w[k], w0[k], err_msg=k)
        elif spec.layer is not None:
            assert not np.array_equal(w[k], w0[k]), k


@pytest.mark.parametrize("name", BACKENDS)
def test_ema_is_the_weights_until_its_start_step_then_averages(name):
    """steps=5, ema_start_frac=0.5: start step 2. After steps 0 and 1 the EMA equals the weights
    bit for bit; from step 2 on it is d * ema + (1 - d) * w with the EMA of step 1 = w after step 1."""
    tr, cfg = _trainer(name, "train.steps=5", "train.ema_decay=0.9", "train.ema_start_frac=0.5",
                       "train.warmup_steps=0")
    assert ema_start_step(cfg.train) == 2
    d, one_minus_d = np.float32(0.9), np.float32(1 - 0.9)
    ema = None
    for i, b in enumerate(_batches(5, cfg.model.vocab_size)):
        tr.fetch([tr.step(b, i)])
        w, got = _weights(tr), tr.ema_weights()
        ema = dict(w) if i < 2 else {k: d * ema[k] + one_minus_d * w[k] for k in w}
        for k in w:
            if i < 2:
                np.testing.assert_array_equal(got[k], w[k], err_msg=f"step {i} {k}")
            else:
                np.testing.assert_allclose(got[k], ema[k], rtol=1e-6, atol=1e-9, err_msg=f"step {i} {k}")
        if i >= 2:
            assert any(not np.array_equal(got[k], w[k]) for k in w)  # it averages now


def test_both_backends_agree_on_the_ema_and_the_decoder_rates():
    """Five Muon steps, float weights (no ternary code flips), decoder at 0.25, EMA from step 2: the
    weights and the EMA agree between MLX and torch."""
    sets = ["ternary.enabled=false", "train.optimizer=muon", "train.decoder_lr_mult=0.25", "train.steps=5",
            "train.ema_decay=0.8", "train.ema_start_frac=0.4", "train.warmup_steps=2"]
    out = {}
    for name in BACKENDS:
        tr, cfg = _trainer(name, *sets, seed=3)
        for i, b in enumerate(_batches(5, cfg.model.vocab_size, seed=1)):
            tr.fetch([tr.step(b, i)])
        out[name] = (_weights(tr), tr.ema_weights())
    for k in out["mlx"][0]:
        for part in (0, 1):
            np.testing.assert_allclose(out["mlx"][part][k], out["torch"][part][k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("sets,message", [
    (["train.ema_start_frac=0.3"], "train.ema_start_frac=0.3 needs train.ema_decay"),
    (["train.ema_decay=0.9", "train.ema_start_frac=1.0"], "train.ema_start_frac must be in [0, 1), got 1.0"),
    (["train.decoder_lr_mult=-1"], "train.decoder_lr_mult must be >= 0"),
])
def test_bad_values_are_one_clear_line(sets, message):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides(sets)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_resumed_run_continues_the_ema_and_its_start(name, tmp_path):
    """12 steps with the EMA from step 3 (0.25 x 12) against 6 steps with it from step 3 (0.5 x 6),
    resumed to 12 with 0.25: the same EMA at the end, bit for bit (its state and start step resume)."""
    from shared.spec import checkpoint as fmt
    from tests.train.common import run
    common = ["train.ema_decay=0.8", "train.decoder_lr_mult=2.0"]
    run(config(*common, "train.steps=12", "train.ema_start_frac=0.25"), name, tmp_path / "full")
    run(config(*common, "train.steps=6", "train.ema_start_frac=0.5"), name, tmp_path / "part")
    run(config(*common, "train.steps=12", "train.ema_start_frac=0.25"), name, tmp_path / "part",
        resume=tmp_path / "part" / "checkpoint")
    full, _ = fmt.read_optimizer(tmp_path / "full" / "checkpoint")
    part, _ = fmt.read_optimizer(tmp_path / "part" / "checkpoint")
    emas = [k for k in full if k.endswith(".ema")]
    assert emas
    for k in emas:
        np.testing.assert_array_equal(part[k], full[k], err_msg=k)
