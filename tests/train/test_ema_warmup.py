"""EMA of weights (train.ema_decay) and the ternary lambda warm-up (ternary.warmup_steps), in both
backends, through the real Trainers (and, for EMA evaluation, through the shared loop)."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec import checkpoint as fmt
from shared.data.dataset import load_token_dataset
from shared.data.loader import TokenLoader
from shared.spec.ternary import ternary_weight
from shared.data.tokenizers import get_tokenizer
from tests.train.common import backend, config, run, train_losses

DECAY = 0.9


def assert_exact(name, got, want, **kw):
    """Bit-exact (as measured in torch and in MLX on a CPU); MLX on a GPU may contract a*x + b*y
    into fused multiply-adds in its compiled step, so there 1e-6 relative is allowed."""
    if name == "mlx":
        import mlx.core as mx
        if mx.default_device() == mx.gpu:
            return np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, **kw)
    np.testing.assert_array_equal(got, want, **kw)


def _numpy(a):
    """An MLX array or a torch tensor as float32 NumPy."""
    if hasattr(a, "detach"):
        return a.detach().float().cpu().numpy()
    return np.array(a).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return load_token_dataset("synthetic", get_tokenizer("bytes"), synthetic_train_bytes=50000,
                              synthetic_val_bytes=10000, seed=0)


def _batches(data, n):
    loader = TokenLoader(data.train, 4, 32, seed=0, log=lambda _m: None)
    return [loader.next_batch()[None] for _ in range(n)]  # (grad_accum=1, batch, seq_len + 1)


def _trainer(name, *overrides, seed=0, weights=None):
    cfg = config(*overrides)
    b = backend(name)
    return b.Trainer(cfg, b.Model(cfg, weights, seed=seed))


# ---- EMA ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_ema_state_is_the_recursive_average_of_the_weights(name, data):
    tr = _trainer(name, f"train.ema_decay={DECAY}", "train.warmup_steps=0")

    def weights():  # copies: torch's numpy_weights() on the CPU are views of the live parameters
        return {k: v.copy() for k, v in tr.numpy_weights().items()}

    w = [weights()]
    ema = {k: v.copy() for k, v in w[0].items()}
    d, one_minus_d = np.float32(DECAY), np.float32(1 - DECAY)
    st = tr.numpy_optimizer_state()
    assert {k for k in st if k.endswith(".ema")} == {f"{k}.ema" for k in w[0]}
    for k in ema:
        np.testing.assert_array_equal(st[f"{k}.ema"], w[0][k])  # starts at the initial weights
    for i, batch in enumerate(_batches(data, 3)):
        tr.fetch([tr.step(batch, i)])
        w.append(weights())
        st = tr.numpy_optimizer_state()
        assert any(not np.array_equal(w[-1][k], w[-2][k]) for k in ema)  # the weights moved
        for k in ema:
            ema[k] = d * ema[k] + one_minus_d * w[-1][k]
            assert_exact(name, st[f"{k}.ema"], ema[k], err_msg=f"step {i + 1} {k}")
            assert not np.array_equal(st[f"{k}.ema"], w[-1][k]) or np.array_equal(w[-1][k], w[-2][k])
    emaw = tr.ema_weights()
    for k in ema:
        np.testing.assert_array_equal(emaw[k], st[f"{k}.ema"])


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_evaluation_uses_the_ema_weights(name, data, tmp_path):
    """Same steps with and without EMA: identical training (EMA does not feed back), different
    val_loss; the EMA run's val_loss is exactly that of its EMA weights (from the checkpoint's
    optimizer state), the other run's that of its latent weights."""
    common = ["train.steps=6", "train.warmup_steps=2"]
    r_ema, _, _ = run(config(*common, f"train.ema_decay={DECAY}"), name, tmp_path / "ema")
    r_raw, _, _ = run(config(*common), name, tmp_path / "raw")
    assert train_losses(tmp_path / "ema") == train_losses(tmp_path / "raw")
    assert abs(r_ema.evals[-1]["val_loss"] - r_raw.evals[-1]["val_loss"]) > 1e-3
    _, latent = fmt.read_checkpoint(tmp_path / "ema" / "checkpoint")
    _, latent_raw = fmt.read_checkpoint(tmp_path / "raw" / "checkpoint")
    for k in latent:  # the checkpoint holds the latent weights, with the EMA in the optimizer state
        np.testing.assert_array_equal(latent[k], latent_raw[k])
    opt, _ = fmt.read_optimizer(tmp_path / "ema" / "checkpoint")
    ema = {k: opt[f"{k}.ema"] for k in latent}

    def val(weights):
        return _trainer(name, weights=weights).evaluate(data.val, data.tokenizer, 2000)["val_loss"]

    assert val(ema) == r_ema.evals[-1]["val_loss"]
    assert val(latent) == r_raw.evals[-1]["val_loss"]


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_training_continues_after_a_mid_run_ema_evaluation(name, tmp_path):
    """An evaluation at step 3 (of the EMA weights) puts the latent weights back: steps 4-6 are the
    same as in the run without EMA."""
    common = ["train.steps=6", "train.eval_every=3", "train.warmup_steps=2"]
    r_ema, _, _ = run(config(*common, f"train.ema_decay={DECAY}"), name, tmp_path / "ema")
    run(config(*common), name, tmp_path / "raw")
    assert [e["step"] for e in r_ema.evals] == [3, 6]
    assert train_losses(tmp_path / "ema") == train_losses(tmp_path / "raw")


