"""Shards, prepared data directories, the synthetic dataset, the training loader, eval windows."""
import json
from pathlib import Path

import numpy as np
import pytest

from shared.data.batching import inputs_and_targets
from shared.data.corpus import SyntheticCorpus
from shared.data.dataset import (HEADER_BYTES, MAGIC, DataError, encode_words, load_token_dataset, prepare_data,
                         read_manifest, read_shard, write_shard)
from shared.data.loader import TokenLoader, val_windows
from shared.data.checks import TokenIdError
from shared.data.tokenizers import TokenizerError, get_tokenizer


@pytest.fixture(scope="module")
def sp512():
    return get_tokenizer("synthetic-bpe-512")


@pytest.fixture(scope="module")
def byte_tok():
    return get_tokenizer("bytes")


# ---- shards -------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab,version,dtype,hi", [(512, 1, np.uint16, 511), (65536, 1, np.uint16, 65535),
                                                    (151936, 2, np.uint32, 151935)])
def test_shard_round_trip(tmp_path, vocab, version, dtype, hi):
    toks = np.array([0, 1, hi, 7, hi - 1], dtype=np.int64)
    path = write_shard(tmp_path / "s.bin", toks, vocab)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [MAGIC, version, 5] and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 5 * np.dtype(dtype).itemsize
    got = read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == dtype
    assert got.tolist() == toks.tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # no temp file left


def test_write_shard_rejects_out_of_vocab_ids(tmp_path):
    for bad in ([0, 512], [-1, 3]):
        with pytest.raises(TokenIdError, match="outside the vocabulary"):
            write_shard(tmp_path / "s.bin", np.array(bad), 512)
    assert list(tmp_path.iterdir()) == []


def test_read_shard_rejects_damaged_files(tmp_path):
    path = write_shard(tmp_path / "ok.bin", np.arange(10), 512)
    raw = bytearray(path.read_bytes())

    def variant(name, data):
        p = tmp_path / name
        p.write_bytes(bytes(data))
        return p

    bad_magic = raw.copy(); bad_magic[0:4] = np.int32(1234).tobytes()
    bad_version = raw.copy(); bad_version[4:8] = np.int32(3).tobytes()
    with pytest.raises(DataError, match=r"magic.*\n?.*|magic") as e:
        read_shard(variant("magic.bin", bad_magic))
    assert "magic.bin" in str(e.value)
    with pytest.raises(DataError, match="unknown shard version 3") as e:
        read_shard(variant("version.bin", bad_version))
    assert "version.bin" in str(e.value)
    with pytest.raises(DataError, match="truncated") as e:
        read_shard(variant("short.bin", raw[:-2]))
    assert "short.bin" in str(e.value)
    with pytest.raises(DataError, match="truncated"):
        read_shard(variant("long.bin", raw + b"\0\0"))
    with pytest.raises(DataError, match="shorter than"):
        read_shard(variant("tiny.bin", raw[:100]))
    with pytest.raises(DataError, match="not found"):
        read_shard(tmp_path / "missing.bin")


# ---- prepare_data / load_token_dataset ----------------------------------------------------------
def _texts(tmp_path: Path) -> list[Path]:
    corpus = SyntheticCorpus(5)
    files = []
    for i in range(3):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(corpus.generate(6_000 + 1000 * i, "train")[1000 * i:].strip() + " ünï ① 42")
        files.append(p)
    return files


