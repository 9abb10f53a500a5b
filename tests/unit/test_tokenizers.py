"""Tokenizers: byte accounting (parameter-golf rule), registry, hashes, training, HF loading."""
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import shared.data.tokenizers as tk
from shared.data.checks import TokenIdError
from shared.data.tokenizers import (BUILTIN_TOKENIZERS, Tokenizer, TokenizerError, get_tokenizer,
                               sentencepiece_byte_tables, train_sentencepiece)

REPO = Path(__file__).resolve().parents[2]


# ---- byte accounting: a hand-made SentencePiece-like vocabulary ----------------------------------
TOY_PIECES = ["<pad>", "<s>", "</s>", "<unk>", "<0x41>", "▁", "▁the", "cat", "é", "▁▁x", "s"]
TOY_KINDS = ["control", "control", "control", "control", "byte", "normal", "normal", "normal",
             "normal", "normal", "normal"]


def toy_tokenizer() -> Tokenizer:
    base, space, boundary = sentencepiece_byte_tables(TOY_PIECES, TOY_KINDS)
    return Tokenizer("toy", len(TOY_PIECES), "0" * 64, 1, base, space, boundary)


def test_sentencepiece_tables_by_hand():
    base, space, boundary = sentencepiece_byte_tables(TOY_PIECES, TOY_KINDS)
    #                        pad s  /s unk A  ▁  ▁the cat é  ▁▁x s
    assert base.tolist() == [0, 0, 0, 0, 1, 0, 3, 3, 2, 2, 1]
    assert space.tolist() == [False] * 5 + [True, True, False, False, True, False]
    assert boundary.tolist() == [True] * 4 + [False] * 7


def test_byte_counts_leading_space_after_boundary_vs_normal_token():
    t = toy_tokenizer()
    the, cat, bos, eos, unk, byte_a, space, e_acute, s = 6, 7, 1, 2, 3, 4, 5, 8, 10
    # "▁the" after BOS: the space is the start of the document, not counted -> 3 bytes
    # "▁the" after "cat": " the" -> 4 bytes
    targets = np.array([the, the, cat, bos, unk, byte_a, space, the, e_acute, s])
    prev = np.array([bos, cat, the, cat, cat, the, cat, eos, cat, byte_a])
    got = t.byte_counts(targets, prev)
    assert got.dtype == np.int64
    assert got.tolist() == [3, 4, 3, 0, 0, 1, 1, 3, 2, 1]


def test_byte_counts_keeps_shape_and_rejects_bad_ids():
    t = toy_tokenizer()
    targets = np.array([[6, 7], [6, 6]])
    prev = np.array([[1, 6], [7, 6]])
    assert t.byte_counts(targets, prev).tolist() == [[3, 3], [4, 4]]
    with pytest.raises(TokenIdError):
        t.byte_counts(np.array([11]), np.array([1]))
    with pytest.raises(TokenIdError):
        t.byte_counts(np.array([6]), np.array([-1]))  # never wraps around
    with pytest.raises(ValueError, match="shape"):
        t.byte_counts(np.array([6, 6]), np.array([1]))


# ---- built-ins --------------------------------------------------------------------------------
def test_bytes_tokenizer():
    t = get_tokenizer("bytes")
    assert (t.kind, t.vocab_size, t.bos_id) == ("bytes", 256, None)
    assert t.sha256 == BUILTIN_TOKENIZERS["bytes"].sha256
    text = "héllo ① 12\n"
    ids = t.encode(text)
    assert ids.dtype == np.int32 and ids.tolist() == list(text.encode("utf-8"))
    assert t.decode(ids) == text
    assert t.byte_counts(ids[1:], ids[:-1]).tolist() == [1] * (len(ids) - 1)


@pytest.fixture(scope="module")
def sp512():
    return get_tokenizer("synthetic-bpe-512")


