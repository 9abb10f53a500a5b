"""SubLN (issue 4): sub-norms before o_proj and down_proj, HF BitNet names, blended in by the
quantization warm-up so that a float model starts unchanged; same in both backends."""
from __future__ import annotations

import numpy as np
import pytest

from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import parameter_shapes
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer
from tests.parity.helpers import mlx_logits, torch_logits
from tests.train.common import run as run_training
from tests.variants import TINY, tiny_sets

BASE = tiny_sets(head_dim=8)  # the attention sub-norm is heads x head_dim = 32 wide, not hidden (64)


def test_subln_names_and_shapes():
    cfg = RunConfig().with_overrides(BASE + ["model.subln=true"])
    shapes = parameter_shapes(cfg.model)
    extra = set(shapes) - set(parameter_shapes(RunConfig().with_overrides(BASE).model))
    assert extra == {f"model.layers.{i}.{n}" for i in range(2)
                     for n in ("self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight")}
    assert shapes["model.layers.0.self_attn.attn_sub_norm.weight"] == (32,)  # heads * head_dim, not hidden
    assert shapes["model.layers.1.mlp.ffn_sub_norm.weight"] == (TINY["intermediate_size"],)
    for Model in (MLXModel, TorchModel):
        assert set(Model(cfg).numpy_weights()) == set(shapes)


@pytest.mark.parametrize("Model,logits", [(MLXModel, mlx_logits), (TorchModel, torch_logits)], ids=["mlx", "torch"])
def test_lambda_zero_leaves_the_model_unchanged_and_one_changes_it(Model, logits):
    plain = RunConfig().with_overrides(BASE)
    sub = RunConfig().with_overrides(BASE + ["model.subln=true"])
    w = Model(plain, seed=4).numpy_weights()
    w_sub = dict(w, **{k: np.ones(v, np.float32) for k, v in parameter_shapes(sub.model).items() if k not in w})
    ids = np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, 9))
    m_plain, m_sub = Model(plain, w), Model(sub, w_sub)
    m_plain.set_quant_lambda(0.0)
    m_sub.set_quant_lambda(0.0)
    np.testing.assert_array_equal(logits(m_sub, ids), logits(m_plain, ids))
    m_plain.set_quant_lambda(1.0)
    m_sub.set_quant_lambda(1.0)
    assert np.abs(logits(m_sub, ids) - logits(m_plain, ids)).max() > 1e-2  # the norms are really applied


def test_subln_training_steps_agree_across_backends():
    cfg = RunConfig().with_overrides(BASE + ["model.subln=true", "ternary.warmup_steps=3", "train.lr=3e-3"])
    w = MLXModel(cfg, seed=1).numpy_weights()
    rng = np.random.default_rng(0)
    data = [rng.integers(0, TINY["vocab_size"], (1, 4, 17)).astype(np.int32)] * 5
    out = {}
    for name, Model, Trainer in (("mlx", MLXModel, MLXTrainer), ("torch", TorchModel, TorchTrainer)):
        tr = Trainer(cfg, Model(cfg, w))
        out[name] = np.array(tr.fetch([tr.step(x, i) for i, x in enumerate(data)]))[:, 0]
        moved = tr.model.numpy_weights()["model.layers.0.mlp.ffn_sub_norm.weight"]
        assert not np.allclose(moved, 1.0)  # the sub-norm gains are trained
    np.testing.assert_allclose(out["mlx"], out["torch"], rtol=1e-4)


SMALL_RUN = BASE + ["model.vocab_size=512", "train.steps=2", "train.batch_size=2", "train.seq_len=16",
                    "train.eval_every=0", "train.eval_tokens=256", "data.synthetic_train_bytes=20000",
                    "data.synthetic_val_bytes=4000"]


def test_init_adds_subln_to_a_checkpoint_without_it(tmp_path):
    plain = RunConfig().with_overrides(SMALL_RUN + ["ternary.enabled=false"])
    run_training(plain, "mlx", tmp_path / "float")
    sub = RunConfig().with_overrides(SMALL_RUN + ["model.subln=true", "ternary.warmup_steps=10"])
    _, summary, logs = run_training(sub, "torch", tmp_path / "ft", init=tmp_path / "float" / "checkpoint")
    assert any("SubLN added" in line and "starts unchanged" in line for line in logs)
    assert np.isfinite(summary["val_bpb"])
    other = RunConfig().with_overrides(SMALL_RUN + ["model.subln=true", "model.rms_norm_eps=1e-5"])
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        run_training(other, "mlx", tmp_path / "bad", init=tmp_path / "float" / "checkpoint")


def test_hf_export_refuses_subln():
    from convert.formats.hf_export import check_expressible
    cfg = RunConfig().with_overrides(BASE + ["model.subln=true"])
    with pytest.raises(ConfigError, match="subln"):
        check_expressible(cfg)
