"""MLX-specific checks: parameter tree against the spec's names, compile, lambda warm-up."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from shared.spec.params import parameter_shapes, ternary_parameters
from tests.variants import VARIANTS, tiny_config, variant_config
from ternary_mlx.loss import next_token_loss
from ternary_mlx.model import Model


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_tree_matches_the_spec(variant):
    cfg = variant_config(variant)
    model = Model(cfg)
    got = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    assert got == parameter_shapes(cfg.model)
    assert sorted(model.ternary_modules()) == sorted(ternary_parameters(cfg))


def test_compiled_loss_and_grad_equal_eager():
    cfg = tiny_config()
    model = Model(cfg, seed=1)
    model.check_ids = False  # compiled code cannot read values back to the host
    ids = mx.array(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 17)))
    x, y = ids[:, :-1], ids[:, 1:]
    f = nn.value_and_grad(model, lambda a, b: next_token_loss(model, a, b))
    loss, grads = f(x, y)
    closs, cgrads = mx.compile(f)(x, y)
    assert abs(float(loss) - float(closs)) < 1e-6
    for (k, g), (_, cg) in zip(tree_flatten(grads), tree_flatten(cgrads)):
        np.testing.assert_allclose(np.array(cg), np.array(g), atol=1e-6, err_msg=k)


def test_quant_lambda_interpolates_between_float_and_ternary():
    cfg = tiny_config()
    float_cfg = tiny_config(ternary=dict(enabled=False))
    model, float_model = Model(cfg, seed=2), Model(float_cfg, seed=2)
    ids = mx.array(np.random.default_rng(1).integers(0, cfg.model.vocab_size, (1, 9)))
    model.set_quant_lambda(0.0)
    np.testing.assert_allclose(np.array(model(ids)), np.array(float_model(ids)), atol=1e-6)
    model.set_quant_lambda(1.0)
    assert np.abs(np.array(model(ids)) - np.array(float_model(ids))).max() > 1e-3
