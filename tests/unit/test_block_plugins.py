"""The block plug-in API (shared/spec/blocks.py) and its first plug-ins: BigramHash, the hashed n-gram
embeddings and SmearGate. Logits, codes and gradients are compared over their rows of
tests/variants.py by the parity suites; this file checks the registry, the hash arithmetic bit for
bit in NumPy, MLX and torch, and that no implementation loops over positions (SEEDS S6)."""
from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

from shared.spec import blocks
from shared.spec.config import ConfigError
from shared.spec.init import init_weights
from shared.spec.options import OPTION_BY_KEY
from shared.spec.reference_blocks import bigram_hash as ref_bigram
from shared.spec.reference_blocks import ngram_hash as ref_ngram
from ternary_cuda.blocks import bigram_hash as torch_bigram
from ternary_cuda.blocks import ngram_hash as torch_ngram
from ternary_mlx.blocks import bigram_hash as mlx_bigram
from ternary_mlx.blocks import ngram_hash as mlx_ngram
from tests.variants import VARIANTS, tiny_config, variant_config

PLUGIN_ROWS = [n for n in VARIANTS if "plugin" in n]


def test_the_registry_finds_every_plugin_and_both_backends_implement_its_hooks():
    import importlib
    names = [p.name for p in blocks.plugins()]
    assert names == sorted(names) and {"bigram_hash", "ngram_hash", "smear"} <= set(names)
    for p in blocks.plugins():
        for o in p.options:
            assert OPTION_BY_KEY[o.key] is o  # its rows are OPTIONS rows
        for package in ("ternary_mlx.blocks", "ternary_cuda.blocks"):
            block = importlib.import_module(f"{package}.{p.name}").Block
            defined = {h for h in blocks.HOOK_POINTS if hasattr(block, h)}
            assert defined == set(p.hooks), (package, p.name)  # an undeclared hook would never run
    # every plug-in is turned on by some row of the variant table
    on = {p.name for n in PLUGIN_ROWS for p in blocks.active_plugins(variant_config(n).model)}
    assert on == set(names)


def test_a_plugin_without_a_backend_file_is_refused_by_name(monkeypatch):
    fake = blocks.BlockPlugin("no_such_block", options=(), hooks=("stream",))
    monkeypatch.setattr(blocks, "active_plugins", lambda m: [fake])
    with pytest.raises(NotImplementedError, match=r"no_such_block.*ternary_mlx/blocks/no_such_block\.py"):
        blocks.backend_blocks(tiny_config().model, "ternary_mlx.blocks")


@pytest.mark.parametrize("package", ["ternary_mlx.blocks", "ternary_cuda.blocks"])
def test_a_plugin_named_like_a_part_of_the_decoder_is_refused(monkeypatch, package):
    import importlib
    hooks = importlib.import_module(package).BlockHooks
    fake = blocks.BlockPlugin("norm", options=(), hooks=("stream",))
    monkeypatch.setattr(importlib.import_module(package), "backend_blocks", lambda m, pkg: [(fake, None)])

    class Decoder:
        norm = object()
    with pytest.raises(ValueError, match="'norm': the decoder already has"):
        hooks(Decoder(), tiny_config())


@pytest.mark.parametrize("row", PLUGIN_ROWS)
def test_a_plugin_keeps_every_other_initial_weight(row):
    """Its parameters come last in canonical order, so every other tensor keeps its random stream."""
    model_kw, tern_kw = VARIANTS[row]
    plugin_keys = {o.key for p in blocks.plugins() for o in p.options}
    base = tiny_config(ternary=tern_kw, **{k: v for k, v in model_kw.items() if k not in plugin_keys}).model
    on, off = init_weights(variant_config(row).model, seed=5), init_weights(base, seed=5)
    assert set(off) < set(on)
    assert all(np.array_equal(on[k], off[k]) for k in off)
    assert all(k.startswith(tuple(f"model.{p.name}." for p in blocks.plugins())) for k in set(on) - set(off))


