"""A checkpoint save is atomic at every one of its steps (shared/spec/atomic_dir.py, DESIGN 3.4).

Each filesystem step of a save (every file written, every fsync, each rename or exchange, the
removal of the old copy) is failed in turn, and in turn made the point where the process dies
(nothing after it runs, not even the writer's own cleanup). After each there is a loadable
checkpoint, the old one or the new one and complete, and the next save leaves no leftovers.
Both protocols: the atomic exchange (Linux, macOS) and the two renames of filesystems without it.
"""
from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest

import shared.spec.atomic_dir as ad
import shared.spec.checkpoint as ck
from shared.spec.init import init_weights
from tests.variants import tiny_config

CFG = tiny_config(ternary=dict(group_size=8), hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
STEPS = [(ck, "_write_json"), (ck, "save_streaming"), (ck, "_fsync"),
         (ad, "_rename"), (ad, "_exchange"), (ad, "_remove_tree")]


def version_tensors(v: int) -> tuple[dict, dict]:
    """(weights, optimizer state) of save number `v`: different for each version."""
    w = init_weights(CFG.model, seed=v)
    return w, {f"{k}.exp_avg": a * 0 + v for k, a in w.items()}


def save_version(path, v: int) -> None:
    w, opt = version_tensors(v)
    ck.write_checkpoint(path, CFG, w, writer={"backend": "unit-test"}, optimizer_state=opt,
                        optimizer_meta={"step": v}, trainer_state={"step": v})


def loaded_version(path) -> int:
    """Which version the checkpoint at `path` is, through the readers; asserts it is complete:
    its weights, optimizer state and trainer state all of that one version."""
    _, w = ck.read_checkpoint(path)
    v = ck.read_trainer_state(path)["step"]
    opt, meta = ck.read_optimizer(path)
    want_w, want_opt = version_tensors(v)
    assert meta == {"step": v}
    assert all(np.array_equal(w[k], want_w[k]) for k in want_w)
    assert set(opt) == set(want_opt) and all(np.array_equal(opt[k], want_opt[k]) for k in want_opt)
    return v


class Killed(BaseException):
    """The process died at this step."""


class Faults:
    """Numbers the save's filesystem steps; step `at` raises OSError ENOSPC, or with kill=True
    is where the process dies: that step and every later one raise Killed."""

    def __init__(self, monkeypatch, at: int, kill: bool):
        self.at, self.kill, self.n, self.dead, self.fired, self.names = at, kill, 0, False, False, []
        for mod, name in STEPS:
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name), name))

    def _wrap(self, fn, name):
        def step(*args, **kwargs):
            if self.dead:
                raise Killed
            i, self.n = self.n, self.n + 1
            self.names.append(name)
            if i == self.at:
                self.fired = True
                if self.kill:
                    self.dead = True
                    raise Killed
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return fn(*args, **kwargs)
        return step


@pytest.fixture(params=["exchange", "renames"])
def protocol(request, monkeypatch):
    if request.param == "renames":  # a filesystem without an atomic exchange
        monkeypatch.setattr(ad, "_exchange_function", lambda: None)
    elif ad._exchange_function() is None:
        pytest.skip("no atomic exchange on this system")
    return request.param


def _steps_of_a_save(tmp_path, monkeypatch) -> list[str]:
    path = tmp_path / "count" / "ckpt"
    save_version(path, 1)
    with monkeypatch.context() as m:
        faults = Faults(m, at=-1, kill=False)
        save_version(path, 2)
    return faults.names


