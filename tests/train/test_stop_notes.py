"""Ctrl-C coalescing under several ranks, and the warning when a run stops inside the lambda warm-up."""
from __future__ import annotations

import signal

import pytest

from shared.train.loop import _StopFlag
from tests.train.common import config, run


def test_second_sigint_soon_after_the_first_is_the_same_ctrl_c_with_several_ranks():
    flag = _StopFlag(lambda _m: None, coalesce_s=1.0)  # torchrun: terminal + agent deliver one Ctrl-C twice
    flag._handler(signal.SIGINT, None)
    flag._handler(signal.SIGINT, None)  # within a second: ignored
    assert flag.requested
    flag._first -= 2.0  # a second Ctrl-C two seconds later aborts
    with pytest.raises(KeyboardInterrupt):
        flag._handler(signal.SIGINT, None)


def test_second_sigint_aborts_at_once_in_one_process():
    flag = _StopFlag(lambda _m: None)
    flag._handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        flag._handler(signal.SIGINT, None)


@pytest.mark.parametrize("warmup,warned", [(10, True), (2, False)])
def test_stopping_inside_the_warmup_says_the_score_is_not_the_checkpoints(tmp_path, warmup, warned):
    _, _, logs = run(config("train.steps=3", f"ternary.warmup_steps={warmup}"), "mlx", tmp_path / "run")
    assert any("inside ternary.warmup_steps" in line for line in logs) == warned
