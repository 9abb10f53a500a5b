"""Depth recurrence, stochastic depth and the mixture-of-experts MLP (issue #11) beyond the variant rows:
stochastic depth's masks (drawn in NumPy, the same in both backends and the reference; evaluation is
the plain forward), top-k ties, the balance loss (value, gradients, training steps, metrics.jsonl)
and the configurations refused. The variant rows (tests/variants.py) put the models through every
parity suite."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import ternary_cuda.experts as TE
import ternary_mlx.experts as ME
from shared.spec.config import ConfigError
from shared.spec.init import init_weights
from shared.spec.layer_drop import drop_probabilities, layer_keep_scales
from shared.spec.reference_model import chosen_experts as ref_chosen
from shared.spec.reference_model import reference_forward
from ternary_cuda.loss import cross_entropy as torch_ce
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx.loss import cross_entropy as mlx_ce
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer
from tests.train.common import config, records, run
from tests.variants import tiny_config, variant_config

from .helpers import record, varied_weights

MOE_ROW = "moe2-recur-L3-U2-stochdepth0.5-mix-G32"


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _mlx(model, ids, keep=None, with_aux=False):
    out = model(mx.array(ids), None if keep is None else mx.array(keep), with_aux=with_aux)
    return (np.array(out[0]), float(out[1])) if with_aux else np.array(out)


def _torch(model, ids, keep=None, with_aux=False):
    with torch.no_grad():
        out = model(torch.from_numpy(ids), None if keep is None else torch.from_numpy(keep), with_aux=with_aux)
    return (out[0].numpy(), float(out[1])) if with_aux else out.numpy()


# ---- stochastic depth -----------------------------------------------------------------------------
def test_drop_probabilities_are_linear_over_depth_and_the_masks_scale_kept_layers():
    m = tiny_config(num_hidden_layers=4, stochastic_depth=0.4).model
    assert np.allclose(drop_probabilities(m), [0.1, 0.2, 0.3, 0.4])
    keep = layer_keep_scales(m, seed=3, step=7, rank=0, micro_batches=50, batch=200)
    assert keep.shape == (50, 4, 200) and keep.dtype == np.float32
    for i, p in enumerate(drop_probabilities(m)):
        values = keep[:, i]
        assert set(np.unique(values)) == {np.float32(0.0), np.float32(1.0 / (1.0 - p))}
        assert abs((values == 0).mean() - p) < 0.01  # 10,000 draws per layer
        assert abs(values.mean() - 1.0) < 0.02  # the scale keeps each branch's expectation
    again = layer_keep_scales(m, seed=3, step=7, rank=0, micro_batches=50, batch=200)
    assert np.array_equal(keep, again)  # the same (seed, step, rank): the same draws (resume, backends)
    for other in (dict(seed=4, step=7, rank=0), dict(seed=3, step=8, rank=0), dict(seed=3, step=7, rank=1)):
        assert not np.array_equal(keep, layer_keep_scales(m, micro_batches=50, batch=200, **other))


@pytest.mark.parametrize("variant", ["float-recur-L3-U1-stochdepth0.3", MOE_ROW])
def test_a_mask_gives_the_references_logits_and_no_mask_is_the_plain_forward(variant):
    cfg = variant_config(variant)
    plain = variant_config(variant, stochastic_depth=0.0)
    w = varied_weights(cfg, init_weights(cfg.model, seed=2), np.random.default_rng(3))
    ids = np.random.default_rng(4).integers(0, cfg.model.vocab_size, (6, 17))
    keep = layer_keep_scales(cfg.model, seed=0, step=1, rank=0, micro_batches=1, batch=6)[0]
    assert (keep == 0).any() and (keep > 1).any()  # some layer dropped, some kept and scaled
    ref, _ = reference_forward(cfg, w, ids, 1.0, keep)
    ref_plain, _ = reference_forward(cfg, w, ids)
    assert np.abs(ref - ref_plain).max() > 1e-2  # the mask matters
    worst = 0.0
    for M, logits in ((MLXModel, _mlx), (TorchModel, _torch)):
        model = M(cfg, w)
        worst = max(worst, float(np.abs(logits(model, ids, keep) - ref).max()))
        # evaluation and generation (no mask) are the option-off model's forward, to the bit
        assert np.array_equal(logits(model, ids), logits(M(plain, w), ids))
        assert np.array_equal(logits(model, ids), logits(model, ids, np.ones_like(keep)))
    record("stochastic_depth", variant, max_abs_diff=worst)
    assert worst < 1e-5


# ---- experts: ties, balance loss, gradients --------------------------------------------------------
TIES = np.array([[[1.0, 1.0, 1.0], [0.5, 2.0, 2.0], [3.0, -1.0, 3.0], [0.0, 0.0, -0.5], [-2.0, 1.0, 0.5]]],
                np.float32)
EXPECTED = {1: [[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]],
            2: [[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]]}


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_ties_go_to_the_lower_index_in_numpy_mlx_and_torch(k):
    expected = np.array(EXPECTED[k], np.float64)[None]
    assert np.array_equal(ref_chosen(TIES.astype(np.float64), k), expected)
    assert np.array_equal(np.array(ME.chosen_experts(mx.array(TIES), k)), expected)
    assert np.array_equal(ME.chosen_experts(mx.array(TIES), k).sum(axis=-1), np.full((1, 5), k))
    assert np.array_equal(TE.chosen_experts(torch.from_numpy(TIES), k).numpy(), expected)


def test_a_zero_router_ties_everywhere_and_every_token_takes_expert_zero():
    """All router logits equal: expert 0 for every token in both backends and the reference, at gate
    1/E, i.e. a plain MLP with expert 0's weights and its down projection divided by E."""
    cfg = variant_config("moe3-top1-silu-G64", ternary=dict(enabled=False))
    w = varied_weights(cfg, init_weights(cfg.model, seed=2), np.random.default_rng(3))
    plain = {k: v for k, v in w.items() if ".mlp." not in k}
    for i in range(cfg.model.num_hidden_layers):
        p = f"model.layers.{i}.mlp."
        w[p + "router.weight"] = np.zeros_like(w[p + "router.weight"])
        for n in ("gate_proj", "up_proj", "down_proj"):
            plain[f"{p}{n}.weight"] = w[f"{p}experts.0.{n}.weight"] / (3.0 if n == "down_proj" else 1.0)
    ids = np.random.default_rng(4).integers(0, 256, (2, 9))
    aux = []
    ref, _ = reference_forward(cfg, w, ids, 1.0, None, aux)
    # f = (1, 0, 0), P = (1/3, 1/3, 1/3): E * sum f P = 1, as for a balanced router (P is uniform)
    assert np.allclose(aux, [1.0, 1.0], rtol=0, atol=1e-12)
    expect, _ = reference_forward(variant_config("float-gqa-untied", tie_word_embeddings=True), plain, ids)
    assert np.abs(ref - expect).max() < 1e-6  # 1/3 in float32 (the plain down projection) vs float64
    for M, logits in ((MLXModel, _mlx), (TorchModel, _torch)):
        out, balance = logits(M(cfg, w), ids, with_aux=True)
        assert abs(balance - 1.0) < 1e-6
        assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("variant", ["moe3-top1-silu-G64", "moe3-top2-relu2-untied-pertensor-embed-head", MOE_ROW])