@pytest.mark.parametrize("kill", [False, True], ids=["raise", "kill"])
def test_a_save_failed_or_killed_at_any_step_keeps_a_loadable_checkpoint(tmp_path, monkeypatch, protocol, kill):
    names = _steps_of_a_save(tmp_path, monkeypatch)
    swap = ["_exchange", "_remove_tree"] if protocol == "exchange" else ["_exchange", "_rename", "_rename", "_remove_tree"]
    assert names[-len(swap):] == swap and names.count("save_streaming") == 2  # model and optimizer
    gap_seen = False
    for at in range(len(names)):
        path = tmp_path / f"at{at}" / "ckpt"
        save_version(path, 1)
        with monkeypatch.context() as m:
            faults = Faults(m, at, kill)
            with pytest.raises(Killed if kill else OSError):
                save_version(path, 2)
        assert faults.fired and faults.names[at] == names[at], "the fault did not fire where counted"
        if kill:
            ad._ACTIVE.clear()  # what the dead process knew of its writes died with it
        gap_seen |= not os.path.lexists(path)  # between the two renames: only the readers' recovery helps
        assert loaded_version(path) in (1, 2), f"step {at} ({names[at]})"
        if not kill and at < len(names) - 1:  # failed before the new copy was in: the old one stays
            assert loaded_version(path) == 1, f"step {at} ({names[at]})"
        save_version(path, 3)
        assert loaded_version(path) == 3
        assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"], f"leftovers after step {at} ({names[at]})"
    assert gap_seen == (protocol == "renames" and kill)


def test_the_exchange_is_used_where_the_system_has_one(tmp_path, monkeypatch):
    """On Linux and macOS the live name is never missing: no two-rename path is taken."""
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        pytest.skip("exchange only on Linux and macOS")
    save_version(tmp_path / "ckpt", 1)
    calls = []
    real = ad._rename
    monkeypatch.setattr(ad, "_rename", lambda a, b: (calls.append((a, b)), real(a, b)))
    save_version(tmp_path / "ckpt", 2)
    assert calls == [] and loaded_version(tmp_path / "ckpt") == 2


