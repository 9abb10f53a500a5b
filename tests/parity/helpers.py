"""Shared helpers for the parity tests: running both backends, reporting differences. (The tiny
configs are tests/variants.py's.)"""
from __future__ import annotations

import json
import os

import numpy as np


def mlx_logits(model, ids: np.ndarray) -> np.ndarray:
    import mlx.core as mx
    out = model(mx.array(ids))
    mx.eval(out)
    return np.array(out.astype(mx.float32))


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, np.int64))).float().numpy()


def varied_weights(cfg, weights: dict[str, np.ndarray], rng: np.random.Generator,
                   gains: bool = True) -> dict[str, np.ndarray]:
    """`weights` made informative for a comparison. With `gains`, every norm gain and control tensor
    becomes uniform in [0.5, 1.5]: unit gains would hide a swapped norm, and a zero row (resid_mix's
    x0 row) an input that is never read. Every tensor whose init is zeros (a zero-initialised
    projection) becomes N(0, initializer_range): a zero projection hides everything before it.
    Draws follow the order of `weights`, one per changed tensor."""
    from shared.spec.options import CONTROL, NORM
    from shared.spec.params import parameter_specs
    specs, out = parameter_specs(cfg.model), {}
    for k, v in weights.items():
        if gains and specs[k].role in (NORM, CONTROL):
            out[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        elif specs[k].init == "zeros":
            out[k] = (rng.standard_normal(v.shape) * cfg.model.initializer_range).astype(np.float32)
        else:
            out[k] = v
    return out


def next_token_ce(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean next-token cross-entropy in float64 (logits[:, :-1] predict ids[:, 1:])."""
    lg = logits[:, :-1].astype(np.float64)
    tgt = ids[:, 1:]
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(lg, tgt[..., None], -1)[..., 0]
    return float((lse - picked).mean())


def to_bf16_exact(x: np.ndarray) -> np.ndarray:
    """float32 values rounded (to nearest even) onto the bfloat16 grid, still stored as float32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def record(kind: str, case: str, **values) -> None:
    """Print a measured difference (visible with pytest -s) and append it to $PARITY_REPORT as JSON."""
    row = {"kind": kind, "case": case, **{k: (float(v) if isinstance(v, (np.floating, float)) else v)
                                          for k, v in values.items()}}
    print("PARITY", json.dumps(row))
    path = os.environ.get("PARITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
