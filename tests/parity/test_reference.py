"""Both backends' float32 logits against the NumPy float64 reference (shared/spec/reference_model.py).

The reference is written from the equations and shares no code with the backends, so this catches
mistakes the two backends share, which tests/parity/test_logits.py (MLX against torch) cannot.
Every row of tests/variants.py, both backends, sequence lengths 1, 7 and 64, and quantization
lambda 0.5 wherever lambda changes the model (ternary weights or SubLN). Norm gains are random, not
one, so swapping two norms would show.

Tolerance: 1e-5 absolute, max over all logits. Measured (CPU, MLX and torch): at most ~5e-6, with
logits of magnitude <= ~6, so an absolute bound has a 2x margin and no relative one is needed.

8-bit activation quantization: each projection input is rounded to a 1/127 grid of its token's
absmax. The reference's input differs from a backend's float32 input by rounding (up to ~1.5e-4 of
a step, measured), so a value that close to a .5 boundary may round differently; that changes one
activation by a whole step, and attention carries it to every later position of the sequence
(measured: up to ~5e-2 in the logits). Such flips are legitimate, and both backends flip at
different places. So the reference also reports, per token, how near any of its quantized
activations came to a boundary (`reference_forward`'s margin). A position is "clean" when neither
it nor an earlier token of its sequence came within MARGIN steps; clean positions must agree to
1e-5 like everything else (every flip seen was within 5e-5 steps; MARGIN is 10x that). The others
get a loose bound. Those rows run a batch of 32 sequences so that enough positions are clean.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from shared.spec.reference_model import reference_forward, reference_logits
from tests.variants import VARIANTS, variant_config

from .helpers import mlx_logits, record, torch_logits, varied_weights

TOL = 1e-5
SEQ_LENS = [1, 7, 64]
BACKENDS = ["mlx", "torch"]
MARGIN = 5e-4  # steps of the activation grid: closer to a boundary, a float32 input may round the other way
LOOSE = 0.2  # bound on what rounding flips do to the logits (measured up to ~5e-2)
MIN_CLEAN = 8  # activation-quantization cases: clean positions needed for the exact check to mean something


def _lambdas(name: str) -> list[float]:
    cfg = variant_config(name)
    return [1.0, 0.5] if (cfg.ternary.enabled or cfg.model.subln) else [1.0]


CASES = [(n, b, t, lam) for n in VARIANTS for b in BACKENDS for lam in _lambdas(n) for t in SEQ_LENS]


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """Tiny models on a small shared CPU: extra intra-op threads only contend."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@functools.cache
def _build(name: str, backend: str):
    """(cfg, weights, model): the shared seed's weights with random norm gains and controls (and no
    zero projections), loaded into `backend`."""
    cfg = variant_config(name)
    if backend == "mlx":
        from ternary_mlx.model import Model
    else:
        from ternary_cuda.model import Model
    model = Model(cfg, seed=3)
    weights = varied_weights(cfg, model.numpy_weights(), np.random.default_rng(103))
    model.load_numpy(weights)
    back = model.numpy_weights()  # the reference and the backend must read the very same bits
    assert all(np.array_equal(back[k].view(np.uint32), weights[k].view(np.uint32)) for k in weights)
    return cfg, weights, model


def _backend_logits(backend: str, model, ids: np.ndarray) -> np.ndarray:
    return mlx_logits(model, ids) if backend == "mlx" else torch_logits(model, ids)


@pytest.mark.parametrize("name,backend,seq_len,lam", CASES)
def test_backend_matches_reference(name, backend, seq_len, lam):
    cfg, weights, model = _build(name, backend)
    model.set_quant_lambda(lam)
    act_quant = bool(cfg.ternary.enabled and cfg.ternary.activation_bits)
    batch = 32 if act_quant else 2
    ids = np.random.default_rng(seq_len).integers(0, cfg.model.vocab_size, (batch, seq_len))
    t0 = time.perf_counter()
    want, margin = reference_forward(cfg, weights, ids, lam)
    ref_s = time.perf_counter() - t0
    got = _backend_logits(backend, model, ids)
    assert got.shape == want.shape == (batch, seq_len, cfg.model.vocab_size) and got.dtype == np.float32
    assert np.abs(want).max() > 0.5  # logits not trivially small

    diff = np.abs(got - want).max(axis=-1)  # (B, T)
    clean = np.minimum.accumulate(margin, axis=1) > MARGIN  # no near-tie here or earlier in the sequence
    clean_diff = float(diff[clean].max()) if clean.any() else 0.0
    record("reference_logits", f"{name}/{backend}/T{seq_len}/lam{lam}", max_abs_diff=float(diff.max()),
           max_abs_diff_clean=clean_diff, clean_frac=float(clean.mean()),
           max_abs_logit=float(np.abs(want).max()), reference_s=ref_s)
    if not act_quant:
        assert clean.all()  # margins exist only where activations are quantized
        assert diff.max() < TOL, f"max |{backend} - reference| = {diff.max():.3g}"
        return
    assert clean.sum() >= MIN_CLEAN, f"only {clean.sum()} clean positions"
    assert clean_diff < TOL, f"max |{backend} - reference| at clean positions = {clean_diff:.3g}"
    assert diff.max() < LOOSE, f"max |{backend} - reference| = {diff.max():.3g} (beyond rounding flips)"
    # and the check tells activation quantization apart from none at those positions
    cfg_off = variant_config(name, ternary=dict(activation_bits=None))
    off = np.abs(reference_logits(cfg_off, weights, ids, lam) - want).max(axis=-1)
    assert off[clean].max() > 100 * TOL


def test_cases_cover_the_table():
    """Every row runs (so a new row is compared too), and every kind of row is there."""
    names = {c[0] for c in CASES}
    assert names == set(VARIANTS)
    cfgs = [variant_config(n) for n in VARIANTS]
    assert any(not c.ternary.enabled for c in cfgs) and any(c.ternary.enabled for c in cfgs)
    assert any(c.model.subln for c in cfgs) and any(c.ternary.activation_bits for c in cfgs)
    assert any(lam == 0.5 and variant_config(n).model.subln for n, _, _, lam in CASES)
