"""The tokenizer metadata of `ternary convert --to gguf` (convert/formats/gguf_vocab.py), read back with
gguf.GGUFReader: llama.cpp refuses a GGUF without tokenizer.ggml.model, so a SentencePiece, bytes or
byte-level BPE tokenizer is always written (pieces, scores and types equal to the tokenizer's for
every id, special ids and flags), and anything else is refused unless --no-tokenizer."""
from __future__ import annotations

import json

import pytest

gguf = pytest.importorskip("gguf")

from convert.cli import main  # noqa: E402
from convert.formats.gguf_export import to_gguf  # noqa: E402
from shared.data.tokenizers import get_tokenizer, train_sentencepiece_from_sentences  # noqa: E402
from shared.spec.checkpoint import write_checkpoint  # noqa: E402
from shared.spec.config import ConfigError, RunConfig  # noqa: E402
from shared.spec.init import init_weights  # noqa: E402
from tests.variants import tiny_sets  # noqa: E402

# TQ blocks need ternary rows that are multiples of 256: the smallest such model, one layer.
SHAPE = dict(hidden_size=256, intermediate_size=256, num_hidden_layers=1, ternary=dict(group_size=0))
T = gguf.TokenType


def _export(tmp_path, vocab, tokenizer, *flags):
    cfg = RunConfig().with_overrides(tiny_sets(vocab_size=vocab, **SHAPE)
                                     + [f"data.tokenizer={json.dumps(str(tokenizer))}"])
    write_checkpoint(tmp_path / "ck", cfg, init_weights(cfg.model, seed=0), writer={"backend": "test"})
    return main(["convert", str(tmp_path / "ck"), "--to", "gguf", "--out", str(tmp_path / "m.gguf"), *flags])


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _sp_type(sp, i):
    """The token type from SentencePiece's own predicates (the export reads the model file's types)."""
    for pred, t in ((sp.is_unknown, T.UNKNOWN), (sp.is_control, T.CONTROL), (sp.is_unused, T.UNUSED),
                    (sp.is_byte, T.BYTE)):
        if pred(i):
            return int(t)
    return int(T.NORMAL)


def _check_sentencepiece(f, tok, vocab, user_defined=()):
    """Every key against SentencePiece's own answers; `user_defined`: the ids of the user-defined
    symbols the test trained with (SentencePiece has no predicate for them)."""
    sp, n = tok.sp, tok.sp.vocab_size()
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
    tokens, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(scores) == len(types) == vocab == f["qwen3.vocab_size"]
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert scores[:n] == pytest.approx([sp.get_score(i) for i in range(n)], abs=0)
    want = [int(T.USER_DEFINED) if i in user_defined else _sp_type(sp, i) for i in range(n)]
    assert [int(t) for t in types[:n]] == want
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, vocab)]  # llama.cpp's unused padding
    assert set(types[n:]) <= {int(T.UNUSED)} and set(scores[n:]) <= {-10000.0}
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.unknown_token_id"],
            f["tokenizer.ggml.padding_token_id"]) == (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id())
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    # our SentencePiece settings: no dummy prefix (llama.cpp assumes one when the key is absent)
    assert f["tokenizer.ggml.add_space_prefix"] is sp.normalize("x").startswith("\u2581")
    assert f["tokenizer.ggml.remove_extra_whitespaces"] is ("\u2581\u2581" not in sp.normalize("x  x"))


@pytest.mark.parametrize("vocab", [512, 520])
def test_builtin_sentencepiece_is_written(tmp_path, capsys, vocab):
    assert _export(tmp_path, vocab, "synthetic-bpe-512") == 0
    assert "tokenizer written: synthetic-bpe-512" in capsys.readouterr().out
    _check_sentencepiece(_fields(tmp_path / "m.gguf"), get_tokenizer("synthetic-bpe-512"), vocab)


