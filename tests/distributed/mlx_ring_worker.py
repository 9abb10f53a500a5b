"""One rank of tests/distributed/test_mlx_ring.py: `python -m ternary_mlx.train`'s own main(), under
mlx.launch or alone, with a Trainer that also records what the test compares.

    python -m tests.distributed.mlx_ring_worker DUMP_DIR [train arguments ...]

writes DUMP_DIR/rank<r>.npz: the final weights, and `loss` / `grad_norm` per step as this rank
fetched them (rank 0 also writes metrics.jsonl; the other ranks write nothing else).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ternary_mlx import train


class RecordingTrainer(train.Trainer):
    last: RecordingTrainer | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = 0 if self.group is None else self.group.rank()
        self.values: list[tuple[float, float]] = []
        RecordingTrainer.last = self

    def fetch(self, handles):
        values = super().fetch(handles)
        self.values += values
        return values


def main(argv: list[str]) -> int:
    dump = Path(argv[0])
    train.Trainer = RecordingTrainer  # main() builds its Backend from this module global
    rc = train.main(argv[1:])
    t = RecordingTrainer.last
    dump.mkdir(parents=True, exist_ok=True)
    values = np.array(t.values, dtype=np.float64).reshape(-1, 2)
    np.savez(dump / f"rank{t.rank}.npz", loss=values[:, 0], grad_norm=values[:, 1],
             **{f"w/{k}": v for k, v in t.numpy_weights().items()})
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
