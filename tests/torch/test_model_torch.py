"""PyTorch-specific checks: parameter names against the spec, no stray buffers, lambda warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.spec.params import parameter_shapes, ternary_parameters
from tests.variants import VARIANTS, tiny_config, variant_config
from ternary_cuda.model import Model


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_names_match_the_spec(variant):
    cfg = variant_config(variant)
    model = Model(cfg)
    got = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert got == parameter_shapes(cfg.model)
    assert list(model.state_dict()) == list(got)  # no buffers that a checkpoint would miss
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert sorted(model.ternary_modules()) == sorted(ternary_parameters(cfg))


def test_quant_lambda_interpolates_between_float_and_ternary():
    cfg = tiny_config()
    float_cfg = tiny_config(ternary=dict(enabled=False))
    model, float_model = Model(cfg, seed=2), Model(float_cfg, seed=2)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, cfg.model.vocab_size, (1, 9)))
    with torch.no_grad():
        model.set_quant_lambda(0.0)
        torch.testing.assert_close(model(ids), float_model(ids), atol=1e-6, rtol=0)
        model.set_quant_lambda(1.0)
        assert (model(ids) - float_model(ids)).abs().max() > 1e-3