def test_balance_loss_matches_the_reference_and_its_gradients_agree(variant):
    cfg = variant_config(variant)
    w = varied_weights(cfg, init_weights(cfg.model, seed=5), np.random.default_rng(6), gains=False)
    ids = np.random.default_rng(1).integers(0, cfg.model.vocab_size, (2, 33))
    aux = []
    reference_forward(cfg, w, ids[:, :-1], 1.0, None, aux)
    ref_balance = float(np.mean(aux))
    coef = 0.5  # large, so the balance term's gradient is not lost under the cross-entropy's

    def mlx_objective(model, x, y):
        logits, balance = model(x, with_aux=True)
        return mlx_ce(logits, y) + coef * balance, balance

    m_mlx = MLXModel(cfg, w)
    (obj_m, bal_m), gm = nn.value_and_grad(m_mlx, lambda x, y: mlx_objective(m_mlx, x, y))(
        mx.array(ids[:, :-1]), mx.array(ids[:, 1:]))
    gm = {k: np.array(v) for k, v in tree_flatten(gm)}
    m_t = TorchModel(cfg, w)
    logits, bal_t = m_t(torch.from_numpy(ids[:, :-1]), with_aux=True)
    obj_t = torch_ce(logits, torch.from_numpy(ids[:, 1:])) + coef * bal_t
    obj_t.backward()
    gt = {k: p.grad.numpy() for k, p in m_t.named_parameters()}
    assert abs(float(bal_m) - ref_balance) < 1e-5 and abs(float(bal_t.detach()) - ref_balance) < 1e-5
    assert abs(float(obj_m) - float(obj_t.detach())) < 1e-5
    assert sorted(gm) == sorted(gt)
    worst = 0.0
    for k in gt:
        scale = float(np.abs(gt[k]).max())
        assert scale > 0, f"{k}: zero gradient"
        worst = max(worst, float(np.abs(gm[k] - gt[k]).max()) / scale)
    record("moe_grad_rel_diff", variant, max_rel_diff=worst, balance=ref_balance)
    assert worst < 1e-4
    # the balance term reaches the router: its gradient changes with the coefficient
    m_t.zero_grad()
    logits, bal_t = m_t(torch.from_numpy(ids[:, :-1]), with_aux=True)
    torch_ce(logits, torch.from_numpy(ids[:, 1:])).backward()
    router = "model.layers.0.mlp.router.weight"
    assert np.abs(m_t.get_parameter(router).grad.numpy() - gt[router]).max() > 1e-4 * np.abs(gt[router]).max()