def test_plugin_options_are_checked_by_name():
    for kw, match in [(dict(bigram_hash_buckets=1), "model.bigram_hash_buckets"),
                      (dict(bigram_hash_dim=16), "model.bigram_hash_dim: needs model.bigram_hash_buckets"),
                      (dict(ngram_orders=[4]), "model.ngram_orders"), (dict(ngram_orders=[3, 2]), "model.ngram_orders"),
                      (dict(ngram_heads=2), "model.ngram_heads: needs model.ngram_orders"),
                      (dict(ngram_orders=[2, 3], ngram_heads=3), "multiple of"),
                      (dict(ngram_orders=[2], ngram_heads=9, ngram_dim=72), "ngram_heads must be in 1..8"),
                      (dict(ngram_orders=[2], ngram_layer=2), "ngram_layer must be in 0..1")]:
        with pytest.raises(ConfigError, match=match):
            tiny_config(**kw)


# ---- the hash arithmetic: bit for bit in NumPy, MLX and torch -------------------------------------
# ids near the largest id a 32-bit vocabulary can hold, where the records' int32 products wrap
# (36313 * id passes 2^31 above id 59137) and the xor turns negative, plus 0 and small ids.
ADVERSARIAL = np.array([[0, 1, 59137, 59138, 2 ** 31 - 1, 2 ** 31 - 2, 2 ** 31 - 1, 0, 65535, 2 ** 24 + 3,
                         1, 2 ** 31 - 1, 123456789, 2 ** 30, 0, 7]], np.int64)


def _ids():
    rng = np.random.default_rng(0)
    return [ADVERSARIAL, ADVERSARIAL[:, :1], ADVERSARIAL[:, :2], ADVERSARIAL[:, :3],
            rng.integers(0, 2 ** 31, (3, 50)), rng.integers(0, 1024, (2, 40))]


def _three(fn_ref, fn_mlx, fn_torch, ids, *args):
    want = fn_ref(ids, *args)
    got_mlx = np.array(fn_mlx(mx.array(ids), *args))
    got_torch = fn_torch(torch.from_numpy(ids), *args).numpy()
    return want, got_mlx, got_torch


@pytest.mark.parametrize("buckets", [2, 3, 64, 4096, 2 ** 20 + 7])
def test_bigram_buckets_are_bit_identical_and_the_records_int32_arithmetic(buckets):
    for ids in _ids():
        want, got_mlx, got_torch = _three(ref_bigram.bucket_ids, mlx_bigram.bucket_ids, torch_bigram.bucket_ids,
                                          ids, buckets)
        assert want.dtype == got_mlx.dtype == got_torch.dtype == np.int64
        assert np.array_equal(want, got_mlx) and np.array_equal(want, got_torch)
        assert (want[:, 0] == buckets - 1).all() and (want[:, 1:] < buckets - 1).all() and (want >= 0).all()
        # the records' own expression, in torch int32 (products and xor wrap; % is the floor one)
        t = torch.from_numpy(ids).to(torch.int32)
        record = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
        assert np.array_equal(want[:, 1:], record.long().numpy())
    assert (ref_bigram.wrap_int32(36313 * ADVERSARIAL) < 0).any()  # the wrap happens on these ids


@pytest.mark.parametrize("orders,heads", [([2], 1), ([3], 4), ([2, 3], 4), ([2, 3], 8)])
@pytest.mark.parametrize("buckets", [1, 7, 4096, 2 ** 31 - 1])
def test_ngram_buckets_are_bit_identical_and_the_records_polynomial(orders, heads, buckets):
    for ids in _ids():
        want, got_mlx, got_torch = _three(ref_ngram.bucket_ids, mlx_ngram.bucket_ids, torch_ngram.bucket_ids,
                                          ids, orders, heads, buckets)
        assert want.shape == ids.shape + (len(orders) * heads,)
        assert np.array_equal(want, got_mlx) and np.array_equal(want, got_torch)
        assert ((0 <= want) & (want < buckets)).all()
        for j, n in enumerate(orders):  # positions before a whole n-gram take bucket 0
            assert (want[:, : n - 1, j * heads:(j + 1) * heads] == 0).all()
    # the record's int64 polynomial itself, on ids where it cannot overflow (a 8192 vocabulary)
    ids = np.random.default_rng(1).integers(0, 8192, (2, 30))
    t = torch.from_numpy(ids)
    for j, n in enumerate(orders):
        p = torch.tensor(ref_ngram.PRIMES[(n - 2) * heads:(n - 1) * heads])
        poly = sum(t[:, i:30 - n + 1 + i, None] * p ** (n - 1 - i) for i in range(n))
        got = torch_ngram.bucket_ids(t, orders, heads, buckets)[:, n - 1:, j * heads:(j + 1) * heads]
        assert torch.equal(got, poly % buckets)


