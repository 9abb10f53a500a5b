"""The guards of the shared training loop (shared/train/loop.py): epochs (S7), early stopping (S8),
data-budget warnings (S9), the NaN guard, the wall-clock budget, host syncs (S16), token ids (S13)
and Ctrl-C. The loop is framework-neutral; most tests drive it with the MLX trainer (the faster
one on a CPU), wrapped where a test needs to inject a fault or count calls."""
from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest

from shared.spec import checkpoint as fmt
from shared.spec.config import ConfigError
from shared.data.dataset import DataError, TokenDataset, load_token_dataset, prepare_data, read_manifest, write_shard
from shared.data.loader import TokenLoader
from shared.data.checks import TokenIdError
from shared.train.loop import NonFiniteLoss, count_parameters, preflight
from shared.train.loop import run as loop_run
from shared.data.tokenizers import get_tokenizer
from tests.train.common import Wrapper, backend, config, records, run, train_losses, trainer_state

TOKENS_PER_STEP = 4 * 32


# ---- S7: corpus exhaustion -----------------------------------------------------------------------
class RecordWindows(Wrapper):
    def __init__(self, inner):
        super().__init__(inner)
        self.windows = []

    def step(self, windows, step):
        self.windows.append(np.array(windows))
        return self.inner.step(windows, step)