def test_trained_sentencepiece_with_user_symbols(tmp_path):
    words = ["the cat sat on the mat", "a dog ran to the log", "numbers 12 34 and <sep> marks"] * 40
    model = train_sentencepiece_from_sentences(words, 300, tmp_path / "tok", user_defined_symbols=["<sep>"])
    tok = get_tokenizer(model)
    assert _export(tmp_path, 320, model) == 0
    f = _fields(tmp_path / "m.gguf")
    _check_sentencepiece(f, tok, 320, user_defined={tok.sp.piece_to_id("<sep>")})


def test_bytes_tokenizer_is_256_byte_tokens(tmp_path):
    assert _export(tmp_path, 256, "bytes") == 0
    f = _fields(tmp_path / "m.gguf")
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert f["tokenizer.ggml.model"] == "llama" and len(tokens) == 256
    assert tokens[32] == "\u2581" and types[32] == int(T.NORMAL)
    assert all(tokens[b] == f"<0x{b:02X}>" and types[b] == int(T.BYTE) for b in range(256) if b != 32)
    assert f["tokenizer.ggml.add_bos_token"] is False and f["tokenizer.ggml.add_space_prefix"] is False
    assert "tokenizer.ggml.bos_token_id" not in f
    # llama.cpp's SPM tokenizer: spaces become U+2581, each character is looked up, and what is not a
    # token falls back to its <0xNN> byte tokens; no token spans two characters, so nothing merges.
    ids = {t: i for i, t in enumerate(tokens)}
    assert all(len(t) == 1 or t.startswith("<0x") for t in tokens)
    text = "héllo wörld, ünïcode 漢字 tab\tand\nnewline"
    theirs = [i for ch in text.replace(" ", "\u2581")
              for i in ([ids[ch]] if ch in ids else [ids[f"<0x{b:02X}>"] for b in ch.encode()])]
    assert theirs == get_tokenizer("bytes").encode(text).tolist()


def _bpe_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat and the dog sat on the log"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
    return path


def test_bpe_bos_and_eos_are_ours(tmp_path):
    pytest.importorskip("transformers")
    d = _bpe_tokenizer(tmp_path / "tok")
    tok = get_tokenizer(d)  # no bos_token in tokenizer_config.json: <|endoftext|> is our BOS
    assert _export(tmp_path, 320, d) == 0
    f = _fields(tmp_path / "m.gguf")
    assert f["tokenizer.ggml.model"] == "gpt2"
    eot = f["tokenizer.ggml.tokens"].index("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == eot
    assert f["tokenizer.ggml.bos_token_id"] == f["tokenizer.ggml.eos_token_id"] == eot
    assert f["tokenizer.ggml.add_bos_token"] is True


def _word_level(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(path))
    return path


@pytest.mark.parametrize("kind", ["missing", "word-level"])
def test_unwritable_tokenizer_fails_unless_no_tokenizer(tmp_path, capsys, kind):
    if kind == "word-level":
        pytest.importorskip("transformers")
    tok = tmp_path / "gone.model" if kind == "missing" else _word_level(tmp_path / "wl")
    assert _export(tmp_path, 320, tok) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ternary: error: --to gguf: no tokenizer metadata can be written")
    assert "--no-tokenizer" in err[0]
    assert not (tmp_path / "m.gguf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ConfigError, match="no tokenizer metadata"):
        to_gguf(tmp_path / "ck", tmp_path / "m.gguf")

    assert _export(tmp_path, 320, tok, "--no-tokenizer") == 0
    assert "--no-tokenizer" in capsys.readouterr().out
    f = _fields(tmp_path / "m.gguf")
    assert f["tokenizer.ggml.model"] == "no_vocab" and f["qwen3.vocab_size"] == 320
    assert not [k for k in f if k.startswith("tokenizer.ggml.") and k != "tokenizer.ggml.model"]


def test_no_tokenizer_is_for_gguf_only(tmp_path, capsys):
    assert _export(tmp_path, 256, "bytes") == 0
    r = main(["convert", str(tmp_path / "ck"), "--to", "hf", "--no-tokenizer", "--out", str(tmp_path / "h")])
    assert r == 2 and "--no-tokenizer" in capsys.readouterr().err and not (tmp_path / "h").exists()
