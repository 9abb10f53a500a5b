"""The train.* keys of the PyTorch data-parallel and CUDA settings: defaults, values, errors."""
from __future__ import annotations

import pytest

from shared.spec.config import ConfigError, RunConfig


def test_defaults_and_round_trip(tmp_path):
    t = RunConfig().train
    assert (t.parallel, t.compile, t.precision, t.tf32) == ("ddp", True, "bf16", True)
    cfg = RunConfig().with_overrides(["train.parallel=fsdp2", "train.compile=false", "train.precision=float32",
                                      "train.tf32=false"])
    cfg.save_toml(tmp_path / "run.toml")
    back = RunConfig.load_toml(tmp_path / "run.toml").train
    assert (back.parallel, back.compile, back.precision, back.tf32) == ("fsdp2", False, "float32", False)


@pytest.mark.parametrize("override, message", [
    ("train.parallel=fsdp", "train.parallel: 'fsdp' is not one of ddp, fsdp2 (did you mean 'fsdp2'?)"),
    ("train.precision=fp16", "train.precision: 'fp16' is not one of float32, bf16"),
    ("train.compile=1", "train.compile: expected true or false"),
    ("train.tf32=yes", "train.tf32: expected true or false"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides([override])
    assert message in str(e.value)