# ---- training: both trainers, the loop's metrics -----------------------------------------------------
TRAIN = dict(warmup_steps=2, lr=3e-3, moe_aux_loss=0.05, z_loss=1e-3, grad_accum=2, steps=5)


def _losses(Trainer, Model, cfg, data, seed=1):
    trainer = Trainer(cfg, Model(cfg, seed=seed))
    return np.array(trainer.fetch([trainer.step(w, i) for i, w in enumerate(data)]))


# Muon starts from model seed 3 (adamw keeps 1): at seed 1, before step 5, one latent weight's
# |w| / scale sat 6e-8 (1 ulp) from 0.5 on torch's side while the backends' weights differed by 4.2e-7
# of the scale, so its code was a coin toss on the BLAS's rounding (it flipped with OpenBLAS on 1
# thread and with MLX's BLAS before the float64 router: loss 1.98e-4 off against 1e-4). Seed 3's nearest
# weight over the 5 steps is 2.6e-6 away and at least 12x its backends' difference, with MLX's BLAS
# and OpenBLAS on 1 or 2 threads; its losses agree to 9.7e-7 (seeds 2 and 4: 4.2x and 6.5x).
SEED = {"adamw": 1, "muon": 3}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_first_steps_with_balance_loss_and_stochastic_depth_agree(optimizer):
    cfg = variant_config(MOE_ROW, train={**TRAIN, "optimizer": optimizer})
    data = [np.random.default_rng(0).integers(0, 256, (2, 4, 17)).astype(np.int32)] * 5
    seed = SEED[optimizer]
    mlx_out = _losses(MLXTrainer, MLXModel, cfg, data, seed)
    torch_out = _losses(TorchTrainer, TorchModel, cfg, data, seed)
    assert mlx_out.shape == (5, 4)  # (loss, grad_norm, z_loss, moe_aux_loss)
    rel = np.abs(mlx_out - torch_out) / np.abs(torch_out)
    record("train", f"{MOE_ROW}/{optimizer}-aux-stochdepth", max_rel=float(rel.max()))
    assert rel.max() < 1e-4
    assert (mlx_out[:, 3] > 0.9 * TRAIN["moe_aux_loss"]).all()  # the weighted balance loss, >= coef at balance
    assert mlx_out[-1, 0] < mlx_out[0, 0]
    # the masks are used: without stochastic depth the same steps give other losses
    off = variant_config(MOE_ROW, stochastic_depth=0.0, train={**TRAIN, "optimizer": optimizer})
    assert np.abs(_losses(MLXTrainer, MLXModel, off, data, seed)[:, 0] - mlx_out[:, 0]).max() > 1e-3


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_metrics_carry_the_balance_loss_as_its_own_term(tmp_path, name):
    cfg = config("model.moe_num_experts=3", "model.num_hidden_layers=3", "model.num_unique_layers=2",
                 "model.stochastic_depth=0.2", "train.moe_aux_loss=0.01", "train.z_loss=1e-4", "train.steps=3")
    run(cfg, name, tmp_path / "run")
    recs = [r for r in records(tmp_path / "run") if "eval" not in r]
    assert len(recs) == 3
    assert all(0.009 < r["moe_aux_loss"] < 0.03 and 0 < r["z_loss"] for r in recs)


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_a_resumed_run_draws_the_same_masks(tmp_path, name):
    """Stochastic depth's masks are keyed by the step: 4 steps, resumed to 8 == 8 steps, to the bit."""
    opts = ("model.stochastic_depth=0.5", "model.moe_num_experts=2", "train.moe_aux_loss=0.01",
            "train.checkpoint_every=4", "train.log_every=1")
    run(config(*opts, "train.steps=8"), name, tmp_path / "full")
    run(config(*opts, "train.steps=4"), name, tmp_path / "part")
    run(config(*opts, "train.steps=8"), name, tmp_path / "part", resume=tmp_path / "part" / "checkpoint")
    def steps(out):
        return [(r["step"], r["loss"], r["moe_aux_loss"]) for r in records(out) if "eval" not in r]
    assert steps(tmp_path / "part") == steps(tmp_path / "full") and len(steps(tmp_path / "full")) == 8


