"""Under torchrun only rank 0 writes checkpoints: when its save fails (a full disk), every rank
must end, each with one line and a non-zero exit, and the previous checkpoint must stay loadable
(shared/train/trainer_common.py: the ranks decide together through `agree`, SEEDS S12). Before,
rank 1 went on to its next collective without rank 0."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shared.spec import checkpoint as fmt
from tests.distributed.test_torchrun_data_parallel import _env
from tests.train.common import BASE, trainer_state

ROOT = Path(__file__).resolve().parents[2]


def test_a_full_disk_on_rank_0_ends_every_rank_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "tests.distributed.full_disk_worker", "--no-progress", "--out", str(out),
                        "--set", *BASE, "train.steps=8", "train.checkpoint_every=2", "train.batch_size=2"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)  # a hang fails here
    output = r.stdout + r.stderr
    assert r.returncode != 0, output[-3000:]
    assert not re.search(r'File ".*/(shared|convert|ternary_cuda)/', output), output[-3000:]  # no traceback of ours
    # rank 1 (which wrote nothing) ended by itself with exit 2; rank 0 waits to be sure of that
    # (tests/distributed/full_disk_worker.py), and is then terminated by torchrun
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)\n\s+exitcode\s+: 2 ", output), output[-3000:]
    # one line per rank (the two ranks' stderr may interleave on one line)
    assert output.count("ternary: error: ") == 2, output[-3000:]
    assert f"ternary: error: cannot save the checkpoint {out / 'checkpoint'} (No space left on device)" in output
    assert "ternary: error: rank 0 could not save the checkpoint" in output
    fmt.read_checkpoint(out / "checkpoint")
    assert trainer_state(out / "checkpoint")["step"] == 2
