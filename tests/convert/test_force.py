"""`ternary convert --force` replaces only our own export of the same format (convert/formats/replace.py),
never the source checkpoint or a directory holding it, and never anything else, whatever it is."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert.cli import main
from convert.formats.replace import MARKER
from shared.spec.checkpoint import read_checkpoint, write_checkpoint
from shared.spec.config import RunConfig
from shared.spec.init import init_weights
from tests.variants import tiny_sets

DIR_FORMATS = ("hf", "mlx-lm", "hf-bitnet")
GROUP = {"hf": 0, "mlx-lm": 64, "hf-bitnet": 0, "canonical": 32}
OTHER = {"hf": "hf-bitnet", "mlx-lm": "hf", "hf-bitnet": "hf"}  # another directory export of the same checkpoint
GGUF_SETS = tiny_sets(  # a model both file formats take (gguf: rows of 256; a tokenizer that fits the vocabulary)
    vocab_size=320, hidden_size=256, intermediate_size=512, ternary=dict(group_size=128),
    data=dict(tokenizer="bytes"))


def _needs(fmt: str) -> None:
    if fmt == "mlx-lm":
        pytest.importorskip("mlx.core")
    if fmt == "gguf":
        pytest.importorskip("gguf")


def _run_dir(path: Path, sets: list[str]) -> Path:
    """A run directory: its checkpoint/ and the files a run writes beside it."""
    cfg = RunConfig().with_overrides(sets)
    write_checkpoint(path / "checkpoint", cfg, init_weights(cfg.model, seed=0), writer={"backend": "test"})
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        (path / name).write_text("{}\n")
    return path


def _run_for(fmt: str, path: Path) -> Path:
    return _run_dir(path, GGUF_SETS if fmt in ("gguf", "packed") else tiny_sets(ternary=dict(group_size=GROUP[fmt])))


def snapshot(d: Path) -> dict[str, bytes]:
    if d.is_file():
        return {d.name: d.read_bytes()}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def convert(src: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["convert", str(src), "--to", fmt, "--out", str(out), *extra])


def refused(capsys, src: Path, fmt: str, out: Path, *words: str) -> None:
    """--force onto `out` exits 2 with one error line naming `words`, and changes nothing there."""
    before = snapshot(out)
    capsys.readouterr()
    assert convert(src, fmt, out, "--force") == 2
    err = capsys.readouterr().err
    assert err.count("ternary: error:") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert snapshot(out) == before


@pytest.mark.parametrize("fmt", DIR_FORMATS + ("canonical",))
def test_force_never_replaces_the_run_holding_the_source(tmp_path, capsys, fmt):
    _needs(fmt)
    run = _run_for(fmt, tmp_path / "run")
    refused(capsys, run, fmt, run, "source checkpoint")
    refused(capsys, run, fmt, run / "checkpoint", "source checkpoint")
    read_checkpoint(run / "checkpoint")


@pytest.mark.parametrize("fmt", DIR_FORMATS)
def test_force_replaces_only_our_export_of_that_format(tmp_path, capsys, fmt):
    _needs(fmt)
    run = _run_for(fmt, tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 mine")
    refused(capsys, run, fmt, photos, MARKER)
    hub = tmp_path / "downloaded"  # a Hugging Face model from elsewhere: the same file names, no marker
    assert convert(run, "hf", hub) == 0
    (hub / MARKER).unlink()
    refused(capsys, run, fmt, hub, MARKER)
    other = tmp_path / "other"
    assert convert(run, OTHER[fmt], other) == 0
    refused(capsys, run, fmt, other, f"--to {OTHER[fmt]} export")

    out = tmp_path / "ours"
    assert convert(run, fmt, out) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["to"] == fmt and sorted(marker["files"] + [MARKER]) == sorted(p.name for p in out.iterdir())
    assert convert(run, fmt, out, "--force") == 0  # our own export: replaced
    (out / "notes.txt").write_text("precious")
    refused(capsys, run, fmt, out, "notes.txt")


def test_canonical_force_replaces_only_a_checkpoint(tmp_path, capsys):
    run = _run_for("canonical", tmp_path / "run")
    out = tmp_path / "copy"
    out.mkdir()  # an empty directory holds nothing to lose
    assert convert(run, "canonical", out, "--force") == 0
    assert convert(run, "canonical", out, "--force") == 0
    (out / "notes.txt").write_text("precious")
    refused(capsys, run, "canonical", out, "notes.txt")
    (out / "notes.txt").unlink()
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    refused(capsys, run, "canonical", out, "tokenizer/")


@pytest.mark.parametrize("fmt", ["packed", "gguf"])
def test_force_replaces_only_a_file_of_that_format_and_never_the_source(tmp_path, capsys, fmt):
    _needs(fmt)
    run = _run_for(fmt, tmp_path / "run")
    essay = tmp_path / "essay.txt"
    essay.write_text("precious")
    refused(capsys, run, fmt, essay, "essay.txt")
    weights = run / "checkpoint" / "model.safetensors"
    before = weights.read_bytes()
    capsys.readouterr()
    assert convert(run, fmt, weights, "--force") == 2
    assert "source checkpoint" in capsys.readouterr().err and weights.read_bytes() == before
    read_checkpoint(run / "checkpoint")
    ours = tmp_path / f"m.{fmt}"
    assert convert(run, fmt, ours) == 0
    assert convert(run, fmt, ours, "--force") == 0  # our own kind of file: replaced
    other = "gguf" if fmt == "packed" else "packed"
    refused(capsys, run, other, ours, "nothing was changed")  # a packed file is not a GGUF file, and back
