"""shared.data.tokenizers.copy_tokenizer: a run's own copy of the tokenizer it trains with (issue 13:
a fine-tuning run pointed into its --init checkpoint)."""
from __future__ import annotations

import pytest

from shared.data.tokenizers import TokenizerError, copy_tokenizer, get_tokenizer


def test_copies_a_sentencepiece_model_and_keeps_an_identical_copy(tmp_path):
    tok = get_tokenizer("synthetic-bpe-512")
    path = copy_tokenizer(tok, tmp_path / "tokenizer")
    copy = get_tokenizer(path)
    assert path == str(tmp_path / "tokenizer" / "synthetic-bpe-512.model")
    assert (copy.sha256, copy.vocab_size) == (tok.sha256, tok.vocab_size)
    assert copy_tokenizer(tok, tmp_path / "tokenizer") == path  # already there: used as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]  # no temporaries left


def test_refuses_to_replace_a_directory_holding_something_else(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "notes.txt").write_text("mine")
    with pytest.raises(TokenizerError, match="exists and does not hold the tokenizer 'synthetic-bpe-512'"):
        copy_tokenizer(get_tokenizer("synthetic-bpe-512"), tmp_path / "tokenizer")
    assert [p.name for p in (tmp_path / "tokenizer").iterdir()] == ["notes.txt"]


def test_copies_a_hugging_face_directory(tmp_path):
    pytest.importorskip("tokenizers")
    from tests.convert.test_import_hf_checks import make_hf_dir
    src = make_hf_dir(tmp_path / "hf", tokenizer_tokens=50)
    (src / "tokenizer_config.json").write_text("{}")
    tok = get_tokenizer(src)
    path = copy_tokenizer(tok, tmp_path / "run" / "tokenizer")
    assert path == str(tmp_path / "run" / "tokenizer")
    assert sorted(p.name for p in (tmp_path / "run" / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert get_tokenizer(path).sha256 == tok.sha256
