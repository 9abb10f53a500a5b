"""metrics.jsonl's per-step train_time_s: cumulative training time at each host sync, evaluations
excluded (bench/pg_step.py takes per-step times from its differences at train.log_every=1)."""
from __future__ import annotations

import time

from tests.train.common import Wrapper, config, records, run


class SlowEval(Wrapper):
    """Evaluation takes 0.3 s more: none of it may show up in train_time_s."""

    def evaluate(self, *a, **kw):
        time.sleep(0.3)
        return self.inner.evaluate(*a, **kw)


def test_train_time_is_cumulative_per_step_and_excludes_evaluation(tmp_path):
    cfg = config("train.steps=6", "train.eval_every=3", "train.log_every=1")
    _, summary, _ = run(cfg, "mlx", tmp_path / "run", wrap=SlowEval)
    steps = [r for r in records(tmp_path / "run") if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    times = [r["train_time_s"] for r in steps]
    assert all(b > a for a, b in zip(times, times[1:])), times  # one fetch per step: strictly increasing
    assert times[3] - times[2] < 0.3  # the evaluation after step 3 is not counted in step 4
    assert abs(times[-1] - summary["train_time_s"]) < 0.011  # the same clock as the summary's
