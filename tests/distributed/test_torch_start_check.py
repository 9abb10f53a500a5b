"""ternary_cuda.parallel.check_identical: ranks that start from different weights are refused
(FSDP2 would otherwise stitch a model together from each rank's own rows). Two gloo processes."""
from __future__ import annotations

import os
import socket

import torch.multiprocessing as mp

from tests.train.common import config


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from ternary_cuda import parallel
    from ternary_cuda.model import Model
    parallel.setup()
    try:
        for same_seed in (True, False):
            try:
                parallel.check_identical(Model(config("model.num_hidden_layers=1"), seed=0 if same_seed else rank))
                results[rank, same_seed] = "ok"
            except RuntimeError as e:
                results[rank, same_seed] = str(e)
    finally:
        parallel.teardown()


def test_ranks_with_different_weights_are_refused():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_port(), results), nprocs=2, join=True)
        got = dict(results)
    assert got[0, True] == got[1, True] == "ok"  # the same seed: accepted
    assert all("start from different weights" in got[r, False] for r in (0, 1)), got
    assert "model.embed_tokens.weight" in got[0, False]
