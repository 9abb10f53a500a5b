"""Knowledge distillation (issue 4): the loss, its parity across backends, the frozen teacher, the CLI."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from shared.spec import checkpoint as fmt
from shared.spec.config import ConfigError, RunConfig
from ternary_cuda.loss import distillation_loss as torch_distill
from ternary_cuda.model import Model as TorchModel
from ternary_cuda.train import Trainer as TorchTrainer
from ternary_mlx.loss import distillation_loss as mlx_distill
from ternary_mlx.model import Model as MLXModel
from ternary_mlx.train import Trainer as MLXTrainer
from tests.train.common import run as run_training
from tests.variants import DEFAULT_INIT, TINY, tiny_sets

# the initializer range a real run starts from: these trajectory tolerances were measured there
BASE = tiny_sets(initializer_range=DEFAULT_INIT,
                 train=dict(warmup_steps=2, lr=3e-3))


def reference_loss(logits, targets, teacher, alpha, T):
    """NumPy float64: (1 - alpha) CE + alpha T^2 KL(p_teacher,T || p_student,T)."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    ls = log_softmax(logits.astype(np.float64))
    ce = -np.take_along_axis(ls, targets[..., None], -1).mean()
    ps, pt = log_softmax(logits / T), log_softmax(teacher / T)
    kl = (np.exp(pt) * (pt - ps)).sum(-1).mean()
    return (1 - alpha) * ce + alpha * T * T * kl


@pytest.mark.parametrize("alpha,T", [(0.0, 1.0), (0.5, 2.0), (1.0, 4.0), (0.3, 0.5)])
def test_loss_matches_reference_in_both_backends(alpha, T):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    teacher = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5))
    want = reference_loss(logits, targets, teacher, alpha, T)
    got_mlx = mlx_distill(mx.array(logits), mx.array(targets), mx.array(teacher), alpha, T).item()
    got_torch = torch_distill(torch.tensor(logits), torch.tensor(targets), torch.tensor(teacher), alpha, T).item()
    assert got_mlx == pytest.approx(want, rel=1e-5)
    assert got_torch == pytest.approx(want, rel=1e-5)


def test_kl_term_vanishes_when_student_is_teacher():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (1, 4, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (1, 4))
    pure_kl = torch_distill(torch.tensor(logits), torch.tensor(targets), torch.tensor(logits), 1.0, 2.0).item()
    assert abs(pure_kl) < 1e-6
    assert mlx_distill(mx.array(logits), mx.array(targets), mx.array(logits), 1.0, 2.0).item() == pytest.approx(0, abs=1e-6)


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, TINY["vocab_size"], (1, 4, 17)).astype(np.int32) for _ in range(n)]


def steps(trainer, windows):
    return np.array(trainer.fetch([trainer.step(w, i) for i, w in enumerate(windows)]))


@pytest.mark.parametrize("extra", [[], ["ternary.warmup_steps=3", "train.distill_alpha=1.0",
                                        "train.distill_temperature=3.0"]], ids=["alpha0.5", "kl-only-lambda"])
def test_first_steps_agree_across_backends_with_teacher(extra):
    """Same student, same float teacher, same batches: the same first five losses in MLX and torch,
    and the teacher's weights do not move."""
    cfg = RunConfig().with_overrides(BASE + extra)
    teacher_cfg = RunConfig().with_overrides(BASE + ["ternary.enabled=false"])
    teacher_w = MLXModel(teacher_cfg, seed=7).numpy_weights()
    student_w = MLXModel(cfg, seed=1).numpy_weights()
    data = batches(1) * 5
    out = {}
    for name, Model, Trainer in (("mlx", MLXModel, MLXTrainer), ("torch", TorchModel, TorchTrainer)):
        teacher = Model(teacher_cfg, teacher_w)
        out[name] = steps(Trainer(cfg, Model(cfg, student_w), teacher=teacher), data)[:, 0]
        for k, v in teacher.numpy_weights().items():
            np.testing.assert_array_equal(v, teacher_w[k], err_msg=f"{name}: teacher weight {k} changed")
    np.testing.assert_allclose(out["mlx"], out["torch"], rtol=1e-4)
    assert out["mlx"][-1] < out["mlx"][0]