def test_synthetic_bpe_512_spec(sp512):
    assert (sp512.kind, sp512.vocab_size, sp512.bos_id, sp512.eos_id) == ("sentencepiece", 512, 1, 2)
    path = tk.TOKENIZER_FILES / BUILTIN_TOKENIZERS["synthetic-bpe-512"].file
    assert sp512.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == BUILTIN_TOKENIZERS["synthetic-bpe-512"].sha256
    assert [sp512.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    ids = sp512.encode("kori bin")
    assert not sp512.id_to_piece(int(ids[0])).startswith("▁")  # no dummy prefix
    digits = sp512.encode("x 2024")
    assert [sp512.id_to_piece(int(i)) for i in digits[-4:]] == ["<0x32>", "<0x30>", "<0x32>", "<0x34>"]


@pytest.mark.parametrize("text", [
    "kori bin. tabu gede",
    "Héllo wörld ① 12 345!\nsecond line\t tab",
    "日本語のテキスト and mixed ascii",
])
def test_sentencepiece_byte_counts_sum_to_normalised_text_bytes(sp512, text):
    ids = np.concatenate([[sp512.bos_id], sp512.encode(text)]).astype(np.int32)
    counted = int(sp512.byte_counts(ids[1:], ids[:-1]).sum())
    assert counted == len(sp512.decode(ids).encode("utf-8"))
    if "\n" not in text and "①" not in text:  # nmt_nfkc leaves this text unchanged
        assert counted == len(text.encode("utf-8"))


def test_synthetic_bpe_512_round_trips_the_corpus(sp512):
    from shared.data.corpus import SyntheticCorpus
    text = SyntheticCorpus(3).generate(20_000, "val").rstrip(" ")
    ids = sp512.encode(text)
    assert sp512.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # the tokenizer was fitted to this language
    full = np.concatenate([[sp512.bos_id], ids])
    assert int(sp512.byte_counts(full[1:], full[:-1]).sum()) == len(text)


def test_synthetic_tokenizer_regenerates(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tok", REPO / "tools" / "make_synthetic_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = mod.make(tmp_path)
    import sentencepiece as spm
    new = spm.SentencePieceProcessor(model_file=str(path))
    old = get_tokenizer("synthetic-bpe-512").sp
    assert [new.id_to_piece(i) for i in range(512)] == [old.id_to_piece(i) for i in range(512)]
    if spm.__version__ == mod.SENTENCEPIECE_VERSION:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == BUILTIN_TOKENIZERS["synthetic-bpe-512"].sha256


# ---- registry errors ----------------------------------------------------------------------------
def test_unknown_name_suggests_closest():
    with pytest.raises(TokenizerError, match="did you mean 'synthetic-bpe-512'"):
        get_tokenizer("synthetic-bpe512")
    with pytest.raises(TokenizerError, match="unknown tokenizer 'nope-xyz'"):
        get_tokenizer("nope-xyz")


def test_builtin_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    src = tk.TOKENIZER_FILES / "synthetic-bpe-512.model"
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "synthetic-bpe-512.model").write_bytes(bytes(data))
    monkeypatch.setattr(tk, "TOKENIZER_FILES", tmp_path)
    with pytest.raises(TokenizerError, match="does not match the spec"):
        get_tokenizer("synthetic-bpe-512")


def test_paths(tmp_path):
    shutil.copy(tk.TOKENIZER_FILES / "synthetic-bpe-512.model", tmp_path / "mine.model")
    t = get_tokenizer(tmp_path / "mine.model")
    assert (t.name, t.kind, t.vocab_size) == ("mine", "sentencepiece", 512)
    assert t.sha256 == BUILTIN_TOKENIZERS["synthetic-bpe-512"].sha256
    with pytest.raises(TokenizerError, match="no tokenizer.json.*mine.model"):
        get_tokenizer(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        get_tokenizer(tmp_path / "bad.model")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TokenizerError, match="expected a SentencePiece .model"):
        get_tokenizer(tmp_path / "x.txt")


# ---- training -----------------------------------------------------------------------------------
def test_train_sentencepiece_uses_parameter_golf_settings(tmp_path):
    text = tmp_path / "t.txt"
    words = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma"]
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 12)) + f" {i}" for i in range(400)) + "\n")
    path = train_sentencepiece([text], 300, tmp_path / "out" / "tok")
    assert path == tmp_path / "out" / "tok.model" and (tmp_path / "out" / "tok.vocab").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tok.model", "tok.vocab"]  # no temp files
    t = get_tokenizer(path)
    assert t.vocab_size == 300 and t.bos_id == 1 and t.eos_id == 2
    assert [t.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert t.sp.is_byte(4)  # byte fallback pieces follow the specials
    ids = t.encode("alpha beta 42")
    assert t.id_to_piece(int(ids[0])) == "alpha"  # no dummy prefix
    assert [t.id_to_piece(int(i)) for i in ids[-2:]] == ["4", "2"]  # split digits
    assert t.decode(ids) == "alpha beta 42"
    with pytest.raises(TokenizerError, match="not found"):
        train_sentencepiece([tmp_path / "missing.txt"], 300, tmp_path / "x")


# ---- Hugging Face tokenizers (no network: a tiny byte-level BPE built here) ------------------------
def _tiny_hf_tokenizer(directory: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(["the cat sat on the mat, héllo wörld 12 ① " * 3] * 40, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    t.save(str(directory / "tokenizer.json"))


def test_hf_byte_level_tokenizer(tmp_path):
    _tiny_hf_tokenizer(tmp_path / "hf")
    t = get_tokenizer(tmp_path / "hf")
    assert t.kind == "hf" and t.bos_id == 0  # <|endoftext|> separates documents
    text = "the cat sat, héllo wörld ① 12 — ünïcode"
    ids = t.encode(text)
    assert t.decode(ids) == text
    full = np.concatenate([[t.bos_id], ids])
    counts = t.byte_counts(full[1:], full[:-1])
    assert int(counts.sum()) == len(text.encode("utf-8"))
    assert t.byte_counts(np.array([0]), np.array([5])).tolist() == [0]  # special token: 0 bytes
    # tokens that hold part of a UTF-8 character: per-token decode would count U+FFFD (3 bytes)
    partial = [i for i in ids.tolist() if "\ufffd" in t.decode([i])]
    assert partial, "the test text should produce tokens that split a UTF-8 character"
    assert t.sha256 == hashlib.sha256((tmp_path / "hf" / "tokenizer.json").read_bytes()).hexdigest()
    assert get_tokenizer(tmp_path / "hf" / "tokenizer.json").sha256 == t.sha256


def test_hf_bos_from_tokenizer_config(tmp_path):
    _tiny_hf_tokenizer(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>"}))
    t = get_tokenizer(tmp_path / "hf")
    assert t.bos_id == 0 and t.eos_id == 0


def test_spec_package_imports_no_framework():
    code = ("import sys, shared.data.tokenizers, shared.data.dataset, shared.data.corpus, shared.data.metrics; "
            "bad = [m for m in ('mlx', 'torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    import subprocess
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_hf_metaspace_tokenizer_uses_the_sentencepiece_rule(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece in ["▁", "t", "h", "e", "c", "a", "s", "▁t", "▁th", "▁the", "at", "▁c", "▁cat", "▁s", "▁sat"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("a", "t"), ("▁", "c"), ("▁c", "at"), ("▁", "s"), ("▁s", "at")]
    t = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    t.add_special_tokens([AddedToken(s, special=True) for s in ("<unk>", "<s>", "</s>")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    h = get_tokenizer(tmp_path)
    assert (h.kind, h.bos_id, h.eos_id) == ("hf", 1, 2)
    text = "the cät ① sat"
    ids = h.encode(text)
    assert [h.hf.id_to_token(int(i)) for i in ids][:4] == ["▁the", "▁c", "<0xC3>", "<0xA4>"]
    full = np.concatenate([[h.bos_id], ids])
    # '▁the' after BOS: 3 bytes; byte-fallback pieces: 1 byte each; total = the text's bytes
    assert h.byte_counts(full[1:4], full[:3]).tolist() == [3, 2, 1]
    assert int(h.byte_counts(full[1:], full[:-1]).sum()) == len(text.encode("utf-8"))