def test_s7_small_corpus_wraps_into_a_new_epoch_and_says_so(tmp_path):
    # 2,000 train tokens = 62 windows of 33; 40 steps x 4 windows = 160 windows = 2.6 epochs
    cfg = config("data.synthetic_train_bytes=2000", "train.steps=40")
    made = []
    result, summary, logs = run(cfg, "mlx", tmp_path, wrap=lambda t: made.append(RecordWindows(t)) or made[-1])
    assert result.step == 40 and summary["stopped_because"] == "finished"
    announced = [m for m in logs if m.startswith("data: epoch")]
    assert len(announced) == 2 and "epoch 1 starts" in announced[0] and "epoch 2 starts" in announced[1]
    assert trainer_state(tmp_path / "checkpoint")["loader"]["epoch"] == 2
    losses = train_losses(tmp_path)
    assert [s for s, _ in losses] == list(range(1, 41))
    values = [l for _, l in losses]
    assert all(math.isfinite(v) for v in values)
    assert len(set(values)) == len(values)  # no constant placeholder, before or after the wrap
    # every window the trainer saw is a real window of the corpus, also after the wrap
    tokens = load_token_dataset("synthetic", get_tokenizer("bytes"), synthetic_train_bytes=2000,
                                synthetic_val_bytes=10000).train
    corpus = {tuple(tokens[i * 32:i * 32 + 33]) for i in range((len(tokens) - 1) // 32)}
    seen = [tuple(w) for batch in made[0].windows for w in batch.reshape(-1, 33)]
    assert len(seen) == 160 and set(seen) <= corpus
    assert len(set(seen[:60])) == 60  # within the first epoch no window repeats


# ---- S8: early stopping in evaluations -------------------------------------------------------------
@pytest.mark.parametrize("patience", [1, 3])
def test_s8_patience_counts_non_improving_evaluations(tmp_path, patience):
    """lr 1e-12: updates far below float32 resolution, so val_loss never improves by min_delta.
    The first evaluation sets the best; the run stops at the `patience`-th one after it."""
    cfg = config("train.lr=1e-12", "train.steps=40", "train.eval_every=2", f"train.patience={patience}",
                 "train.min_delta=1e-4", "train.eval_tokens=1000")
    result, summary, _ = run(cfg, "mlx", tmp_path)
    assert [e["step"] for e in result.evals] == [2 * (i + 1) for i in range(patience + 1)]
    assert result.step == 2 * (patience + 1)
    assert summary["steps"] == result.step
    assert summary["stopped_because"].startswith("early stop") and f"in {patience} evaluations" in summary["stopped_because"]
    st = trainer_state(tmp_path / "checkpoint")
    assert st["step"] == result.step and st["bad_evals"] == patience
    assert st["best_val_loss"] == result.evals[0]["val_loss"]


def test_s8_improving_run_is_not_stopped_and_min_delta_counts(tmp_path):
    common = ["train.lr=3e-3", "train.warmup_steps=2", "train.steps=10", "train.eval_every=2", "train.patience=1",
              "train.eval_tokens=1000"]
    result, summary, _ = run(config(*common, "train.min_delta=0.0"), "mlx", tmp_path / "a")
    vals = [e["val_loss"] for e in result.evals]
    assert all(b < a for a, b in zip(vals, vals[1:])), vals  # it improves at every evaluation
    assert result.step == 10 and summary["stopped_because"] == "finished"
    # the same improving run, but no improvement is as large as min_delta: stop at the 2nd evaluation
    result, summary, _ = run(config(*common, "train.min_delta=5.0"), "mlx", tmp_path / "b")
    assert result.step == 4 and summary["stopped_because"].startswith("early stop")
    assert result.evals[1]["val_loss"] < result.evals[0]["val_loss"]


def _dataset(train_tokens: int, val_tokens: int) -> TokenDataset:
    rng = np.random.default_rng(0)
    return TokenDataset(rng.integers(0, 256, train_tokens).astype(np.int32),
                        rng.integers(0, 256, val_tokens).astype(np.int32), get_tokenizer("bytes"), "test",
                        None, val_tokens)


def _warnings(cfg, ds, world_size=1):
    logs = []
    plan = preflight(cfg, ds, world_size, logs.append)
    return [m for m in logs if m.startswith("warning")], plan


def test_s8_preflight_warns_about_early_stopping_on_few_validation_tokens():
    ds = _dataset(1_000_000, 100_000)
    few, _ = _warnings(config("train.steps=1000", "train.patience=2", "train.eval_tokens=16000"), ds)
    assert len(few) == 1 and "early stopping on 16,000 validation tokens" in few[0]
    enough, _ = _warnings(config("train.steps=1000", "train.patience=2", "train.eval_tokens=70000"), ds)
    assert enough == []
    no_patience, _ = _warnings(config("train.steps=1000", "train.eval_tokens=16000"), ds)
    assert no_patience == []
    # eval_tokens is large but the split is not: what counts is what gets scored
    small_split, _ = _warnings(config("train.steps=1000", "train.patience=2", "train.eval_tokens=131072"),
                               _dataset(1_000_000, 20_000))
    assert len(small_split) == 1 and "19,999 validation tokens" in small_split[0]


# ---- S9: data budget -----------------------------------------------------------------------------------
def test_s9_preflight_warns_about_tokens_per_parameter_and_epochs():
    cfg = config()
    params, _ = count_parameters(cfg)
    from ternary_mlx.model import Model
    weights = Model(cfg, seed=0).numpy_weights()
    assert params == sum(w.size for w in weights.values()) == 90_496
    # 100 steps x 128 tokens = 12,800 tokens: 0.14 tokens/parameter, 0.0128 epochs
    w, plan = _warnings(config("train.steps=100"), _dataset(1_000_000, 100_000))
    assert len(w) == 1 and "tokens per parameter" in w[0]
    assert plan["tokens"] == 12_800 and plan["tokens_per_parameter"] == pytest.approx(12_800 / params)
    # 1,000 steps: 128,000 tokens = 1.41 tokens/parameter; over 20,000 tokens that is 6.4 epochs
    w, plan = _warnings(config("train.steps=1000"), _dataset(20_000, 100_000))
    assert len(w) == 1 and "6.4 passes" in w[0]
    assert plan["epochs"] == pytest.approx(6.4)
    w, plan = _warnings(config("train.steps=1000"), _dataset(1_000_000, 100_000))
    assert w == [] and plan["epochs"] == pytest.approx(0.128)
    # data-parallel ranks multiply the tokens: 4 epochs are fine, 2 x 4 = 8 are not
    assert _warnings(config("train.steps=625"), _dataset(20_000, 100_000))[0] == []
    w, plan = _warnings(config("train.steps=625"), _dataset(20_000, 100_000), world_size=2)
    assert len(w) == 1 and "8.0 passes" in w[0] and plan["tokens"] == 160_000


# ---- NaN guard ------------------------------------------------------------------------------------------
class NaNAt(Wrapper):
    """Reports a non-finite loss (or gradient norm) for step `at` (1-based), as a diverged step would."""

    def __init__(self, inner, at, which):
        super().__init__(inner)
        self.at, self.which = at, which

    def step(self, windows, step):
        return step + 1, self.inner.step(windows, step)

    def fetch(self, handles):
        values = self.inner.fetch([h for _, h in handles])
        out = []
        for (s, _), (loss, gn) in zip(handles, values):
            if s == self.at:
                loss, gn = (math.nan, gn) if self.which == "loss" else (loss, math.inf)
            out.append((loss, gn))
        return out


@pytest.mark.parametrize("log_every,at,which,last_ckpt", [
    (1, 8, "loss", 6),       # synced every step: the checkpoint at 6 is the last good one
    (4, 5, "grad_norm", 3),  # step 5 is pending when the checkpoint at 6 falls due: none is written
    (1, 2, "loss", None),    # before the first checkpoint: nothing is saved at all
])
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, log_every, at, which, last_ckpt):
    cfg = config("train.steps=12", "train.checkpoint_every=3", f"train.log_every={log_every}")
    with pytest.raises(NonFiniteLoss, match=f"at step {at};") as err:
        run(cfg, "mlx", tmp_path, wrap=lambda t: NaNAt(t, at, which))
    ckpt = tmp_path / "checkpoint"
    if last_ckpt is None:
        assert not ckpt.exists()
        assert "no checkpoint yet" in str(err.value)
    else:
        st = trainer_state(ckpt)
        assert st["step"] == last_ckpt < at and st["saved_because"] == "periodic"
        assert str(ckpt) in str(err.value)
        fmt.read_checkpoint(ckpt)  # complete and verified
    assert "eval" not in "".join(open(tmp_path / "metrics.jsonl").read())  # no evaluation of a NaN state


# ---- wall-clock budget -----------------------------------------------------------------------------------
def test_time_budget_stops_after_the_first_sync(tmp_path):
    cfg = config("train.steps=40", "train.log_every=4", "train.time_budget_s=0.001")
    result, summary, _ = run(cfg, "mlx", tmp_path)
    assert result.step == 4 and summary["steps"] == 4
    assert "time budget" in summary["stopped_because"] and "0.001" in summary["stopped_because"]
    assert trainer_state(tmp_path / "checkpoint")["step"] == 4
    assert [s for s, _ in train_losses(tmp_path)] == [1, 2, 3, 4]


class SlowEval(Wrapper):
    """Evaluation that takes 0.5 s longer; times the training work (step + fetch) it is given."""

    def __init__(self, inner):
        super().__init__(inner)
        self.work = 0.0

    def step(self, windows, step):
        t0 = time.perf_counter()
        try:
            return self.inner.step(windows, step)
        finally:
            self.work += time.perf_counter() - t0

    def fetch(self, handles):
        t0 = time.perf_counter()
        try:
            return self.inner.fetch(handles)
        finally:
            self.work += time.perf_counter() - t0

    def evaluate(self, *a, **kw):
        time.sleep(0.5)
        return self.inner.evaluate(*a, **kw)


def test_evaluation_time_is_not_training_time(tmp_path):
    # evaluations at steps 2 and 4 fall between syncs' timing windows; the last one (6) after the loop
    cfg = config("train.steps=6", "train.log_every=2", "train.eval_every=2")
    made = []
    result, summary, _ = run(cfg, "mlx", tmp_path, wrap=lambda t: made.append(SlowEval(t)) or made[-1])
    assert [e["step"] for e in result.evals] == [2, 4, 6]
    assert result.eval_time_s >= 1.5
    work = made[0].work
    # counting the two in-loop evaluations would add >= 1.0 s; the loop's own overhead is milliseconds
    assert work <= result.train_time_s < work + 0.4, (work, result.train_time_s)


# ---- S16: host syncs -----------------------------------------------------------------------------------
class CountFetches(Wrapper):
    def __init__(self, inner):
        super().__init__(inner)
        self.fetched = []

    def fetch(self, handles):
        self.fetched.append(len(handles))
        return self.inner.fetch(handles)


@pytest.mark.parametrize("extra,expected", [
    ([], [4, 4, 2]),  # ceil(10 / 4) syncs
    (["train.eval_every=6", "train.checkpoint_every=3"], [3, 1, 2, 2, 1, 1]),  # + at 3, 6, 9
])
def test_s16_syncs_only_every_log_every_steps(tmp_path, extra, expected):
    cfg = config("train.steps=10", "train.log_every=4", *extra)
    made = []
    run(cfg, "mlx", tmp_path, wrap=lambda t: made.append(CountFetches(t)) or made[-1])
    assert made[0].fetched == expected
    assert [s for s, _ in train_losses(tmp_path)] == list(range(1, 11))  # still every step's loss


def test_s16_throughput_counts_the_tokens_of_every_rank(tmp_path):
    """rank 0 of 2 (no collectives are needed to drive the loop's data side): each step consumes
    2 x 4 windows; tokens_seen, the plan and tokens/s in the summary must all count both ranks."""
    cfg = config("train.steps=4", "train.log_every=2")
    result, summary, _ = run(cfg, "mlx", tmp_path, rank=0, world_size=2)
    st = trainer_state(tmp_path / "checkpoint")
    assert st["tokens_seen"] == 4 * 2 * TOKENS_PER_STEP and st["loader"]["global_batch"] == 8
    assert st["loader"]["position"] == 4 * 8
    assert summary["tokens_per_s"] == round(st["tokens_seen"] / result.train_time_s)


# ---- S13: token ids ------------------------------------------------------------------------------------
def test_s13_loader_refuses_ids_outside_the_vocabulary():
    tokens = np.arange(1000, dtype=np.int32) % 256
    tokens[700] = 300
    with pytest.raises(TokenIdError, match=r"e\.g\. 300 at position \[700\]"):
        TokenLoader(tokens, 4, 32, vocab_size=256, log=lambda _m: None)
    tokens[700] = -1
    with pytest.raises(TokenIdError, match="negative"):
        TokenLoader(tokens, 4, 32, log=lambda _m: None)


def test_s13_prepared_data_with_an_id_outside_the_vocabulary_is_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    tok = get_tokenizer("bytes")
    prepare_data([text], tok, tmp_path / "data", val_fraction=0.1, log=lambda _m: None)
    man = read_manifest(tmp_path / "data")
    shard = tmp_path / "data" / man["splits"]["train"]["files"][0]
    tokens = np.array(np.fromfile(shard, dtype="<u2", offset=1024))
    tokens[123] = 300
    write_shard(shard, tokens, vocab_size=65536)  # same format (uint16), an id the bytes tokenizer lacks
    with pytest.raises(TokenIdError, match="300"):
        load_token_dataset(str(tmp_path / "data"), tok)


def test_s13_the_loop_refuses_ids_outside_the_model_vocabulary(tmp_path):
    """The trainers switch the model's per-call id check off because the loop's loader checks every
    training id once; a dataset handed to shared.train.loop.run directly must be checked there too."""
    ds = _dataset(5000, 3000)
    ds.train[4321] = 300
    calls = []

    class Count(Wrapper):
        def step(self, windows, step):
            calls.append(step)
            return self.inner.step(windows, step)

    cfg = config("train.steps=4")
    b = backend("mlx")
    trainer = Count(b.Trainer(cfg, b.Model(cfg, seed=0)))
    with pytest.raises(TokenIdError, match="300"):
        loop_run(cfg, trainer, ds, tmp_path, log=lambda _m: None, progress=False)
    assert calls == []


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size is 128"):
        run(config("model.vocab_size=128"), "mlx", tmp_path)


def test_data_loader_refuses_a_corpus_shorter_than_one_window():
    with pytest.raises(DataError, match="fewer than one window"):
        TokenLoader(np.zeros(20, np.int32), 4, 32, log=lambda _m: None)


# ---- Ctrl-C -------------------------------------------------------------------------------------------
class InterruptAt(Wrapper):
    """Sends SIGINT to this process during step `at` (0-based), `times` times."""

    def __init__(self, inner, at, times=1):
        super().__init__(inner)
        self.at, self.times = at, times

    def step(self, windows, step):
        h = self.inner.step(windows, step)
        if step == self.at:
            # never deliver a real KeyboardInterrupt to pytest: the loop must have its handler installed
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
        return h


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    cfg = config("train.steps=12")
    result, summary, logs = run(cfg, "mlx", tmp_path / "run", wrap=lambda t: InterruptAt(t, at=4))
    assert signal.getsignal(signal.SIGINT) is before  # the loop restored the previous handler
    assert result.step == 5 and result.stopped_because == "interrupted (Ctrl-C)"
    assert summary["stopped_because"] == "interrupted (Ctrl-C)"
    assert any("Ctrl-C" in m for m in logs)
    st = trainer_state(tmp_path / "run" / "checkpoint")
    assert st["saved_because"] == "interrupted" and st["step"] == 5 and st["tokens_seen"] == 5 * TOKENS_PER_STEP
    assert [s for s, _ in train_losses(tmp_path / "run")] == [1, 2, 3, 4, 5]  # step 5 finished and logged
    # resume: steps 6-12, the same losses as a run that was never interrupted
    result, summary, _ = run(cfg, "mlx", tmp_path / "run", resume=tmp_path / "run" / "checkpoint")
    assert result.step == 12 and summary["stopped_because"] == "finished"
    run(cfg, "mlx", tmp_path / "alone")
    got, want = train_losses(tmp_path / "run"), train_losses(tmp_path / "alone")
    assert [s for s, _ in got] == list(range(1, 13))
    assert got == want


def test_second_ctrl_c_aborts_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    cfg = config("train.steps=12")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, "mlx", tmp_path, wrap=lambda t: InterruptAt(t, at=2, times=2))
    assert signal.getsignal(signal.SIGINT) is before
    assert not (tmp_path / "checkpoint").exists()
    assert all("eval" not in r for r in records(tmp_path))
