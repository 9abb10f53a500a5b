"""ternary_cuda.parallel without launching: the torchrun environment and the CPU settings."""
from __future__ import annotations

import pytest

from shared.spec.config import RunConfig
from ternary_cuda import parallel


def test_no_torchrun_is_one_process():
    assert parallel.read_env({}) == parallel.World(0, 1, 0)
    assert parallel.read_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) == parallel.World(0, 1, 0)


def test_torchrun_env_is_read():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert parallel.read_env(env) == parallel.World(3, 4, 1)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR, MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2 is not in [0, WORLD_SIZE=2)"),
    ({"WORLD_SIZE": "two"}, "must be integers"),
])
def test_bad_env_is_an_error(env, message):
    with pytest.raises(parallel.DistributedError) as e:
        parallel.read_env(env)
    assert message in str(e.value)


@pytest.mark.skipif(parallel.torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_cpu_trains_float32_and_says_what_it_ignores():
    bf16, compile_, notes = parallel.settings(RunConfig().train)
    assert (bf16, compile_) == (False, False)
    assert notes == ["torch: training on the CPU in float32 (train.precision=bf16, train.compile, "
                     "train.tf32: CUDA only, ignored)"]
    t = RunConfig().with_overrides(["train.precision=float32", "train.compile=false", "train.tf32=false"]).train
    assert parallel.settings(t)[2] == ["torch: training on the CPU in float32"]
