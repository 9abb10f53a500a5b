"""One rank of tests/distributed/test_mlx_ring.py: `python -m ternary_mlx.train`'s own main(), under
mlx.launch or alone, with a Trainer that also records what the test compares.

    python -m tests.distributed.mlx_ring_worker DUMP_DIR [train arguments ...]

writes DUMP_DIR/rank<r>.npz: the final weights, `loss` / `grad_norm` per step as this rank
fetched them, and Trainer.agree's answers for (this rank is 1) and (False). With
RING_TEST_SEED_BY_RANK=1 in the environment each rank trains with train.seed=<its rank>; with
RING_TEST_RANK1_EXITS_AT=S rank 1 dies (exit code 3) when asked for step S.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ternary_mlx import train


class RecordingTrainer(train.Trainer):
    last: RecordingTrainer | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.values: list[tuple[float, float]] = []
        RecordingTrainer.last = self

    def step(self, windows, step):
        if self.rank == 1 and str(step) == os.environ.get("RING_TEST_RANK1_EXITS_AT"):
            os._exit(3)  # a crashed rank: no cleanup, sockets closed by the OS
        return super().step(windows, step)

    def fetch(self, handles):
        values = super().fetch(handles)
        self.values += values
        return values


def main(argv: list[str]) -> int:
    dump = Path(argv[0])
    if os.environ.get("RING_TEST_SEED_BY_RANK") == "1":
        argv = argv + ["--set", f"train.seed={os.environ.get('MLX_RANK', '0')}"]
    train.Trainer = RecordingTrainer  # main() builds its Backend from this module global
    rc = train.main(argv[1:])
    t = RecordingTrainer.last
    dump.mkdir(parents=True, exist_ok=True)
    agree = [t.agree(t.rank == 1), t.agree(False)]
    values = np.array(t.values, dtype=np.float64).reshape(-1, 2)
    np.savez(dump / f"rank{t.rank}.npz", loss=values[:, 0], grad_norm=values[:, 1], agree=np.array(agree),
             **{f"w/{k}": v for k, v in t.numpy_weights().items()})
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
