"""Resuming through shared.train.runner.train continues the run exactly where it stopped.

12 uninterrupted steps (checkpoint_every=6, log_every=1: metrics.jsonl holds every step's loss)
against 6 steps, then `resume=` into the same directory with train.steps=12. train.warmup_steps is
the default 10, so the resumed steps 7-10 are still in the LR warm-up: a resume that restarted the
step counter (and so the schedule) would change their losses.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from shared.spec import checkpoint as fmt
from shared.spec.config import ConfigError
from shared.data.dataset import load_token_dataset
from shared.data.loader import TokenLoader
from shared.data.tokenizers import get_tokenizer
from tests.train.common import config, run, train_losses, trainer_state

STEPS, HALF = 12, 6
TOKENS_PER_STEP = 4 * 32  # batch_size * seq_len


@pytest.fixture(scope="module", params=["mlx", "torch"])
def runs(request, tmp_path_factory):
    name = request.param
    tmp = tmp_path_factory.mktemp(f"resume-{name}")
    full, part = tmp / "full", tmp / "part"
    run(config(f"train.steps={STEPS}", f"train.checkpoint_every={HALF}"), name, full)
    _, _, logs_half = run(config(f"train.steps={HALF}", f"train.checkpoint_every={HALF}"), name, part)
    saved = tmp / "saved-at-6"
    shutil.copytree(part / "checkpoint", saved)  # the resumed run overwrites part/checkpoint
    result, _, logs = run(config(f"train.steps={STEPS}", f"train.checkpoint_every={HALF}"), name, part,
                          resume=part / "checkpoint")
    return {"name": name, "tmp": tmp, "full": full, "part": part, "saved": saved,
            "result": result, "logs": logs, "logs_half": logs_half}


def assert_same(name, got, want):
    """Bit-exact in both backends: torch runs eagerly, and MLX's compiled step is deterministic and
    rebuilt identically from the checkpoint (on this machine's CPU build the resumed MLX run matches
    to the last bit as well; `name` says which backend failed)."""
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"backend {name}")


def test_resumed_losses_equal_uninterrupted(runs):
    full = dict(train_losses(runs["full"]))
    part = train_losses(runs["part"])
    assert sorted(full) == list(range(1, STEPS + 1))
    assert [s for s, _ in part] == list(range(1, STEPS + 1))  # 1-6, then 7-12: no step twice, none lost
    assert_same(runs["name"], [l for _, l in part], [full[s] for s in range(1, STEPS + 1)])
    assert runs["result"].step == STEPS and runs["result"].stopped_because == "finished"
    assert any(f"at step {HALF}" in m and "resuming" in m for m in runs["logs"])


def test_resumed_final_weights_and_optimizer_equal_uninterrupted(runs):
    _, w_full = fmt.read_checkpoint(runs["full"] / "checkpoint")
    _, w_part = fmt.read_checkpoint(runs["part"] / "checkpoint")
    o_full, meta_full = fmt.read_optimizer(runs["full"] / "checkpoint")
    o_part, meta_part = fmt.read_optimizer(runs["part"] / "checkpoint")
    assert meta_full["step"] == meta_part["step"] == STEPS
    for k in w_full:
        assert_same(runs["name"], w_part[k], w_full[k])
    assert sorted(o_full) == sorted(o_part)
    for k in o_full:
        assert_same(runs["name"], o_part[k], o_full[k])


def test_trainer_state_fields(runs):
    cfg = config()
    tokens = load_token_dataset("synthetic", get_tokenizer("bytes"), synthetic_train_bytes=50000,
                                synthetic_val_bytes=10000, seed=0).train
    loader = TokenLoader(tokens, 4, 32, seed=cfg.train.seed, log=lambda _m: None)
    for _ in range(HALF):
        loader.next_batch()
    at6 = trainer_state(runs["saved"])
    assert at6["step"] == HALF
    assert at6["tokens_seen"] == HALF * TOKENS_PER_STEP
    assert at6["loader"] == loader.state()
    assert at6["loader"]["position"] == HALF * 4 and at6["loader"]["epoch"] == 0
    assert at6["saved_because"] == "final" and at6["seed"] == 0
    for _ in range(STEPS - HALF):
        loader.next_batch()
    at12 = trainer_state(runs["part"] / "checkpoint")
    assert at12["step"] == STEPS and at12["tokens_seen"] == STEPS * TOKENS_PER_STEP
    assert at12["loader"] == loader.state() == trainer_state(runs["full"] / "checkpoint")["loader"]
    assert at12["train_time_s"] > at6["train_time_s"]  # the resumed run adds to the saved time


def test_optimizer_state_matters(runs):
    """Resuming from the same checkpoint with its optimizer state zeroed: step 7 (computed on the
    restored weights, before any update) is unchanged, the later steps are not. So the equality
    above depends on the restored optimizer state, not just on weights, data position and step."""
    saved, tmp = runs["saved"], runs["tmp"]
    cfg_saved, weights = fmt.read_checkpoint(saved)
    opt, meta = fmt.read_optimizer(saved)
    assert any(np.abs(v).max() > 0 for v in opt.values())
    zeroed = tmp / "zeroed"
    fmt.write_checkpoint(zeroed, cfg_saved, weights, writer={"backend": "test"},
                         optimizer_state={k: np.zeros_like(v) for k, v in opt.items()},
                         optimizer_meta=meta, trainer_state=trainer_state(saved))
    out = tmp / "zeroed-run"
    run(config(f"train.steps={STEPS}"), runs["name"], out, resume=zeroed)
    got = dict(train_losses(out))
    full = dict(train_losses(runs["full"]))
    assert sorted(got) == list(range(HALF + 1, STEPS + 1))
    assert_same(runs["name"], got[HALF + 1], full[HALF + 1])
    diffs = [abs(got[s] - full[s]) for s in range(HALF + 2, STEPS + 1)]
    assert max(diffs) > 1e-3, diffs


def test_resume_without_optimizer_state_is_refused(runs, tmp_path):
    cfg_saved, weights = fmt.read_checkpoint(runs["saved"])
    bare = tmp_path / "bare"
    fmt.write_checkpoint(bare, cfg_saved, weights, writer={"backend": "test"},
                         trainer_state=trainer_state(runs["saved"]))
    with pytest.raises(fmt.CheckpointError, match="no optimizer state"):
        run(config(f"train.steps={STEPS}"), runs["name"], tmp_path / "out", resume=bare)


def test_cross_backend_resume_through_the_loop(tmp_path):
    """6 steps in MLX, resumed in torch to 12 == 12 steps in torch alone (to 2e-4 relative).

    Float mode (ternary.enabled=false): the backends agree only to float rounding, and with ternary
    weights a one-ulp difference can flip a code and send the runs apart chaotically; in float mode
    the difference stays at rounding level, so the test sees the loop's resume (step, loader
    position, optimizer state, schedule), not quantization noise."""
    flt = "ternary.enabled=false"
    crossed, alone = tmp_path / "crossed", tmp_path / "alone"
    run(config(flt, f"train.steps={HALF}"), "mlx", crossed)
    assert trainer_state(crossed / "checkpoint")["step"] == HALF
    run(config(flt, f"train.steps={STEPS}"), "torch", crossed, resume=crossed / "checkpoint")
    run(config(flt, f"train.steps={STEPS}"), "torch", alone)
    got, want = train_losses(crossed), train_losses(alone)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=2e-4)
    assert want[-1][1] < want[0][1] - 0.5  # it trains: the comparison is not between flat lines
    assert trainer_state(crossed / "checkpoint")["loader"] == trainer_state(alone / "checkpoint")["loader"]


@pytest.mark.parametrize("override", ["ternary.group_size=64", "data.seed=1", "model.rope_theta=500.0"])
def test_resume_refuses_a_changed_model_ternary_or_data_config(runs, tmp_path, override):
    """Only train.* may change on resume. None of these changes the weight shapes or the number of
    training windows, so without the check the run would continue silently on another model or
    another corpus (data.seed draws a different synthetic text of the same length)."""
    section = override.split(".")[0]
    shutil.copytree(runs["saved"], tmp_path / "run" / "checkpoint")
    toml = fmt.read_config(runs["saved"]).to_toml()
    (tmp_path / "run" / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=f"{section}.. cannot change when resuming"):
        run(config(f"train.steps={STEPS}", override), runs["name"], tmp_path / "run",
            resume=tmp_path / "run" / "checkpoint")
    assert (tmp_path / "run" / "config.toml").read_text() == toml  # the refused run changed nothing
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_init_starts_a_new_run_from_the_weights(runs, tmp_path):
    """init= loads the weights only: the new run counts from step 1 with fresh data and optimizer;
    its first loss is that of the trained weights (far below the untrained model's ln(256))."""
    out = tmp_path / "init"
    result, _, logs = run(config("train.steps=2"), runs["name"], out, init=runs["saved"])
    losses = train_losses(out)
    assert [s for s, _ in losses] == [1, 2] and result.step == 2
    full = dict(train_losses(runs["full"]))
    assert losses[0][1] < full[1] - 0.5
    assert trainer_state(out / "checkpoint")["loader"]["position"] == 2 * 4
    assert any("initialising weights" in m for m in logs)
    with pytest.raises(ConfigError, match="model config differs"):
        run(config("train.steps=2", "model.rope_theta=500.0"), runs["name"], tmp_path / "bad", init=runs["saved"])
