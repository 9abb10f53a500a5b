"""--overwrite / --force of `data prepare`, `tokenizer train` and `init` replace only what that command
writes, and never what it reads (the command line in-process: convert.cli.main)."""
from __future__ import annotations

from pathlib import Path

import pytest

from convert.cli import main
from shared.data.corpus import SyntheticCorpus
from tests.variants import tiny_sets


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], keep: Path, *words: str) -> None:
    """`ternary argv` exits 2 with one error line naming `words`, and changes nothing under `keep`."""
    before = snapshot(keep)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("ternary: error:") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert snapshot(keep) == before


@pytest.fixture
def text(tmp_path) -> Path:
    words = SyntheticCorpus(1).generate(60_000, "train").split(" ")
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(" ".join(words[i:i + 30]) for i in range(0, len(words), 30)) + "\n")
    return f


def _prepare(text: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "prepare", str(text), "--tokenizer", "bytes", "--out", str(out), *extra]


def test_data_prepare_overwrite_replaces_only_a_data_directory(tmp_path, capsys, text):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    refused(capsys, _prepare(text, home, "--overwrite"), tmp_path, "not a data directory")
    data = tmp_path / "data"
    data.mkdir()  # an empty directory holds nothing to lose
    assert main(_prepare(text, data, "--overwrite")) == 0
    assert main(_prepare(text, data, "--overwrite")) == 0  # its own output: replaced
    (data / "README").write_text("precious")
    refused(capsys, _prepare(text, data, "--overwrite"), tmp_path, "README")


def test_data_prepare_overwrite_never_deletes_its_input(tmp_path, capsys, text):
    d = tmp_path / "d"
    assert main(_prepare(text, d)) == 0
    inside = d / "corpus.txt"  # the input text, kept in the directory to replace
    inside.write_text(text.read_text())
    refused(capsys, _prepare(inside, d, "--overwrite"), tmp_path, "holds the input text")


def test_tokenizer_train_never_replaces_what_it_did_not_write(tmp_path, capsys, text):
    words = tmp_path / "words.vocab"
    words.write_text("my word list\n")
    train = ["tokenizer", "train", str(text), "--vocab-size", "300", "--out"]
    refused(capsys, train + [str(tmp_path / "words")], tmp_path, "words.vocab", "--force")  # no --force: untouched
    refused(capsys, train + [str(tmp_path / "words"), "--force"], tmp_path, "words.model")
    essay = tmp_path / "essay.model"
    essay.write_text("precious")
    (tmp_path / "essay.vocab").write_text("precious too")
    refused(capsys, train + [str(tmp_path / "essay"), "--force"], tmp_path, "not a SentencePiece model")
    assert main(train + [str(tmp_path / "mine")]) == 0
    assert main(train + [str(tmp_path / "mine"), "--force"]) == 0  # its own pair: replaced
    (tmp_path / "mine.vocab").write_text("edited by hand\n")
    refused(capsys, train + [str(tmp_path / "mine"), "--force"], tmp_path, "mine.vocab")


def test_init_force_replaces_only_a_checkpoint(tmp_path, capsys):
    init = ["init", "--backend", "torch", "--set", *tiny_sets(), "--out", str(tmp_path / "ck")]
    assert main(init) == 0
    assert main(init + ["--force"]) == 0
    (tmp_path / "ck" / "notes.md").write_text("precious")
    refused(capsys, init + ["--force"], tmp_path, "notes.md", "nothing was changed")
