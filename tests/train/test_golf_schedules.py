"""parameter-golf's training definitions (shared/train/schedule.py, optim_rules.py), against values
computed by hand from its formulas, and the schedules through the loop (resumable, as trained)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from shared.spec.config import ConfigError, TrainConfig
from shared.spec.params import parameter_specs
from shared.train.optim_rules import peak_lrs, step_scalars, weight_decay_of
from shared.train.schedule import (batch_shape_at, check_batch_schedule, lr_multiplier, muon_momentum_at,
                                   seq_len_at, tokens_through)
from tests.train.common import Wrapper, config, records, run, train_losses
from tests.variants import tiny_config


def train_cfg(**kw):
    return tiny_config(train=kw).train


def test_warmdown_steps_is_the_baselines_warmdown_iters():
    # train_gpt.py: warmdown_start = max(iters - WARMDOWN_ITERS, 0); (iters - step) / max(WARMDOWN_ITERS, 1)
    t = train_cfg(steps=20, warmup_steps=0, schedule="warmdown", warmdown_steps=5)
    assert [lr_multiplier(s, t) for s in (0, 14, 15, 16, 19)] == [1.0, 1.0, 1.0, 0.8, 0.2]
    longer = train_cfg(steps=4, warmup_steps=0, schedule="warmdown", warmdown_steps=8)
    assert [lr_multiplier(s, longer) for s in range(4)] == [0.5, 0.375, 0.25, 0.125]  # starts at step 0
    off = train_cfg(steps=4, warmup_steps=0, schedule="warmdown", warmdown_steps=0)
    assert [lr_multiplier(s, off) for s in range(4)] == [1.0] * 4


def test_warmdown_frac_matches_the_records_when_whole():
    # the record: from int(iters * (1 - f)) on, (iters - step) / max(iters * f, 1); 2000 x 0.2 = 400
    t = train_cfg(steps=2000, warmup_steps=0, schedule="warmdown", warmdown_frac=0.2)
    assert lr_multiplier(1599, t) == 1.0 and lr_multiplier(1600, t) == 1.0
    assert lr_multiplier(1700, t) == 300 / 400 and lr_multiplier(1999, t) == 1 / 400


def test_muon_momentum_warmup_is_linear_then_flat():
    # frac = min(step / 500, 1); (1 - frac) * 0.85 + frac * 0.95
    t = train_cfg(optimizer="muon", muon_momentum_warmup_start=0.85, muon_momentum=0.95,
                  muon_momentum_warmup_steps=500)
    got = [muon_momentum_at(s, t) for s in (0, 100, 250, 500, 900)]
    np.testing.assert_allclose(got, [0.85, 0.87, 0.90, 0.95, 0.95], rtol=0, atol=1e-15)
    assert muon_momentum_at(0, train_cfg(optimizer="muon")) == 0.95  # off by default: today's constant
    s = step_scalars(250, t)
    assert s["momentum"] == np.float32(0.90) and s["one_minus_momentum"] == np.float32(1 - 0.9)


def test_group_learning_rates_default_to_todays_and_follow_the_spec_groups():
    assert peak_lrs(train_cfg(lr=1e-3, muon_lr=0.02)) == dict(matrix=1e-3, scalar=1e-3, embed=1e-3, head=1e-3)
    assert peak_lrs(train_cfg(optimizer="muon", lr=1e-3, muon_lr=0.02))["matrix"] == 0.02
    t = train_cfg(optimizer="muon", lr_matrix=0.04, lr_scalar=0.02, lr_embed=0.6, lr_head=0.008,
                  warmup_steps=0)
    s = step_scalars(0, t)
    assert [float(s[f"lr_{g}"]) for g in ("matrix", "scalar", "embed", "head")] == [
        np.float32(v) for v in (0.04, 0.02, 0.6, 0.008)]


def test_weight_decay_per_optimizer():
    cfg = tiny_config(tie_word_embeddings=False, train=dict(optimizer="muon", weight_decay=0.1, muon_weight_decay=0.3))
    specs = parameter_specs(cfg.model)
    q, emb, head, norm = (specs[n] for n in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight",
                                              "lm_head.weight", "model.norm.weight"))
    assert [weight_decay_of(p, cfg.train) for p in (q, emb, head, norm)] == [0.3, 0.1, 0.1, 0.0]
    unset = tiny_config(train=dict(optimizer="muon", weight_decay=0.1)).train
    assert weight_decay_of(q, unset) == 0.1  # None: today's single weight_decay


def test_batch_and_seq_switch_at_int_steps_times_fraction():
    # the record: switch when step >= int(iterations * fraction); tokens stay TRAIN_BATCH_TOKENS
    t = train_cfg(steps=100, batch_size=4, seq_len=64, grad_accum=2, seq_len_start=16, seq_schedule_frac=0.33,
                  batch_tokens_start=256, batch_schedule_frac=0.1)
    assert seq_len_at(32, t) == 16 and seq_len_at(33, t) == 64  # int(100 * 0.33) = 33
    assert batch_shape_at(0, t, 1) == (8, 16)  # 256 tokens / (2 micro-batches x 16)
    assert batch_shape_at(10, t, 1) == (16, 16)  # the full 4 x 64 x 2 = 512 tokens in rows of 16
    assert batch_shape_at(33, t, 1) == (4, 64)
    assert batch_shape_at(10, t, 2) == (16, 16)  # per rank: 1024 tokens over 2 ranks
    assert tokens_through(100, t, 1) == 10 * 256 + 90 * 512
    assert tokens_through(5, t, 1) == 5 * 256


def test_a_batch_that_does_not_split_into_rows_is_one_clear_error():
    t = TrainConfig(steps=10, seq_len=64, grad_accum=1, batch_tokens_start=128)
    assert check_batch_schedule(t, 1) is None and "x 3 ranks" in check_batch_schedule(t, 3)
    t.batch_tokens_start = 100
    assert "not a positive multiple" in check_batch_schedule(t, 1)
    with pytest.raises(ConfigError, match="batch_tokens_start"):
        tiny_config(train=dict(steps=10, batch_tokens_start=100))
    with pytest.raises(ConfigError, match="warmdown_steps"):
        tiny_config(train=dict(schedule="cosine", warmdown_steps=5))
    for bad in (dict(muon_ns_steps=0), dict(lr_embed=-1.0), dict(z_loss=-1.0), dict(seq_schedule_frac=2.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            tiny_config(train=bad)
    with pytest.raises(ConfigError, match="float_qat"):
        tiny_config(ternary=dict(float_qat="fp4"))


SCHEDULED = ("train.steps=12", "train.checkpoint_every=6", "train.seq_len_start=16", "train.seq_schedule_frac=0.5",
             "train.batch_tokens_start=64", "train.batch_schedule_frac=0.25", "train.z_loss=1e-3",
             "ternary.float_qat=fp8", "train.temperature_scaling=true", "train.eval_every=6")


class CopyAtSix(Wrapper):
    """Keeps a copy of the checkpoint saved at step 6 (the run goes on and overwrites it)."""
    def save(self, path, state):
        self.inner.save(path, state)
        if state["step"] == 6:
            shutil.copytree(path, path.parent / "saved-at-6")


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_schedules_through_the_loop_resume_exactly(tmp_path, name):
    """Steps 0-2: 4 rows of 16; 3-5: 8 rows of 16 (the full 128 tokens); 6-11: 4 rows of 32. The
    checkpoint at step 6 lies on the sequence switch; resumed, steps 7-12 are the same to the bit."""
    full = tmp_path / "full"
    _, summary, logs = run(config(*SCHEDULED), name, full, wrap=CopyAtSix)
    assert any("sequence length 16 -> 32" in m for m in logs) and any("4 -> 8 sequences" in m for m in logs)
    recs = records(full)
    assert all("z_loss" in r for r in recs if "eval" not in r)
    evals = [r["eval"] for r in recs if "eval" in r]
    assert all({"val_bpb", "val_bpb_tempered", "temperature"} <= set(e) for e in evals)
    assert summary["val_bpb"] is not None and summary["val_bpb_tempered"] is not None
    assert summary["temperature"] in (0.9, 0.95, 1.0, 1.05, 1.1)
    part = tmp_path / "part"
    part.mkdir()
    run(config(*SCHEDULED), name, part, resume=full / "saved-at-6")
    want = dict(train_losses(full))
    got = dict(train_losses(part))
    np.testing.assert_array_equal([got[s] for s in range(7, 13)], [want[s] for s in range(7, 13)])
