"""Shards stream (shared/data/shard_stream.py): the windows of a multi-shard corpus are those of the
old concatenation (also across shard ends), read from shards that are never concatenated;
resume and data-parallel ranks as before; a bad shard is one line naming it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.data.checks import TokenIdError
from shared.data.dataset import HEADER_BYTES, DataError, load_token_dataset, read_manifest, read_shard, write_shard
from shared.data.loader import TokenLoader, val_windows
from shared.data.shard_stream import ShardedTokens
from shared.data.tokenizers import get_tokenizer

SHARD_TOKENS = 997  # not a multiple of any seq_len below: many windows cross a shard end


@pytest.fixture(autouse=True, params=["pread", "map"])
def read_path(request, monkeypatch):
    """Every test twice: windows read with os.pread (POSIX) and from the memory map itself (the
    path without os.pread, which releases the map's pages)."""
    monkeypatch.setattr("shared.data.shard_stream.PREAD", request.param == "pread")
    return request.param


@pytest.fixture(scope="module")
def byte_tok():
    return get_tokenizer("bytes")


def _write_dir(root, rng, vocab=256, train_tokens=20_000, val_tokens=3_000):
    """A prepared-data directory of several shards per split (our manifest), written directly."""
    root.mkdir()
    splits = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        tokens = rng.integers(0, vocab, n)
        files = []
        for i, s in enumerate(range(0, n, SHARD_TOKENS)):
            files.append(f"{split}_{i:06d}.bin")
            write_shard(root / files[-1], tokens[s:s + SHARD_TOKENS], vocab)
        splits[split] = {"files": files, "tokens": n, "bytes": n - 1, "text_bytes": n, "documents": 1}
    tok = get_tokenizer("bytes")
    man = {"format": "ternary-token-shards", "version": 1, "splits": splits,
           "tokenizer": {"name": tok.name, "kind": tok.kind, "vocab_size": tok.vocab_size, "sha256": tok.sha256}}
    (root / "manifest.json").write_text(json.dumps(man))
    return root


def _old_tokens(root, split):
    """What the loader read before streaming: every shard of the split read whole and concatenated."""
    files = read_manifest(root)["splits"][split]["files"]
    return np.concatenate([np.fromfile(root / f, dtype="<u2", offset=HEADER_BYTES) for f in files])


@pytest.fixture()
def corpus(tmp_path, byte_tok):
    root = _write_dir(tmp_path / "d", np.random.default_rng(0))
    return root, load_token_dataset(str(root), byte_tok)


def test_loaded_splits_are_memory_maps_end_to_end(corpus):
    root, ds = corpus
    for split in ("train", "val"):
        tokens = getattr(ds, split)
        assert isinstance(tokens, ShardedTokens) and len(tokens.parts) > 1
        assert all(isinstance(p, np.memmap) for p in tokens.parts)
        old = _old_tokens(root, split)
        assert len(tokens) == len(old) and np.array_equal(np.asarray(tokens), old)
        for a, b in ((0, 5), (990, 1010), (SHARD_TOKENS - 1, 3 * SHARD_TOKENS + 7), (-30, None), (5, 5)):
            assert np.array_equal(tokens[a:b], old[a:b])
        assert tokens[SHARD_TOKENS] == old[SHARD_TOKENS] and tokens[-1] == old[-1]


def _position_tokens(tmp_path, n=20_000):
    """Shards whose token at position i is i (vocab 65,536): a window's first token is its start."""
    files = []
    for i, s in enumerate(range(0, n, SHARD_TOKENS)):
        files.append(write_shard(tmp_path / f"p_{i:06d}.bin", np.arange(s, min(n, s + SHARD_TOKENS)), 1 << 16))
    return ShardedTokens([read_shard(f) for f in files], [str(f) for f in files]), np.arange(n)


@pytest.mark.parametrize("seq, world", [(64, 1), (100, 1), (37, 3)])
def test_windows_are_those_of_the_concatenation_across_shard_ends(corpus, tmp_path, seq, world):
    """The old loader (the concatenated array) and the new (memory maps) give the same batches, on
    every rank, over two epoch boundaries; some of them cross a shard end; ranks stay disjoint."""
    root, ds = corpus
    for new_tokens, old_tokens in ((ds.train, _old_tokens(root, "train")), _position_tokens(tmp_path)):
        batch = 5
        new = [TokenLoader(new_tokens, batch, seq, rank=r, world_size=world, seed=7, log=lambda m: None)
               for r in range(world)]
        old = [TokenLoader(old_tokens, batch, seq, rank=r, world_size=world, seed=7, log=lambda m: None)
               for r in range(world)]
        steps = 2 * new[0].num_windows // (batch * world) + 3  # past two epoch boundaries
        for _ in range(steps):
            got = [ld.next_batch() for ld in new]
            for g, o in zip(got, old):
                assert g.dtype == np.int32 and g.shape == (batch, seq + 1)
                assert np.array_equal(g, o.next_batch())
    # the position corpus: first tokens are window starts
    starts = [set(b[:, 0].tolist()) for b in got]
    assert all(not (a & b) for i, a in enumerate(starts) for b in starts[i + 1:])
    ld = TokenLoader(new_tokens, 64, seq, seed=7, log=lambda m: None)
    rows = np.concatenate([ld.next_batch() for _ in range(ld.num_windows // 64)])
    crossing = rows[rows[:, 0] // SHARD_TOKENS != rows[:, -1] // SHARD_TOKENS]
    assert len(crossing) > 0 and (np.diff(crossing, axis=1) == 1).all()  # consecutive across the end


def test_val_windows_are_those_of_the_concatenation(corpus):
    root, ds = corpus
    old = _old_tokens(root, "val")
    for stride in (None, 50):
        pairs = zip(val_windows(ds.val, 128, stride=stride), val_windows(old, 128, stride=stride), strict=True)
        for a, b in pairs:
            assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_mid_stream_yields_the_same_batches(corpus):
    _, ds = corpus
    ref = TokenLoader(ds.train, 6, 50, seed=3, log=lambda m: None)
    expected = [ref.next_batch() for _ in range(150)]  # 399 windows: past two epoch boundaries
    ld = TokenLoader(ds.train, 6, 50, seed=3, log=lambda m: None)
    for _ in range(77):
        ld.next_batch()
    resumed = TokenLoader(ds.train, 6, 50, seed=3, log=lambda m: None)
    resumed.load_state(json.loads(json.dumps(ld.state())))
    for i in range(77, 150):
        assert np.array_equal(resumed.next_batch(), expected[i])


def test_loading_and_sampling_never_copy_the_corpus(tmp_path, byte_tok, monkeypatch):
    """Resident memory independent of corpus size, in a cheap form: while loading, checking ids,
    sampling batches and reading eval windows, no array larger than a few windows is built (the old
    loader concatenated every shard) and the corpus is never turned into one array."""
    root = _write_dir(tmp_path / "d", np.random.default_rng(1), train_tokens=60_000)
    biggest = [0]
    real_concatenate = np.concatenate

    def concatenate(arrays, *a, **k):
        arrays = list(arrays)
        biggest[0] = max(biggest[0], sum(np.size(x) for x in arrays))
        return real_concatenate(arrays, *a, **k)

    def whole(self, *a, **k):
        raise AssertionError("the corpus was turned into one array")

    monkeypatch.setattr(np, "concatenate", concatenate)
    monkeypatch.setattr(ShardedTokens, "__array__", whole)
    monkeypatch.setattr("shared.data.shard_stream.SCAN_TOKENS", 1024)
    ds = load_token_dataset(str(root), byte_tok)
    ld = TokenLoader(ds.train, 8, 128, seed=0, vocab_size=300, log=lambda m: None)
    for _ in range(100):
        ld.next_batch()
    for _ in val_windows(ds.val, 128):
        pass
    assert 0 < biggest[0] <= 8 * 129  # the windows of one batch at most
    assert all(isinstance(p, np.memmap) for p in ds.train.parts)


@pytest.mark.parametrize("bad_shard", [0, 2])
def test_a_bad_id_is_one_line_naming_the_shard_and_position(tmp_path, byte_tok, monkeypatch, bad_shard):
    root = _write_dir(tmp_path / "d", np.random.default_rng(2), vocab=256)
    monkeypatch.setattr("shared.data.shard_stream.SCAN_TOKENS", 100)  # the bad id in a later chunk
    name = f"train_{bad_shard:06d}.bin"
    tokens = read_shard(root / name).copy()
    tokens[[345, 700]] = 256
    write_shard(root / name, tokens, 1 << 16)
    with pytest.raises(TokenIdError) as e:
        load_token_dataset(str(root), byte_tok)
    msg = str(e.value)
    assert msg == (f"{root / name}: 2 token id(s) outside the vocabulary [0, 256), e.g. 256 at position [345]; "
                   "ids are never clamped") and "\n" not in msg
    # the loader's own check (the model's vocabulary) is that of the load, without another scan
    sharded = ShardedTokens([read_shard(root / name)], [name])
    with pytest.raises(TokenIdError, match=rf"training tokens \({name}\): 2 token id"):
        TokenLoader(sharded, 2, 10, vocab_size=256, log=lambda m: None)
    TokenLoader(sharded, 2, 10, vocab_size=257, log=lambda m: None)


def test_a_truncated_shard_is_one_line(corpus, byte_tok):
    root, _ = corpus
    f = root / "train_000003.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(DataError) as e:
        load_token_dataset(str(root), byte_tok)
    assert "train_000003.bin: file is" in str(e.value) and "\n" not in str(e.value)


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set from /proc (Linux)")
def test_resident_set_stays_flat_while_sampling(tmp_path):
    """120 MB of shards, 400 random batches: the pages a window was read from are released, so the
    resident set does not grow towards the corpus size (without the release it gains ~100 MB)."""
    rng = np.random.default_rng(0)
    files = [write_shard(tmp_path / f"s{i}.bin", rng.integers(0, 1 << 16, 15_000_000, dtype=np.uint16), 1 << 16)
             for i in range(4)]
    tokens = ShardedTokens([read_shard(f) for f in files], [str(f) for f in files])
    ld = TokenLoader(tokens, 16, 512, seed=0, log=lambda m: None)
    ld.next_batch()
    before = _rss_mib()
    for _ in range(400):
        ld.next_batch()
    assert _rss_mib() - before < 16
