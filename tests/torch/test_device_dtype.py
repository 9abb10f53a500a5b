"""What the CPU-only suites cannot see about the torch backend on a GPU, checked on the CPU: every tensor
the model makes lives on its input's device (the model on the meta device meets no CPU tensor), no
tensor is made from host data per step (on CUDA a blocking copy), and bfloat16 autocast keeps the
float32 parts float32 (the logits, the residual stream).
The GPU itself is tests/cuda/ (pytest -m cuda)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from shared.spec.layer_drop import layer_keep_scales
from tests.variants import VARIANTS, variant_config
from ternary_cuda.kv_cache import KVCache
from ternary_cuda.model import Model
from shared.train.generation import kv_cache_unsupported


class OpLog(TorchDispatchMode):
    """Every aten op dispatched inside, with the device types of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        self.ops.append((str(func), {a.device.type for a in tensors}))
        return func(*args, **kwargs)


def _layer_keep(model: Model, ids: torch.Tensor) -> torch.Tensor | None:
    """Stochastic depth's factors, drawn on the host as the trainer does (made before any OpLog)."""
    m = model.config.model
    if not m.stochastic_depth:
        return None
    return torch.from_numpy(layer_keep_scales(m, 0, 0, 0, 1, ids.shape[0])[0]).to(ids.device)


def _train_forward_backward(model: Model, ids: torch.Tensor, keep: torch.Tensor | None) -> None:
    logits, aux = model(ids, layer_keep=keep, with_aux=True)
    (logits.float().sum() + aux).backward()


def _decode(model: Model, ids: torch.Tensor) -> None:
    if kv_cache_unsupported(model.config.model):
        return
    cache = KVCache(model.config)
    with torch.no_grad():
        model(ids[:, :-1], cache=cache)
        model(ids[:, -1:], cache=cache)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_on_meta_meets_no_cpu_tensor(variant):
    """A torch.arange / zeros / tensor without device= makes a CPU tensor; here every op must see meta only
    (a 0-d CPU tensor would even pass torch's own device check silently)."""
    model = Model(variant_config(variant), seed=0).to("meta")
    model.check_ids = False  # the id check copies to the host on purpose
    ids = torch.zeros((2, 6), dtype=torch.int64, device="meta")
    keep, log = _layer_keep(model, ids), OpLog()
    with log:
        _train_forward_backward(model, ids, keep)
        _decode(model, ids)
    off = sorted({op for op, devices in log.ops if devices - {"meta"}})
    assert not off, f"{variant}: ops on a non-meta tensor: {off}"
    assert len(log.ops) > 50  # the log saw the forward


HOST_DATA_EXEMPT = {"ngram_orders": "the n-gram block's primes table, one small copy per order per forward"}


@pytest.mark.parametrize("variant", [v for v in VARIANTS
                                     if not any(getattr(variant_config(v).model, k) for k in HOST_DATA_EXEMPT)])
def test_a_training_step_makes_no_tensor_from_host_data(variant):
    """lift_fresh is torch.tensor(host data): on CUDA a blocking host-to-device copy (a stream sync) inside
    every forward. (Variants with n-grams are left out: HOST_DATA_EXEMPT.)"""
    cfg = variant_config(variant)
    model = Model(cfg, seed=0)
    model.check_ids = False
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 6)))
    keep, log = _layer_keep(model, ids), OpLog()
    with log:
        _train_forward_backward(model, ids, keep)
    assert "aten.lift_fresh.default" not in {op for op, _ in log.ops}


def _autocast_run(variant: str):
    model = Model(variant_config(variant), seed=0)
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, model.config.model.vocab_size, (2, 6)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    return logits, seen


@pytest.mark.parametrize("variant", ["gqa-tied-silu-G64", "mha-untied-relu2-G32",
                                     "mha-tied-relu2-softcap30-pertensor",
                                     "record-tied-embed32-bias-poly1-ramp4-outnorm-relu2-embed-head-G32",
                                     "float-record-tied-embed16-poly1.5-ramp2-headdim32"])
def test_bf16_autocast_keeps_logits_and_the_stream_float32(variant):
    """The head's matmul runs in bfloat16 under autocast; the logits (and the soft-cap on them) are float32,
    and so is the residual stream, also behind a factored embedding's projection."""
    logits, stream = _autocast_run(variant)
    assert logits.dtype == torch.float32
    assert stream == [torch.float32]


def test_the_record_shape_forward_compiles_to_one_graph():
    """torch.compile of pg-ternary's forward (its options at tiny widths, autocast, the warm-up's lambda as a
    tensor as the trainer sets it under compile): one graph, no break (an .item(), a host copy, a
    data-dependent branch would each split it and leave the pieces between graphs eager)."""
    from shared.spec.config import RunConfig
    from shared.spec.presets import get_preset
    d = get_preset("pg-ternary").to_dict()
    d["model"].update(vocab_size=256, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, embed_dim=32, max_position_embeddings=64)
    d["train"].update(seq_len=16)
    model = Model(RunConfig.from_dict(d), seed=0)
    model.check_ids = False
    model.set_quant_lambda(torch.full((), 0.5))
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(torch.zeros((2, 16), dtype=torch.int64))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