# ---- lambda warm-up ---------------------------------------------------------------------------------
WARMUP = 4


def _ternary_modules(tr):
    return tr.model.ternary_modules()


def _assert_effective_weights_ternary(tr, group_size=32):
    mods = _ternary_modules(tr)
    assert len(mods) == 2 * 7  # q, k, v, o, gate, up, down per layer
    weights = tr.numpy_weights()
    for n, mod in mods.items():
        eff = _numpy(mod.effective_weight())
        want = ternary_weight(weights[n], group_size)
        np.testing.assert_allclose(eff, want, rtol=1e-6, atol=1e-9, err_msg=n)
        groups = eff.reshape(eff.shape[0], -1, group_size)
        scale = np.abs(groups).max(axis=-1, keepdims=True)
        assert np.all(np.isin(np.round(groups / np.where(scale > 0, scale, 1), 5), [-1.0, 0.0, 1.0])), n


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_lambda_warmup_starts_float_and_ends_ternary(name, data):
    batches = _batches(data, WARMUP + 1)

    def losses(tr, n):
        return [tr.fetch([tr.step(b, i)])[0][0] for i, b in enumerate(batches[:n])]

    warm = _trainer(name, f"ternary.warmup_steps={WARMUP}")
    flt = _trainer(name, "ternary.enabled=false")
    tern = _trainer(name)  # ternary from step 0
    lw, lf, lt = losses(warm, WARMUP + 1), losses(flt, 2), losses(tern, 1)
    # step 1 at lambda 0: the float model's loss from the same initial weights, not the ternary one's
    assert_exact(name, lw[0], lf[0])
    assert abs(lw[0] - lt[0]) > 1e-3
    # step 2 at lambda 1/4 is no longer float (same weights: at lambda 0 the STE gradient is float's)
    assert abs(lw[1] - lf[1]) > 1e-4
    # after step index WARMUP (lambda 1) every ternary layer uses q * s exactly
    _assert_effective_weights_ternary(warm)


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_model_is_ternary_as_soon_as_warmup_is_over(name, data):
    warm = _trainer(name, f"ternary.warmup_steps={WARMUP}")
    for i, b in enumerate(_batches(data, WARMUP)):
        warm.fetch([warm.step(b, i)])
    _assert_effective_weights_ternary(warm)