def test_distillation_changes_the_update():
    """With a teacher the trajectory differs from plain cross-entropy (the teacher is really used)."""
    cfg = RunConfig().with_overrides(BASE)
    teacher_cfg = RunConfig().with_overrides(BASE + ["ternary.enabled=false"])
    w = MLXModel(cfg, seed=1).numpy_weights()
    data = batches(3, seed=2)
    plain = steps(MLXTrainer(cfg, MLXModel(cfg, w)), data)[:, 0]
    distilled = steps(MLXTrainer(cfg, MLXModel(cfg, w), teacher=MLXModel(teacher_cfg, seed=7)), data)[:, 0]
    assert not np.allclose(plain, distilled, rtol=1e-3)


@pytest.mark.parametrize("bad", ["train.distill_alpha=1.5", "train.distill_temperature=0"])
def test_bad_distillation_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="distill"):
        RunConfig().with_overrides([bad])


SMALL_RUN = BASE + ["model.vocab_size=512", "train.steps=4", "train.batch_size=2", "train.seq_len=16",
                    "train.eval_every=0", "train.eval_tokens=256", "data.synthetic_train_bytes=20000",
                    "data.synthetic_val_bytes=4000"]


@pytest.fixture(scope="module")
def float_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = RunConfig().with_overrides(SMALL_RUN + ["ternary.enabled=false"])
    run_training(cfg, "mlx", out)
    return out / "checkpoint"


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_runner_loads_teacher_and_does_not_save_it(tmp_path, float_teacher, name):
    cfg = RunConfig().with_overrides(SMALL_RUN + [f"train.teacher={float_teacher}"])
    result, summary, logs = run_training(cfg, name, tmp_path / "student")
    assert any(line.startswith("teacher: ") and "float" in line for line in logs)
    _, weights = fmt.read_checkpoint(tmp_path / "student" / "checkpoint")
    assert set(weights) == set(MLXModel(cfg).numpy_weights())  # student only: no teacher tensors
    assert fmt.read_config(tmp_path / "student" / "checkpoint").train.teacher == str(float_teacher)
    assert np.isfinite(summary["val_bpb"])


def test_teacher_with_another_vocabulary_is_refused(tmp_path, float_teacher):
    cfg = RunConfig().with_overrides([o for o in SMALL_RUN if not o.startswith("model.vocab_size")]
                                     + ["model.vocab_size=600", f"train.teacher={float_teacher}"])
    with pytest.raises(ConfigError, match="vocab_size 512 differs"):
        run_training(cfg, "mlx", tmp_path / "student")
    assert not (tmp_path / "student").exists()  # refused before anything is written


def test_cli_init_takes_the_checkpoint_config_and_distils(tmp_path, float_teacher):
    """`ternary train --init T --teacher T --set ternary.enabled=true`: the imported/teacher model's own
    config (no preset needed), ternary switched on, the float teacher distilled."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "ft"
    p = subprocess.run([sys.executable, "-m", "convert.cli", "train", "--init", str(float_teacher.parent),
                        "--teacher", str(float_teacher.parent), "--set", "ternary.enabled=true", "train.steps=2",
                        "--out", str(out), "--no-progress"], cwd=root, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "teacher: " in p.stdout and "(float," in p.stdout
    cfg = fmt.read_config(out / "checkpoint")
    teacher_cfg = fmt.read_config(float_teacher)
    assert cfg.model == teacher_cfg.model and cfg.ternary.enabled and not teacher_cfg.ternary.enabled
    assert cfg.train.teacher == str(float_teacher)
