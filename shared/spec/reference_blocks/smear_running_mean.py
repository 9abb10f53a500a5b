"""The parameter-golf ternary record's SMEAR=1 (its SmearModule, train_gpt_cuda_ternary.py; also the
binary record's): after every layer, each position moves towards the running mean of the stream
up to it, by a learned per-channel amount.

    mean_t = (x_0 + ... + x_t) / (t + 1)                  causal: position t sees positions <= t
    x_t = x_t + tanh(g_i) * (mean_t - x_t)                g_i = model.smear_running_mean.gate[i]

The gate starts at zero, so the model starts as it would without it. It acts after layer i, before
a U-Net encoder layer pushes its output (the record applies it at the end of each block).
"""
from __future__ import annotations

import numpy as np

from shared.spec.blocks import BlockPlugin
from shared.spec.options import CONTROL, OURS, ModelOption, ParamRule

_GATE = ParamRule("model.smear_running_mean.gate", lambda m: (m.num_hidden_layers, m.hidden_size), CONTROL,
                  after="model.norm.weight", init="zeros", scope="model")

PLUGIN = BlockPlugin(
    "smear_running_mean",
    options=(ModelOption("smear_running_mean", bool, False,
                         "the ternary record's SMEAR: after layer i, x_t += tanh(g_i) * (mean(x_0..x_t) - x_t), "
                         "g = model.smear_running_mean.gate (layers, hidden), zeros at init",
                         OURS, "no running-mean smear", params=lambda v: (_GATE,) if v else (), example=True),),
    hooks=("layer_output",),
    doc="the ternary record's SMEAR: a causal running-mean gate after every layer")


def layer_output(x: np.ndarray, ids: np.ndarray, i, fp) -> np.ndarray:
    T = x.shape[1]
    mean = np.cumsum(x, axis=1) / np.arange(1, T + 1, dtype=np.float64)[None, :, None]
    return x + np.tanh(fp.w["model.smear_running_mean.gate"][i]) * (mean - x)
