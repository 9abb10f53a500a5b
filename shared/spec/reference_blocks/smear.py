"""SmearGate (parameter-golf record 2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA): each
position's stream blended with the previous position's, by a learned per-channel gate.

    g = sigmoid(model.smear.gate)            (hidden,), zeros at init: g = 1/2
    x_t = (1 - g) x_t + g x_{t-1}            x_{-1} = 0: position 0 blends with nothing

It acts where the record puts it: after the embedding norm, so its output is x0.
"""
from __future__ import annotations

import numpy as np

from shared.spec.blocks import BlockPlugin
from shared.spec.options import CONTROL, OURS, ModelOption, ParamRule

_GATE = ParamRule("model.smear.gate", lambda m: (m.hidden_size,), CONTROL, after="model.norm.weight",
                  init="zeros", scope="model")

PLUGIN = BlockPlugin(
    "smear",
    options=(ModelOption("smear", bool, False,
                         "the record's SmearGate after the embedding (norm): x_t = (1 - g) x_t + g x_{t-1}, "
                         "g = sigmoid(model.smear.gate) per channel, x_{-1} = 0",
                         OURS, "no blend with the previous position", params=lambda v: (_GATE,) if v else (),
                         example=True),),
    hooks=("stream",),
    doc="SmearGate: a causal per-channel blend with the previous position")


def stream(x: np.ndarray, ids: np.ndarray, i, fp) -> np.ndarray:
    g = 1.0 / (1.0 + np.exp(-fp.w["model.smear.gate"]))
    prev = np.zeros_like(x)
    prev[:, 1:] = x[:, :-1]
    return (1.0 - g) * x + g * prev
