"""Text files given to `tokenizer train` and `data prepare` (shared/data/tokenizers.py, dataset.py)
that are not what they should be (issue 13): binary files, and paragraph breaks made of lines that
hold only whitespace (as in WikiText)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.data.dataset import DataError, prepare_data, read_shard
from shared.data.tokenizers import TokenizerError, get_tokenizer, train_sentencepiece

BINARY = bytes(range(256)) * 64  # not UTF-8 from byte 0x80 on


def test_tokenizer_train_on_a_binary_file_names_it(tmp_path):
    """Before: a UnicodeDecodeError traceback out of SentencePiece's trainer."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BINARY)
    with pytest.raises(TokenizerError) as e:
        train_sentencepiece([blob], 300, tmp_path / "tok")
    assert str(e.value).startswith(f"{blob}: not UTF-8 text (invalid start byte)")
    assert not list(tmp_path.glob("tok*"))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_data_prepare_on_a_binary_file_names_it(tmp_path, suffix):
    """A .txt already was refused; a .jsonl was read line by line into a UnicodeDecodeError traceback."""
    blob = tmp_path / f"blob{suffix}"
    blob.write_bytes(json.dumps({"text": "fine"}).encode() + b"\n" + BINARY)
    with pytest.raises(DataError, match=rf"^{blob}: not UTF-8 text \("):
        prepare_data([blob], get_tokenizer("bytes"), tmp_path / "d", log=lambda m: None)
    assert not (tmp_path / "d").exists()


WIKITEXT_LIKE = (" \n = Title = \n \n First paragraph , of a few words . \n \n"
                 " Second paragraph , a little longer than the first . \n\t\n Third one . \n  \n")


def test_paragraphs_are_split_at_lines_holding_only_whitespace(tmp_path):
    """WikiText's blank lines hold a space: --documents paragraph found one document in it."""
    text = tmp_path / "wiki.txt"
    text.write_text(WIKITEXT_LIKE)
    man = prepare_data([text], get_tokenizer("bytes"), tmp_path / "d", val_bytes=11, documents="paragraph",
                       log=lambda m: None)
    assert man["splits"]["val"]["documents"] + man["splits"]["train"]["documents"] == 4
    tokens = np.concatenate([read_shard(tmp_path / "d" / f) for s in ("val", "train")
                             for f in man["splits"][s]["files"]])
    assert bytes(tokens.astype(np.uint8)).decode() == "".join(  # the lines as they were, less the blank ones
        [" = Title = ", " First paragraph , of a few words . ", " Second paragraph , a little longer than the first . ",
         " Third one . "])


def test_paragraph_splitting_keeps_single_line_breaks(tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("line one\nline two\n\nsecond stanza\nits second line\n")
    man = prepare_data([text], get_tokenizer("bytes"), tmp_path / "d", val_bytes=5, documents="paragraph",
                       log=lambda m: None)
    assert man["splits"]["val"]["documents"] + man["splits"]["train"]["documents"] == 3  # val cut the first
    tokens = np.concatenate([read_shard(tmp_path / "d" / f) for f in man["splits"]["train"]["files"]])
    assert "second stanza\nits second line" in bytes(tokens.astype(np.uint8)).decode()