def test_prepare_and_load_round_trip(tmp_path, sp512):
    files = _texts(tmp_path)
    out = tmp_path / "data"
    man = prepare_data(files, sp512, out, val_bytes=3_000, shard_tokens=1_000, log=lambda m: None)
    assert man == read_manifest(out)
    assert man["tokenizer"] == {"name": "synthetic-bpe-512", "kind": "sentencepiece", "vocab_size": 512,
                                "sha256": sp512.sha256}
    train_files, val_files = man["splits"]["train"]["files"], man["splits"]["val"]["files"]
    assert len(train_files) > 1 and train_files[0] == "train_000000.bin" and val_files[0] == "val_000000.bin"
    assert sorted(p.name for p in out.iterdir()) == sorted(train_files + val_files + ["manifest.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away

    ds = load_token_dataset(str(out), sp512)
    assert ds.entropy_bits_per_byte is None and ds.tokenizer is sp512
    # Reference: the same documents tokenized directly, BOS in front of each, split at 3,000 bytes.
    docs = [f.read_text() for f in files]
    head = docs[0].encode()[:3_000].decode(errors="ignore")
    cut = max(head.rfind(" "), head.rfind("\n"))
    val_ref = np.concatenate([[1], sp512.encode(docs[0][:cut])])
    train_ref = np.concatenate([[1], sp512.encode(docs[0][cut:].lstrip())]
                               + [np.concatenate([[1], sp512.encode(d)]) for d in docs[1:]])
    assert ds.val.tolist() == val_ref.tolist()
    assert ds.train.tolist() == train_ref.tolist()
    assert man["splits"]["val"]["documents"] == 1 and man["splits"]["train"]["documents"] == 3
    assert ds.val_bytes == man["splits"]["val"]["bytes"] == int(sp512.byte_counts(val_ref[1:], val_ref[:-1]).sum())
    assert man["splits"]["val"]["text_bytes"] == len(docs[0][:cut].encode())
    assert man["splits"]["train"]["tokens"] == len(train_ref)


def test_prepare_with_byte_tokenizer_counts_every_byte(tmp_path, byte_tok):
    files = _texts(tmp_path)
    man = prepare_data(files, byte_tok, tmp_path / "d", val_fraction=0.1, log=lambda m: None)
    total = sum(len(f.read_bytes()) for f in files)
    v, t = man["splits"]["val"], man["splits"]["train"]
    assert not man["bos_per_document"]  # the byte tokenizer has no BOS
    assert v["tokens"] == v["text_bytes"] and v["bytes"] == v["text_bytes"] - 1  # the first token is no target
    assert v["text_bytes"] + t["text_bytes"] == total - 1  # one whitespace dropped at the cut
    assert abs(v["text_bytes"] - 0.1 * total) < 100


def test_data_tokenized_with_another_tokenizer_is_refused(tmp_path, sp512, byte_tok):
    prepare_data(_texts(tmp_path), byte_tok, tmp_path / "d", log=lambda m: None)
    with pytest.raises(TokenizerError) as e:
        load_token_dataset(str(tmp_path / "d"), sp512)
    assert "'bytes'" in str(e.value) and "'synthetic-bpe-512'" in str(e.value)


def test_prepare_refuses_existing_output_and_loads_jsonl(tmp_path, byte_tok):
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"document number {i} " * 20}) for i in range(20)) + "\n")
    man = prepare_data([jl], byte_tok, tmp_path / "d", val_bytes=500, log=lambda m: None)
    assert man["splits"]["val"]["documents"] == 2  # 360 bytes + the start of the next
    with pytest.raises(DataError, match="already exists"):
        prepare_data([jl], byte_tok, tmp_path / "d", log=lambda m: None)
    prepare_data([jl], byte_tok, tmp_path / "d", val_bytes=1000, overwrite=True, log=lambda m: None)
    assert read_manifest(tmp_path / "d")["splits"]["val"]["documents"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        prepare_data([bad], byte_tok, tmp_path / "e", log=lambda m: None)
    with pytest.raises(DataError, match="not found"):
        prepare_data([tmp_path / "nope.txt"], byte_tok, tmp_path / "f", log=lambda m: None)


def test_damaged_prepared_data_is_refused(tmp_path, byte_tok):
    prepare_data(_texts(tmp_path), byte_tok, tmp_path / "d", log=lambda m: None)
    shard = tmp_path / "d" / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(DataError, match="train_000000.bin"):
        load_token_dataset(str(tmp_path / "d"), byte_tok)
    with pytest.raises(DataError, match="not 'synthetic'"):
        load_token_dataset(str(tmp_path / "nothing"), byte_tok)


def test_synthetic_dataset(sp512, byte_tok):
    corpus = SyntheticCorpus(2)
    ds = load_token_dataset("synthetic", sp512, synthetic_train_bytes=60_000, synthetic_val_bytes=30_000, seed=2)
    assert ds.entropy_bits_per_byte == corpus.entropy_bits_per_byte
    val_text = corpus.generate(30_000, "val")
    assert ds.val.dtype == np.int32 and ds.val[0] == sp512.bos_id
    assert ds.val[1:].tolist() == sp512.encode(val_text).tolist()
    assert ds.train[1:].tolist() == sp512.encode(corpus.generate(60_000, "train")).tolist()
    assert ds.val_bytes == len(val_text.rstrip(" "))  # every byte counted once; SP drops a trailing space
    assert "bits per byte" in ds.description
    again = load_token_dataset("synthetic", sp512, synthetic_train_bytes=60_000, synthetic_val_bytes=30_000, seed=2)
    assert np.array_equal(again.train, ds.train)
    other = load_token_dataset("synthetic", sp512, synthetic_train_bytes=60_000, synthetic_val_bytes=30_000, seed=3)
    assert not np.array_equal(other.train[:1000], ds.train[:1000])
    b = load_token_dataset("synthetic", byte_tok, synthetic_train_bytes=10_000, synthetic_val_bytes=5_000, seed=2)
    assert b.val.tobytes() == np.frombuffer(corpus.generate(5_000, "val").encode(), np.uint8).astype(np.int32).tobytes()
    assert b.val_bytes == 4_999


def test_encode_words_matches_direct_encode_or_falls_back(sp512):
    text = SyntheticCorpus(4).generate(50_000, "train")
    for t in (text, text + " ", text + "  x. y"):
        assert encode_words(sp512, t).tolist() == sp512.encode(t).tolist()
    prose = "The quick brown fox, jumps over the lazy dog! 12 times. " * 200 + "Ünïcödé  spaces\tand\nlines"
    assert encode_words(sp512, prose).tolist() == sp512.encode(prose).tolist()


# ---- TokenLoader --------------------------------------------------------------------------------
def _loader(n=1000, batch=4, seq=10, **kw):
    return TokenLoader(np.arange(n, dtype=np.uint16), batch, seq, log=kw.pop("log", lambda m: None), **kw)


def test_loader_windows_are_consecutive_tokens():
    ld = _loader()
    b = ld.next_batch()
    assert b.shape == (4, 11) and b.dtype == np.int32
    assert (np.diff(b, axis=1) == 1).all() and (b[:, 0] % 10 == 0).all()
    x, y = inputs_and_targets(b)
    assert np.array_equal(y[:, :-1], x[:, 1:])


def test_loader_epoch_is_a_permutation_of_all_windows():
    ld = _loader(n=401, batch=4, seq=10)  # 40 windows, 10 batches per epoch
    assert ld.num_windows == 40 and ld.tokens_per_epoch == 400
    starts = np.concatenate([ld.next_batch()[:, 0] for _ in range(10)])
    assert sorted(starts.tolist()) == list(range(0, 400, 10))
    assert starts.tolist() != sorted(starts.tolist())  # shuffled
    assert ld.epochs_done == 1.0 and ld.epochs_for(800) == 2.0


def test_loader_ranks_take_disjoint_slices_of_the_global_batch():
    world, batch = 3, 4
    single = _loader(n=2001, batch=world * batch, seq=10, seed=5)
    ranks = [_loader(n=2001, batch=batch, seq=10, seed=5, rank=r, world_size=world) for r in range(world)]
    for _ in range(12):  # crosses an epoch boundary (200 windows, 12 per global batch)
        parts = [ld.next_batch() for ld in ranks]
        starts = [set(p[:, 0].tolist()) for p in parts]
        assert not (starts[0] & starts[1]) and not (starts[1] & starts[2]) and not (starts[0] & starts[2])
        assert np.array_equal(np.concatenate(parts), single.next_batch())


def test_loader_new_epoch_is_announced_and_data_stays_real():
    logs = []
    ld = _loader(n=101, batch=3, seq=10, log=logs.append)  # 10 windows
    seen = []
    for _ in range(7):  # 21 windows: epochs 0, 1 and the start of 2
        b = ld.next_batch()
        assert (np.diff(b, axis=1) == 1).all() and (b[:, 0] % 10 == 0).all() and b.max() <= 100
        seen.append(b[:, 0])
    starts = np.concatenate(seen)
    assert sorted(starts[:10].tolist()) == sorted(starts[10:20].tolist()) == list(range(0, 100, 10))
    assert [m.split(":")[1].strip() for m in logs] == ["epoch 1 starts", "epoch 2 starts"]
    assert all(m.startswith("data: epoch") for m in logs)
    assert ld.epoch == 2


def test_loader_resume_yields_the_same_batches():
    ref = _loader(n=501, batch=4, seq=10, seed=3)
    expected = [ref.next_batch() for _ in range(30)]  # 50 windows: crosses two epoch boundaries
    ld = _loader(n=501, batch=4, seq=10, seed=3)
    for _ in range(11):
        ld.next_batch()
    state = json.loads(json.dumps(ld.state()))
    assert state["seed"] == 3 and {"epoch", "position"} <= set(state)
    resumed = _loader(n=501, batch=4, seq=10, seed=3)
    resumed.load_state(state)
    for i in range(11, 30):
        assert np.array_equal(resumed.next_batch(), expected[i])
    with pytest.raises(DataError, match="seq_len"):
        _loader(n=501, batch=4, seq=20, seed=3).load_state(state)
    with pytest.raises(DataError, match="num_windows"):
        _loader(n=901, batch=4, seq=10, seed=3).load_state(state)


def test_loader_seed_changes_order_only():
    a, b = _loader(n=1001, seed=0), _loader(n=1001, seed=1)  # 100 windows = 25 batches
    sa = np.concatenate([a.next_batch()[:, 0] for _ in range(25)])
    sb = np.concatenate([b.next_batch()[:, 0] for _ in range(25)])
    assert sa.tolist() != sb.tolist() and sorted(sa.tolist()) == sorted(sb.tolist())


def test_loader_errors():
    with pytest.raises(DataError, match="fewer than one window"):
        TokenLoader(np.arange(10), 2, 10, log=lambda m: None)
    with pytest.raises(TokenIdError):
        TokenLoader(np.array([1, 2, 600] * 20), 2, 4, vocab_size=512, log=lambda m: None)
    with pytest.raises(TokenIdError):
        TokenLoader(np.array([1, -2, 6] * 20), 2, 4, log=lambda m: None)
    with pytest.raises(TokenIdError):
        TokenLoader(np.linspace(0, 1, 50), 2, 4, log=lambda m: None)
    with pytest.raises(DataError, match="rank"):
        TokenLoader(np.arange(100), 2, 4, rank=2, world_size=2, log=lambda m: None)


# ---- val_windows --------------------------------------------------------------------------------
def _scored(tokens, seq_len, **kw):
    out = []
    for x, y, m in val_windows(tokens, seq_len, **kw):
        assert len(x) == len(y) == len(m) == min(seq_len, len(tokens) - 1)
        assert np.array_equal(y[:-1], x[1:])
        out.append((x, y, m))
    return out


@pytest.mark.parametrize("n", [101, 100, 37, 11])
def test_val_windows_score_every_token_once(n):
    toks = np.arange(n)
    wins = _scored(toks, 10)
    scored = np.concatenate([y[m] for _, y, m in wins])
    assert scored.tolist() == list(range(1, n))


@pytest.mark.parametrize("n,stride", [(101, 4), (100, 3), (64, 9), (33, 1)])
def test_val_windows_sliding(n, stride):
    toks = np.arange(n)
    wins = _scored(toks, 10, stride=stride)
    scored = np.concatenate([y[m] for _, y, m in wins])
    assert scored.tolist() == list(range(1, n))
    assert wins[0][2].all()
    for _, _, m in wins[1:]:
        assert not m[:10 - stride].any()  # at least seq_len - stride tokens of context
        assert 0 < m.sum() <= stride


def test_val_windows_max_tokens_and_short_streams():
    wins = _scored(np.arange(1000), 16, max_tokens=50)
    assert np.concatenate([y[m] for _, y, m in wins]).tolist() == list(range(1, 51))
    short = list(val_windows(np.arange(5), 16))
    assert len(short) == 1 and short[0][1].tolist() == [1, 2, 3, 4] and short[0][2].all()
    with pytest.raises(DataError, match="at least 2"):
        list(val_windows(np.arange(1), 16))