# ---- SEEDS S6: no per-token Python loop ------------------------------------------------------------
ROOT = str(Path(__file__).resolve().parents[2])


def _python_calls(fn) -> int:
    """Python bytecode steps executed in this project's code while `fn()` runs (sys.settrace with
    opcode events), a count that does not depend on the machine's speed or load: a Python loop over
    positions, even one of tensor operators in a comprehension, makes it grow with T. (Profile
    events would not do: an operator on a tensor is no function call to them. Library frames are
    not counted: NumPy picks an index dtype by size in Python, a branch, not a loop.)"""
    count = [0]

    def local(frame, event, arg):
        count[0] += 1
        return local

    def new_frame(frame, event, arg):
        where = frame.f_code.co_filename
        if not where.startswith(ROOT) or "site-packages" in where:  # a virtual environment may sit in the clone
            return None
        frame.f_trace_opcodes = True
        return local
    sys.settrace(new_frame)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count[0]


def _per_token_bigram(ids, buckets):  # what S6 describes: one call per token
    out = np.full(ids.shape, buckets - 1)
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            out[b, t] = ref_bigram.bucket_ids(ids[b:b + 1, t - 1:t + 1], buckets)[0, 1]
    return out


def _hash_calls(T: int) -> dict[str, int]:
    ids = np.random.default_rng(T).integers(0, 256, (2, T))
    mi, ti = mx.array(ids), torch.from_numpy(ids)
    fns = {
        "reference bigram": lambda: ref_bigram.bucket_ids(ids, 64),
        "mlx bigram": lambda: mx.eval(mlx_bigram.bucket_ids(mi, 64)),
        "torch bigram": lambda: torch_bigram.bucket_ids(ti, 64),
        "reference ngram": lambda: ref_ngram.bucket_ids(ids, [2, 3], 4, 64),
        "mlx ngram": lambda: mx.eval(mlx_ngram.bucket_ids(mi, [2, 3], 4, 64)),
        "torch ngram": lambda: torch_ngram.bucket_ids(ti, [2, 3], 4, 64),
        "a per-token loop": lambda: _per_token_bigram(ids, 64),
    }
    return {k: _python_calls(f) for k, f in fns.items()}


def test_hashing_costs_the_same_python_calls_at_any_length():
    short, long = _hash_calls(64), _hash_calls(1024)
    assert long.pop("a per-token loop") > 10 * short.pop("a per-token loop")  # the count sees a loop
    assert long == short


def _forward_calls(row: str, backend: str, T: int) -> int:
    cfg = variant_config(row)
    ids = np.random.default_rng(T).integers(0, cfg.model.vocab_size, (1, T))
    if backend == "reference":
        from shared.spec.reference_model import reference_logits
        weights = init_weights(cfg.model, seed=0)
        return _python_calls(lambda: reference_logits(cfg, weights, ids))
    if backend == "mlx":
        from ternary_mlx.model import Model
        model = Model(cfg, seed=0)
        return _python_calls(lambda: mx.eval(model(mx.array(ids))))
    from ternary_cuda.model import Model
    model = Model(cfg, seed=0)
    with torch.no_grad():
        return _python_calls(lambda: model(torch.from_numpy(ids)))


@pytest.mark.parametrize("backend", ["reference", "mlx", "torch"])
@pytest.mark.parametrize("row", ["plugin-ngram23-h2-gated-layer1-unet-mix-G32",
                                 "float-plugin-ngram3-gated-embedding-smear-bigram-embed16",
                                 "plugin-smearmean-L3-unet-relu2-G32"])
def test_a_plugin_models_forward_costs_the_same_python_calls_at_any_length(row, backend):
    _forward_calls(row, backend, 8)  # first calls import and cache things
    assert _forward_calls(row, backend, 16) == _forward_calls(row, backend, 128)
