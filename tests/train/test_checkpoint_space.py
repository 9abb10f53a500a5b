"""A full disk loses nothing (shared/train/checkpoint_space.py, DESIGN 3.4).

Before: training into a full disk ran to the end and died on its first save with a raw
SafetensorError traceback. Now the room for a checkpoint (its size from the parameter specs and
optimizer slots; the new copy is written while the old one exists) is checked before the first
step and before each save, and a save that fails anyway (ENOSPC, simulated here by the writer
raising mid-save) keeps the previous checkpoint and ends the run with one line naming the path,
the bytes needed and the bytes free.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest

import shared.spec.checkpoint as ck
import shared.train.checkpoint_space as space
from convert.cli import main as cli
from shared.train.checkpoint_space import CheckpointSaveError, checkpoint_bytes
from tests.train.common import BASE, backend, config, records, run, trainer_state

Usage = namedtuple("Usage", "total used free")


def _disk_with(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage(10 ** 12, 10 ** 12 - free, free))


def _full_at(monkeypatch, save: int, file: str = ck.OPTIMIZER_FILE, error=None) -> None:
    """The disk fills during the `save`-th checkpoint save, while writing `file`."""
    real, count = ck.save_streaming, [0]

    def save_streaming(tensors, filename, metadata=None):
        if filename.endswith(ck.MODEL_FILE):
            count[0] += 1
        if count[0] == save and filename.endswith(file):
            raise error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)  # a write to a full disk
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(ck, "save_streaming", save_streaming)  # the checkpoint's tensor writer


def _files_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


@pytest.mark.parametrize("extra", [[], ["train.optimizer=muon", "train.ema_decay=0.9"]], ids=["adamw", "muon-ema"])
def test_the_size_estimate_bounds_the_real_checkpoint(tmp_path, extra, backend_name):
    cfg = config("train.steps=1", *extra)
    run(cfg, backend_name, tmp_path)
    actual = _files_bytes(tmp_path / "checkpoint")
    assert actual <= checkpoint_bytes(cfg) <= actual + 512 * 1024


@pytest.fixture(params=["mlx", "torch"])
def backend_name(request):
    return request.param


def test_a_disk_without_room_fails_before_the_first_step(tmp_path, monkeypatch, backend_name):
    cfg = config("train.steps=4")
    _disk_with(monkeypatch, checkpoint_bytes(cfg) - 1)
    with pytest.raises(CheckpointSaveError) as e:
        run(cfg, backend_name, tmp_path)
    msg = str(e.value)
    assert f"no room for the checkpoint {tmp_path / 'checkpoint'}" in msg
    assert f"needs {checkpoint_bytes(cfg):,} bytes" in msg and f"{checkpoint_bytes(cfg) - 1:,} free" in msg
    assert "nothing was trained" in msg and "\n" not in msg
    assert records(tmp_path) == [] and not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("file", [ck.MODEL_FILE, ck.OPTIMIZER_FILE])
@pytest.mark.parametrize("save, at", [(2, "periodic"), (3, "final")])
def test_enospc_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, backend_name, file, save, at):
    cfg = config("train.steps=6", "train.checkpoint_every=2")
    _full_at(monkeypatch, save, file)
    with pytest.raises(CheckpointSaveError) as e:
        run(cfg, backend_name, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"cannot save the checkpoint {tmp_path / 'checkpoint'} (No space left on device): "
                          f"it needs {checkpoint_bytes(cfg):,} bytes and its disk has ")
    assert msg.endswith("free; the previous checkpoint there is kept") and "\n" not in msg
    ck.read_checkpoint(tmp_path / "checkpoint")  # complete and loadable
    assert trainer_state(tmp_path / "checkpoint")["step"] == 2 * (save - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "config.toml", "metrics.jsonl"]


def test_an_oserror_writing_the_json_files_is_caught_too(tmp_path, monkeypatch):
    cfg = config("train.steps=4", "train.checkpoint_every=2")
    real = ck._write_json

    def write_json(path, obj):
        if path.name == "manifest.json" and (path.parent.parent / "checkpoint").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)
    monkeypatch.setattr(ck, "_write_json", write_json)
    with pytest.raises(CheckpointSaveError, match=r"\(No space left on device\)"):
        run(cfg, "mlx", tmp_path)
    assert trainer_state(tmp_path / "checkpoint")["step"] == 2


def test_the_disk_filling_between_saves_is_caught_before_writing(tmp_path, monkeypatch):
    cfg = config("train.steps=4", "train.checkpoint_every=2")
    need, calls = checkpoint_bytes(cfg), []

    def disk_usage(_p):  # room at the start and for the first save, none for the second
        calls.append(1)
        free = need if len(calls) <= 2 else need // 2
        return Usage(10 ** 12, 10 ** 12 - free, free)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    written = []
    real = ck.save_streaming
    monkeypatch.setattr(ck, "save_streaming", lambda *a, **k: (written.append(a[1]), real(*a, **k)))
    with pytest.raises(CheckpointSaveError, match="no room .* the previous checkpoint there is kept"):
        run(cfg, "mlx", tmp_path)
    assert len(written) == 2 and trainer_state(tmp_path / "checkpoint")["step"] == 2  # one save, then none


# ---- data parallel: every rank takes the same branch (SEEDS S12) ---------------------------------
def _rank(cfg, rank: int, answers: list[bool]):
    """A real Trainer playing `rank` whose agree() answers what the other ranks would make it."""
    b = backend("mlx")
    t = b.Trainer(cfg, b.Model(cfg, seed=0))
    t.rank, asked = rank, []
    t.agree = lambda flag: (asked.append(flag), answers.pop(0))[1]
    return t, asked


def test_a_failed_save_on_rank_0_ends_every_rank(tmp_path, monkeypatch):
    cfg = config("train.steps=2")
    state = {"step": 1}
    t, asked = _rank(cfg, 1, [False, True])  # rank 0 had room, then its write failed
    with pytest.raises(CheckpointSaveError, match="rank 0 could not save the checkpoint"):
        t.save(tmp_path / "checkpoint", state)
    assert asked == [False, False] and not (tmp_path / "checkpoint").exists()  # rank 1 writes nothing
    _full_at(monkeypatch, 1, ck.MODEL_FILE)
    t, asked = _rank(cfg, 0, [False, True])
    with pytest.raises(CheckpointSaveError, match="No space left on device"):
        t.save(tmp_path / "checkpoint", state)
    assert asked == [False, True]  # rank 0 told the others before raising
    t, asked = _rank(cfg, 1, [True])  # rank 0 found no room: rank 1 stops before gathering anything
    monkeypatch.setattr(t, "checkpoint_tensors", lambda: pytest.fail("gathered after a refused save"))
    with pytest.raises(CheckpointSaveError):
        t.save(tmp_path / "checkpoint", state)


# ---- the command line ----------------------------------------------------------------------------
def _train_cli(out, *sets: str) -> list[str]:
    return ["train", "--backend", "mlx", "--no-progress", "--out", str(out), "--set", *BASE, *sets]


def test_cli_full_disk_mid_run_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_at(m, 2)
        assert cli(_train_cli(out, "train.steps=4", "train.checkpoint_every=2")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"ternary: error: cannot save the checkpoint {out / 'checkpoint'} (No space left on device): "
                          f"it needs {checkpoint_bytes(ck.read_config(out / 'checkpoint')):,} bytes")
    ck.read_checkpoint(out / "checkpoint")
    assert trainer_state(out / "checkpoint")["step"] == 2
    assert cli(["train", "--backend", "mlx", "--no-progress", "--resume", str(out)]) == 0  # nothing lost
    assert trainer_state(out / "checkpoint")["step"] == 4


def test_cli_full_disk_before_training_is_one_line(tmp_path, monkeypatch, capsys):
    _disk_with(monkeypatch, 1000)
    assert cli(_train_cli(tmp_path / "run", "train.steps=4")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ternary: error: no room for the checkpoint ")
    assert "1,000 free; nothing was trained" in err


def test_free_bytes_looks_at_the_nearest_existing_directory(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: (seen.append(p), Usage(1, 1, 1))[1])
    assert space.free_bytes(tmp_path / "not" / "yet" / "checkpoint") == 1 and seen == [tmp_path]