# ---- what is refused ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(num_unique_layers=2), "model.num_unique_layers: must be below model.num_hidden_layers = 2"),
    (dict(num_unique_layers=0), "model.num_unique_layers: must be positive"),
    (dict(stochastic_depth=1.0), r"model.stochastic_depth: must be in \[0, 1\)"),
    (dict(moe_num_experts=1), "model.moe_num_experts: must be 0"),
    (dict(moe_top_k=2), "model.moe_top_k: needs model.moe_num_experts"),
    (dict(moe_num_experts=2, moe_top_k=3), "must not exceed model.moe_num_experts = 2"),
    (dict(moe_num_experts=2, subln=True), "model.subln is not supported with experts"),
    (dict(moe_num_experts=2, zero_init_output_proj=True), "zero_init_output_proj is not supported"),
    (dict(train=dict(moe_aux_loss=0.01)), "train.moe_aux_loss=0.01 .* model.moe_num_experts is 0"),
])
def test_refused_configurations_name_the_key(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**kw)


def test_recurrence_stores_only_the_unique_blocks():
    m = tiny_config(num_hidden_layers=6, num_unique_layers=2).model
    names = list(init_weights(m))
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"0", "1"}
    # the stored blocks start as a 2-layer model's (the same random streams)
    two = init_weights(tiny_config(num_hidden_layers=2).model)
    assert all(np.array_equal(v, two[k]) for k, v in init_weights(m).items())


def test_a_shared_block_costs_its_flops_once_per_applied_layer():
    from shared.train.promote import flops_per_token
    assert flops_per_token(tiny_config(num_hidden_layers=5, num_unique_layers=2), 64) == \
        flops_per_token(tiny_config(num_hidden_layers=5), 64)
