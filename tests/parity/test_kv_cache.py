"""Incremental decoding (ternary_*/kv_cache.py): over every row of tests/variants.py that the cache
supports (all of them today, the block plug-ins included), a prefill of the first tokens and then one
token at a time give the full forward's logits at every position, in both backends; where the cache
is not used (an unsupported option, --no-kv-cache), `generate` says so and runs the full forward.
Frozen effective weights (layers.frozen_weights) give the same logits bit for bit as re-ternarizing
on every call."""
from __future__ import annotations

import io

import numpy as np
import pytest

from shared.train.generation import kv_cache_unsupported
from tests.backends import BACKENDS, Backend
from tests.variants import VARIANTS, variant_config

from .helpers import varied_weights

SUPPORTED = [n for n in VARIANTS if kv_cache_unsupported(variant_config(n).model) is None]
T, PREFILL = 24, 9  # positions checked; the prompt's length (then T - PREFILL single-token steps)
# float32: the cached step attends over the same keys in a different kernel shape (one query); the
# largest difference measured over the rows: 0 in MLX, 3.7e-6 in torch.
ATOL = 5e-5


def build(backend: Backend, name: str, seed: int = 5):
    cfg = variant_config(name)
    model = backend.model.Model(cfg, seed=seed)
    model.load_numpy(varied_weights(cfg, model.numpy_weights(), np.random.default_rng(seed + 100)))
    if backend.name == "torch":
        model.eval()
    return cfg, model


def cached_logits(backend: Backend, model, cfg, ids: np.ndarray) -> np.ndarray:
    """Logits at every position: the prompt ids[:, :PREFILL] at once, then one token per call."""
    kv = __import__(f"{'ternary_mlx' if backend.name == 'mlx' else 'ternary_cuda'}.kv_cache",
                    fromlist=["KVCache"])
    cache = kv.KVCache(cfg)
    outs = [forward(backend, model, ids[:, :PREFILL], cache)]
    for t in range(PREFILL, ids.shape[1]):
        outs.append(forward(backend, model, ids[:, t:t + 1], cache))
    assert cache.offset == ids.shape[1]
    return np.concatenate(outs, axis=1)


def forward(backend: Backend, model, ids: np.ndarray, cache=None) -> np.ndarray:
    if backend.name == "mlx":
        return backend.numpy(model(backend.tensor(ids), cache=cache))
    with backend._torch.no_grad():
        return backend.numpy(model(backend.tensor(ids), cache=cache))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", SUPPORTED)
def test_cached_decoding_equals_full_forward(variant, backend):
    b = Backend(backend)
    cfg, model = build(b, variant)
    ids = np.random.default_rng(1).integers(0, cfg.model.vocab_size, size=(2, T)).astype(np.int64)
    full = forward(b, model, ids)
    cached = cached_logits(b, model, cfg, ids)
    assert cached.shape == full.shape
    err = float(np.max(np.abs(cached - full)))
    assert err <= ATOL, f"{variant} ({backend}): cached logits differ from the full forward by {err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_sees_the_past(backend):
    """The check above fails on a cache that drops the past: a step with a fresh cache (position 0)
    gives other logits than the step after the prompt."""
    b = Backend(backend)
    cfg, model = build(b, "gqa-tied-silu-G64")
    kv = __import__(f"{'ternary_mlx' if backend == 'mlx' else 'ternary_cuda'}.kv_cache", fromlist=["KVCache"])
    ids = np.random.default_rng(2).integers(0, cfg.model.vocab_size, size=(1, 8)).astype(np.int64)
    cache = kv.KVCache(cfg)
    forward(b, model, ids[:, :7], cache)
    with_past = forward(b, model, ids[:, 7:], cache)
    alone = forward(b, model, ids[:, 7:], kv.KVCache(cfg))
    assert np.max(np.abs(with_past - alone)) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refusal", ["option", "flag"])
def test_generate_says_when_it_runs_the_full_forward(backend, refusal, monkeypatch):
    """An option the cache does not support (kv_cache_unsupported names it; none today, so it is
    faked here) or --no-kv-cache: one line says so, no cache is built, and the text is the cached one."""
    b = Backend(backend)
    cfg, model = build(b, "plugin-bigram64-smear-embednorm-G32")
    pkg = "ternary_mlx" if backend == "mlx" else "ternary_cuda"
    gen = __import__(f"{pkg}.generate", fromlist=["generate"])
    from shared.data.tokenizers import ByteTokenizer
    cached = gen.generate(model, ByteTokenizer(), "ab", 6, temperature=0, log=io.StringIO())
    if refusal == "option":
        monkeypatch.setattr(gen, "kv_cache_unsupported", lambda m: "model.example needs more state")

    def no_cache(_):
        raise AssertionError("a KVCache was built")
    monkeypatch.setattr(gen, "KVCache", no_cache)
    log = io.StringIO()
    text = gen.generate(model, ByteTokenizer(), "ab", 6, temperature=0, log=log, kv_cache=refusal != "flag")
    lines = log.getvalue().splitlines()
    why = "model.example needs more state" if refusal == "option" else "switched off (--no-kv-cache)"
    assert [line for line in lines if "no KV cache" in line] == [
        f"generate: no KV cache ({why}): the full forward runs for every token"]
    assert text == cached


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_refuses_chunks_after_the_prompt(backend):
    b = Backend(backend)
    cfg, model = build(b, "gqa-tied-silu-G64")
    kv = __import__(f"{'ternary_mlx' if backend == 'mlx' else 'ternary_cuda'}.kv_cache", fromlist=["KVCache"])
    cache = kv.KVCache(cfg)
    ids = np.zeros((1, 4), np.int64)
    forward(b, model, ids, cache)
    with pytest.raises(ValueError, match="one token at a time"):
        forward(b, model, ids, cache)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["gqa-tied-silu-G64", "ternary-embed-head-untied-pertensor",
                                     "fused-qkv-gateup-act8-G64", "fp8qat-gqa-untied-G64", "float-gqa-untied"])
def test_frozen_weights_give_the_same_logits(variant, backend):
    b = Backend(backend)
    cfg, model = build(b, variant)
    ids = np.random.default_rng(3).integers(0, cfg.model.vocab_size, size=(2, 16)).astype(np.int64)
    plain = forward(b, model, ids)
    with b.layers.frozen_weights(model):
        frozen = forward(b, model, ids)
        # while frozen, the effective weight is stored, not recomputed from the latent weights
        mod = next(iter(model.ternary_modules().values())) if model.ternary_modules() else None
        if mod is not None:
            assert mod._frozen is not None
    assert np.array_equal(plain, frozen)
    assert all(m._frozen is None for m in model.ternary_modules().values())  # released on exit
