"""`ternary data prepare` streams (shared/data/text_stream.py): text read and tokenized in pieces of
a set size gives the shards of the whole-document path (each file read and tokenized at once, as
before), the validation cut included; the pieces are bounded; progress is shown; text that cannot
be cut is one clear error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.data.corpus import SyntheticCorpus
from shared.data.dataset import DataError, prepare_data
from shared.data.text_stream import ANCHOR_CHARS, CHUNK_CHARS, _paragraphs, iter_pieces
from shared.data.tokenizers import get_tokenizer
from tests.unit.test_tokenizers import _tiny_hf_tokenizer

CHUNK = 700  # characters per piece in these tests: every file below is several pieces


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp("hf") / "hf"
    _tiny_hf_tokenizer(hf_dir)
    return {"bytes": get_tokenizer("bytes"), "sp512": get_tokenizer("synthetic-bpe-512"),
            "hf": get_tokenizer(hf_dir)}


def _texts(tmp_path: Path) -> list[Path]:
    """Three files of synthetic text with paragraphs, newlines, runs of spaces and non-ASCII."""
    corpus = SyntheticCorpus(1)
    files = []
    for i in range(3):
        words = corpus.generate(5_000 + 1_500 * i, "train")[900 * i:].split(" ")
        text = ""
        for j, w in enumerate(words):
            text += w + ("\n\n" if j % 97 == 96 else "\n" if j % 31 == 30 else "  " if j % 53 == 0 else " ")
        p = tmp_path / f"doc{i}.txt"
        p.write_text(text + " ünï ① 42 the cat sat")
        files.append(p)
    return files


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("tok", ["bytes", "sp512", "hf"])
@pytest.mark.parametrize("documents, val_bytes", [("file", 2_345), ("file", 9_000), ("paragraph", 2_345),
                                                  ("file", 700)])
def test_pieces_give_the_shards_of_whole_documents(tmp_path, tokenizers, tok, documents, val_bytes):
    """val_bytes 2,345 cuts the first file in its fourth piece, 9,000 in the second file, 700 at
    the first piece's end."""
    files = _texts(tmp_path)
    assert all(f.stat().st_size > 5 * CHUNK for f in files)
    kw = dict(val_bytes=val_bytes, shard_tokens=1_500, documents=documents, log=lambda m: None)
    whole = prepare_data(files, tokenizers[tok], tmp_path / "whole", chunk_chars=10**9, **kw)
    streamed = prepare_data(files, tokenizers[tok], tmp_path / "streamed", chunk_chars=CHUNK, **kw)
    assert streamed == whole
    assert _shards(tmp_path / "streamed") == _shards(tmp_path / "whole")
    assert len(whole["splits"]["train"]["files"]) > 1


def test_pieces_are_bounded_and_cut_between_words(tmp_path):
    text = ("lorem ipsum  dolor\nsit amet, " * 400)
    f = tmp_path / "big.txt"
    f.write_text(text)
    pieces = list(iter_pieces([f], "file", CHUNK))
    assert "".join(p.text for p in pieces) == text
    assert len(pieces) > 10 and max(len(p.text) for p in pieces) <= CHUNK
    assert [p.first for p in pieces] == [True] + [False] * (len(pieces) - 1)
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    for a, b in zip(pieces, pieces[1:]):  # a space between two non-space characters
        assert b.text[0] == " " and not a.text[-1].isspace() and not b.text[1].isspace()
    assert CHUNK_CHARS >= 1 << 20  # the default: a MB or more, not the whole file


def test_prepare_encodes_bounded_pieces_and_shows_progress(tmp_path, tokenizers, capsys, monkeypatch):
    files = _texts(tmp_path)
    tok = tokenizers["sp512"]
    sizes = []
    real = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda texts: (sizes.extend(len(t) for t in texts), real(texts))[1])
    man = prepare_data(files, tok, tmp_path / "d", val_bytes=2_000, shard_tokens=1_000, chunk_chars=CHUNK,
                       log=lambda m: None, progress=True)
    assert max(sizes) <= CHUNK + ANCHOR_CHARS and len(sizes) > 20  # a piece behind its anchor
    err = capsys.readouterr().err
    total = sum(len(f.read_bytes()) for f in files)
    tokens = man["splits"]["train"]["tokens"] + man["splits"]["val"]["tokens"]
    assert "data prepare" in err and f"{tokens:,} tokens" in err and "tokens/s" in err and "B/s" in err
    assert f"{total / 1024:.1f}k/{total / 1024:.1f}k" in err  # bytes read / total, to the end


def test_text_without_a_place_to_cut_is_one_error(tmp_path, tokenizers):
    f = tmp_path / "nospace.txt"
    f.write_text("字" * (9 * CHUNK) + " end")
    with pytest.raises(DataError) as e:
        prepare_data([f], tokenizers["bytes"], tmp_path / "d", chunk_chars=CHUNK, log=lambda m: None)
    msg = str(e.value)
    assert "nospace.txt: no space between words" in msg and "--documents paragraph" in msg and "\n" not in msg
    assert not (tmp_path / "d").exists() and [p.name for p in tmp_path.iterdir()] == ["nospace.txt"]


def test_jsonl_documents_are_read_in_pieces(tmp_path, tokenizers):
    jl = tmp_path / "docs.jsonl"
    corpus = SyntheticCorpus(2)
    jl.write_text("\n".join(json.dumps({"text": corpus.generate(3_000, "val")[i * 500:]}) for i in range(4)) + "\n")
    kw = dict(val_bytes=1_000, shard_tokens=900, log=lambda m: None)
    whole = prepare_data([jl], tokenizers["sp512"], tmp_path / "a", chunk_chars=10**9, **kw)
    streamed = prepare_data([jl], tokenizers["sp512"], tmp_path / "b", chunk_chars=CHUNK, **kw)
    assert streamed == whole and _shards(tmp_path / "a") == _shards(tmp_path / "b")
    assert np.sum([whole["splits"][s]["documents"] for s in ("val", "train")]) == 5  # 4 + the cut one


def test_a_long_paragraph_is_read_in_pieces(tmp_path, tokenizers):
    """--documents paragraph: a paragraph of many lines and ~20 pieces is never held whole, and its
    shards are those of the whole paragraph."""
    corpus = SyntheticCorpus(3)
    words = corpus.generate(14_000, "train").split(" ")
    lines = [" ".join(words[i:i + 9]) for i in range(0, len(words), 9)]
    f = tmp_path / "para.txt"
    f.write_text("short first paragraph\n \n" + "\n".join(lines) + "\n\nlast one\n")
    pieces = list(iter_pieces([f], "paragraph", CHUNK))
    assert len(pieces) > 15 and max(len(p.text) for p in pieces) <= CHUNK
    assert sum(p.first for p in pieces) == 3 and pieces[1].text.startswith(lines[0] + "\n")
    kw = dict(val_bytes=3_000, shard_tokens=2_000, documents="paragraph", log=lambda m: None)
    whole = prepare_data([f], tokenizers["sp512"], tmp_path / "a", chunk_chars=10**9, **kw)
    streamed = prepare_data([f], tokenizers["sp512"], tmp_path / "b", chunk_chars=CHUNK, **kw)
    assert streamed == whole and _shards(tmp_path / "a") == _shards(tmp_path / "b")
    # paragraphs come line by line, never joined whole
    assert [list(p) for p in _paragraphs(iter(["a", "b", " ", "", "c", "d e"]))] == [["a", "\nb"], ["c", "\nd e"]]
