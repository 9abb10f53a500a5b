"""Parameter-golf data directories as data.source (shared/data/pg_shards.py): loading, the byte rule
checked against a hand count, and one clear error per kind of bad directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data.checks import TokenIdError
from shared.data.dataset import DataError, load_token_dataset
from shared.data.tokenizers import TokenizerError, get_tokenizer, train_sentencepiece_from_sentences

WORDS = ["alpha", "beta", "gamma", "delta"]


def tiny_sp_model(where: Path) -> Path:
    """A 300-piece SentencePiece model with one piece holding an inner '▁' ("a▁b"), where
    parameter-golf's byte rule and ours differ."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]
    return train_sentencepiece_from_sentences(sentences, 300, where / "tok" / "tiny",
                                              user_defined_symbols=["a\u2581b"])


def write_pg_shard(path: Path, tokens, *, magic: int = 20240520, version: int = 1, count: int | None = None,
                   dtype: str = "<u2") -> None:
    """A shard written the way parameter-golf's exporter writes one (independent of our write_shard)."""
    header = np.zeros(256, "<i4")
    header[:3] = (magic, version, len(tokens) if count is None else count)
    path.write_bytes(header.tobytes() + np.asarray(tokens).astype(dtype).tobytes())


def pg_texts(n_docs: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 40)) for _ in range(n_docs)]


def pg_tokens(model: Path, n_docs: int, seed: int) -> np.ndarray:
    """Documents of the tiny vocabulary, each BOS + its tokens (parameter-golf: BOS per document)."""
    tok = get_tokenizer(model)
    return np.concatenate([np.concatenate([[tok.bos_id], tok.encode(t)]) for t in pg_texts(n_docs, seed)])


def hand_sequence(tok) -> list[int]:
    """Tokens whose parameter-golf bytes test_byte_rule_by_hand counts by hand (28 for seq[1:])."""
    pid = tok.sp.piece_to_id
    return [tok.bos_id, pid("alpha"), pid("\u2581alpha"), pid("a\u2581b"), tok.bos_id, pid("\u2581alpha"),
            pid("<0xFE>"), tok.sp.unk_id(), pid("\u2581"), pid("\u2581alpha")]


def write_pg_dir(root: Path, model: Path, train_docs: int = 60, val_docs: int = 20) -> Path:
    """fineweb_train_000000.bin, fineweb_train_000001.bin and fineweb_val_000000.bin."""
    root.mkdir(parents=True)
    train = pg_tokens(model, train_docs, 1)
    half = len(train) // 2
    write_pg_shard(root / "fineweb_train_000001.bin", train[half:])
    write_pg_shard(root / "fineweb_train_000000.bin", train[:half])
    val = np.concatenate([pg_tokens(model, val_docs, 2), hand_sequence(get_tokenizer(model))])
    write_pg_shard(root / "fineweb_val_000000.bin", val)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_sp_model(tmp_path_factory.mktemp("sp"))


def test_loads_train_in_file_order_and_val(tmp_path, model):
    root = write_pg_dir(tmp_path / "pg", model)
    tok = get_tokenizer(model)
    ds = load_token_dataset(str(root), tok)
    assert np.array_equal(ds.train, pg_tokens(model, 60, 1))  # shard 000000 first, whatever the write order
    assert np.array_equal(ds.val[:-10], pg_tokens(model, 20, 2))
    assert "parameter-golf shards: 2 train, 1 val" in ds.description
    assert ds.tokenizer.sha256 == tok.sha256 and ds.tokenizer.byte_rule == "parameter-golf"
    # every document's text (ASCII words; BOS 0 bytes), where each "a b" became the piece "a▁b" that
    # parameter-golf counts 5 bytes for 3 of text; then the hand-counted tail: 28
    n_ab = int((ds.val[:-10] == tok.sp.piece_to_id("a\u2581b")).sum())
    assert n_ab > 0
    assert ds.val_bytes == sum(len(t) for t in pg_texts(20, 2)) + 2 * n_ab + 28


def test_byte_rule_by_hand(model):
    """parameter-golf: base bytes without one leading '▁', +1 for it unless prev is a boundary
    (control/unknown/unused); byte pieces 1; '▁' inside a piece 3 (UTF-8 of U+2581); ours counts that 1."""
    from shared.data.pg_shards import parameter_golf_byte_rule
    ours = get_tokenizer(model)
    pg = parameter_golf_byte_rule(ours)
    seq = hand_sequence(ours)
    t, p = np.array(seq[1:]), np.array(seq[:-1])
    #          alpha  ▁alpha  a▁b  <s>  ▁alpha(after <s>)  <0xFE>  <unk>  ▁(after unk)  ▁alpha(after ▁)
    by_hand = [5,     5 + 1,  5,   0,   5,                 1,      0,     0,            5 + 1]
    assert pg.byte_counts(t, p).tolist() == by_hand
    assert ours.byte_counts(t, p).tolist() == by_hand[:2] + [3] + by_hand[3:]  # the one difference
    assert int(pg.byte_counts(t, p).sum()) == 28


def test_refuses_a_tokenizer_that_is_not_sentencepiece(tmp_path, model):
    root = write_pg_dir(tmp_path / "pg", model)
    with pytest.raises(TokenizerError, match="SentencePiece byte rule"):
        load_token_dataset(str(root), get_tokenizer("bytes"))


@pytest.mark.parametrize("damage, error, fragment", [
    ("no_train", DataError, "no fineweb_train_*.bin shards"),
    ("no_val", DataError, "no fineweb_val_*.bin shards"),
    ("bad_magic", DataError, "fineweb_train_000001.bin: not a token shard (magic 1234"),
    ("truncated", DataError, "fineweb_val_000000.bin: file is"),
    ("version2", DataError, "fineweb_train_000000.bin: shard version 2"),
    ("big_id", TokenIdError, "fineweb_val_000000.bin: 1 token id(s) outside the vocabulary [0, 300)"),
])
def test_bad_directories_name_the_file(tmp_path, model, damage, error, fragment):
    root = write_pg_dir(tmp_path / "pg", model)
    if damage == "no_train":
        for f in root.glob("fineweb_train_*"):
            f.unlink()
    elif damage == "no_val":
        (root / "fineweb_val_000000.bin").unlink()
    elif damage == "bad_magic":
        write_pg_shard(root / "fineweb_train_000001.bin", [5, 6, 7], magic=1234)
    elif damage == "truncated":
        f = root / "fineweb_val_000000.bin"
        f.write_bytes(f.read_bytes()[:-3])
    elif damage == "version2":
        write_pg_shard(root / "fineweb_train_000000.bin", [5, 6, 7], version=2, dtype="<u4")
    else:
        write_pg_shard(root / "fineweb_val_000000.bin", [1, 5, 300, 6])
    with pytest.raises(error) as e:
        load_token_dataset(str(root), get_tokenizer(model))
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg
