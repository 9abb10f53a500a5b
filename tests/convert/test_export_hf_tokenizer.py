"""Tokenizer files in the hf / mlx-lm / hf-bitnet exports (convert/formats/hf_tokenizer.py): for a
SentencePiece or bytes tokenizer a tokenizer.json is built, and AutoTokenizer / mlx_lm.load then give
our ids (BOS in front, as training and `ternary generate` have it) and our text back."""
from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from convert.cli import main  # noqa: E402
from shared.data.corpus import SyntheticCorpus  # noqa: E402
from shared.data.tokenizers import get_tokenizer, train_sentencepiece_from_sentences  # noqa: E402
from shared.spec.checkpoint import write_checkpoint  # noqa: E402
from shared.spec.config import RunConfig  # noqa: E402
from shared.spec.init import init_weights  # noqa: E402
from tests.variants import tiny_sets  # noqa: E402

TEXTS = [SyntheticCorpus(0).generate(3000, "val"), "the end.\nA new line", "two  spaces   and a tab\t.",
         "caf\u00e9 \u6f22\u5b57 \ufb01 \u2460 12345", " leading and trailing "]


def _export(tmp_path, tokenizer, vocab, fmt="hf", extra=()):
    cfg = RunConfig().with_overrides(tiny_sets(vocab_size=vocab, ternary=dict(group_size=0))
                                     + [f"data.tokenizer={json.dumps(str(tokenizer))}", *extra])
    write_checkpoint(tmp_path / "ck", cfg, init_weights(cfg.model, seed=0), writer={"backend": "test"})
    out = tmp_path / fmt
    assert main(["convert", str(tmp_path / "ck"), "--to", fmt, "--out", str(out)]) == 0
    return out


def _ours(tok, text):
    return ([] if tok.bos_id is None else [tok.bos_id]) + tok.encode(text).tolist()


@pytest.mark.parametrize("name,vocab", [("synthetic-bpe-512", 512), ("bytes", 256)])
def test_autotokenizer_gives_our_ids(tmp_path, capsys, name, vocab):
    out = _export(tmp_path, name, vocab)
    assert "tokenizer.json built from" in capsys.readouterr().out
    hf, tok = transformers.AutoTokenizer.from_pretrained(str(out)), get_tokenizer(name)
    for text in TEXTS:
        assert hf(text)["input_ids"] == _ours(tok, text), text[:40]
        ids = tok.encode(text).tolist()
        assert hf.decode(ids) == tok.decode(ids)


def test_mlx_lm_load_gives_our_ids(tmp_path):
    mlx_lm = pytest.importorskip("mlx_lm")
    out = _export(tmp_path, "synthetic-bpe-512", 512, "mlx-lm")
    _, wrapper = mlx_lm.load(str(out))
    tok = get_tokenizer("synthetic-bpe-512")
    assert [wrapper.encode(t) for t in TEXTS] == [_ours(tok, t) for t in TEXTS]


def test_trained_sentencepiece_with_dummy_prefix(tmp_path):
    words = ["the cat sat on the mat", "a dog ran to the log", "digits 12 34 and  spaces"] * 40
    model = train_sentencepiece_from_sentences(words, 300, tmp_path / "tok", add_dummy_prefix=True)
    out = _export(tmp_path, model, 320, "hf-bitnet")
    assert (out / "tokenizer.json").exists()
    hf, tok = transformers.AutoTokenizer.from_pretrained(str(out)), get_tokenizer(model)
    for text in ["the cat sat", "  a dog\nran ", "digits 1234"]:
        assert hf(text)["input_ids"] == _ours(tok, text), text
        assert hf.decode(tok.encode(text).tolist()) == tok.decode(tok.encode(text).tolist())


def test_unigram_model_is_not_converted_and_says_so(tmp_path, capsys):
    words = ["the cat sat on the mat", "a dog ran to the log"] * 40
    model = train_sentencepiece_from_sentences(words, 300, tmp_path / "uni", model_type="unigram")
    out = _export(tmp_path, model, 320)
    assert "not written: uni is a SentencePiece unigram model" in capsys.readouterr().out
    assert not (out / "tokenizer.json").exists()