# ---- which leftovers are ours and stale ----------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_only_provably_ours_and_stale_leftovers_are_removed(tmp_path):
    save_version(tmp_path / "ckpt", 1)
    host, dead = ad._host(), _dead_pid()
    stale = [f".ckpt.tmp-{dead}-{host}-0123abcd", f".ckpt.old-{dead}-{host}-89abcdef"]
    kept = [f".ckpt.tmp-{os.getppid()}-{host}-0123abcd",  # a live writer
            f".ckpt.tmp-{dead}-otherhost-0123abcd",  # another host's: its pid means nothing here
            ".ckpt.tmp-notes", ".ckpt.tmp-0123abcd",  # not our pattern; a fresh pid-less one
            f".other.tmp-{dead}-{host}-0123abcd"]  # another destination's
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("user data")
    (tmp_path / f".ckpt.old-{dead}-{host}-deadbeef").symlink_to(tmp_path / "target")
    save_version(tmp_path / "ckpt", 2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(kept + ["ckpt", "target", f".ckpt.old-{dead}-{host}-deadbeef"])
    assert (tmp_path / "target" / "keep").read_text() == "user data"


def test_pid_less_leftovers_of_earlier_versions(tmp_path):
    """Names without a pid (written before this version): removed once an hour old; a pid-less
    old copy with no checkpoint in place is the one a kill between the renames hid, and comes back."""
    path = tmp_path / "ckpt"
    save_version(path, 1)
    os.rename(path, tmp_path / ".ckpt.old-1a2b3c4d")  # the state a kill in the old swap gap left
    (tmp_path / ".ckpt.tmp-5e6f7a8b").mkdir()
    (tmp_path / ".ckpt.tmp-5e6f7a8b" / "model.safetensors").write_bytes(b"partial")
    assert loaded_version(path) == 1  # the readers put it back
    old = 1_000_000_000
    os.utime(tmp_path / ".ckpt.tmp-5e6f7a8b" / "model.safetensors", (old, old))
    os.utime(tmp_path / ".ckpt.tmp-5e6f7a8b", (old, old))
    save_version(path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_other_directory_writers_clean_their_leftovers_too(tmp_path):
    """data prepare, the Hugging Face exports and import-hf's tokenizer copy stage through
    staging_dir, so their next write removes what a killed one left."""
    from convert.formats.hf_import import copy_tokenizer
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    leftover = tmp_path / f".tok.tmp-{_dead_pid()}-{ad._host()}-0123abcd"
    leftover.mkdir()
    copy_tokenizer([src / "tokenizer.json"], tmp_path / "tok")
    copy_tokenizer([src / "tokenizer.json"], tmp_path / "tok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tok"]

    from shared.data.dataset import prepare_data
    from shared.data.tokenizers import get_tokenizer
    (src / "a.txt").write_text("some text to tokenize, twice over. " * 200)
    (tmp_path / f".data.tmp-{_dead_pid()}-{ad._host()}-0123abcd").mkdir()
    prepare_data([src / "a.txt"], get_tokenizer("bytes"), tmp_path / "data", val_fraction=0.1, log=lambda _m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "src", "tok"]


# ---- a real process, SIGKILLed ---------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
CHILD = """
import os, signal, sys
import shared.spec.atomic_dir as ad, shared.spec.checkpoint as ck
from tests.unit.test_checkpoint_atomic import save_version
path, target, protocol = sys.argv[1:]
if protocol == "renames":
    ad._exchange_function = lambda: None
mod, name = {"ad": ad, "ck": ck}[target.split(".")[0]], target.split(".")[1]
real = getattr(mod, name)
def dying(*args, **kwargs):
    out = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # right after the first call: nothing more runs
setattr(mod, name, dying)
save_version(path, 2)
"""


@pytest.mark.parametrize("target, protocol, survivor", [
    ("ck.save_streaming", "exchange", 1),   # after the first tensor file: the staging directory is left
    ("ad._exchange", "exchange", 2),   # after the exchange, before the old copy is removed
    ("ad._rename", "renames", 1),      # between the two renames: no checkpoint/ until a reader recovers it
])
def test_a_sigkilled_save(tmp_path, target, protocol, survivor):
    import signal
    import subprocess
    if protocol == "exchange" and ad._exchange_function() is None:
        pytest.skip("no atomic exchange on this system")
    run = tmp_path / "run"
    path = run / "checkpoint"
    save_version(path, 1)
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), target, protocol], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = [p.name for p in run.iterdir() if p.name != "checkpoint"]
    assert len(left) >= 1 and all(p.startswith((".checkpoint.tmp-", ".checkpoint.old-")) for p in left)
    assert os.path.lexists(path) == (protocol == "exchange")
    # the real `inspect` on the run directory finds a complete checkpoint (recovering it if need be)
    r = subprocess.run([sys.executable, "-m", "convert.cli", "inspect", str(run)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ERROR" not in r.stdout, r.stdout + r.stderr
    assert loaded_version(path) == survivor
    save_version(path, 3)  # another process (this one): the child's pid is gone, its leftovers stale
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"] and loaded_version(path) == 3


@pytest.mark.parametrize("arg", ["run", "checkpoint"], ids=["run-directory", "checkpoint-directory"])
def test_every_reader_recovers_a_checkpoint_hidden_by_a_kill_between_the_renames(tmp_path, arg, capsys):
    """The state a writer killed between the fallback's two renames leaves: no checkpoint/, the
    complete old copy under .checkpoint.old-*. inspect (the CLI), the checkpoint_dir helpers behind
    --resume / --init / --teacher / eval / generate / convert, and the format readers all find it."""
    from convert.cli import main as cli
    from convert.common import checkpoint_dir
    from shared.train.runner import _checkpoint_dir
    readers = [lambda p: cli(["inspect", str(p)]) == 0 and "manifest:   OK" in capsys.readouterr().out,
               lambda p: checkpoint_dir(p) == run / "checkpoint", lambda p: _checkpoint_dir(p) == run / "checkpoint",
               lambda p: ck.read_checkpoint(run / "checkpoint") and True,
               lambda p: ck.read_config(run / "checkpoint") and True]
    run = tmp_path / "run"
    for reader in readers:
        save_version(run / "checkpoint", 1)
        os.rename(run / "checkpoint", run / f".checkpoint.old-{_dead_pid()}-{ad._host()}-0123abcd")
        assert reader(run if arg == "run" else run / "checkpoint")
        assert (run / "checkpoint" / "manifest.json").exists()  # put back by the reader itself
        assert loaded_version(run / "checkpoint") == 1
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]
        save_version(run / "checkpoint", 2)
