"""Both backends' models have exactly the parameters of the spec (shared/spec/params.py): names, shapes,
initial values, and the same weights made ternary, for every row of the variant table."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.init import init_weights
from shared.spec.params import parameter_specs, ternary_parameters
from tests.backends import Backend
from tests.variants import VARIANTS, variant_config


@pytest.mark.parametrize("backend_name", ["mlx", "torch"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_parameters_are_the_spec(variant, backend_name):
    cfg = variant_config(variant)
    model = Backend(backend_name).model.Model(cfg, seed=5)
    weights = model.numpy_weights()
    specs = parameter_specs(cfg.model)
    assert sorted(weights) == sorted(specs)  # module order may differ from the canonical order
    init = init_weights(cfg.model, seed=5)
    for name, spec in specs.items():
        assert weights[name].shape == spec.shape, name
        assert np.array_equal(weights[name], init[name]), name
    assert sorted(model.ternary_modules()) == sorted(ternary_parameters(cfg))
