"""Token shards and text -> tokens (DESIGN 3.5); the training loader and eval windows are in shared/data/loader.py.

Shard format (parameter-golf's, extended for large vocabularies)
----------------------------------------------------------------
A shard is a 1024-byte header of 256 little-endian int32 followed by the tokens:
    header[0] = 20240520 (magic)
    header[1] = version: 1 = tokens are little-endian uint16 (vocabularies up to 65,536 ids, the
                parameter-golf format, readable by its scripts); 2 = tokens are little-endian uint32
                (vocabularies above 65,536, e.g. Qwen's 151,936; this project's extension)
    header[2] = num_tokens
    header[3:] = 0
The file size must be exactly 1024 + num_tokens * (2 or 4) bytes. `write_shard` picks the version
from the vocabulary size and refuses ids outside [0, vocab) (SEEDS S13); `read_shard` memory-maps
the tokens without copying and refuses a wrong magic, an unknown version or a size that does not
match the header.

A prepared data directory (`prepare_data`, i.e. `ternary data prepare`) holds `val_000000.bin ...`,
`train_000000.bin ...` and `manifest.json` (tokenizer name, kind, vocab size and sha256, token and
byte counts); overwrite=True replaces only such a directory, holding nothing else. Documents: each
`.jsonl` line's "text" field is a document; any other file is one document (documents="file", the
default) or one document per blank-line-separated paragraph (documents="paragraph"; a line holding
only whitespace is blank). Each document is tokenized on its own and, if the tokenizer has a BOS
id, prefixed with it (parameter-golf: BOS per document, no EOS). The validation split is the first `val_bytes` (default: `val_fraction` of the
input size) of text, in file order; the document that straddles the boundary is cut at a whitespace.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from shared.spec.atomic_dir import discard, staging_dir, swap_dir
from shared.spec.ownership import foreign_entries, listing, occupied, source_conflict
from shared.data.checks import check_token_ids
from shared.data.shard_stream import ShardedTokens
from shared.data.tokenizers import Tokenizer, TokenizerError

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSION_UINT16 = 1
VERSION_UINT32 = 2
_DTYPES = {VERSION_UINT16: np.dtype("<u2"), VERSION_UINT32: np.dtype("<u4")}
MANIFEST = "manifest.json"
FORMAT = "ternary-token-shards"


class DataError(ValueError):
    """A shard, manifest or corpus that cannot be used as it is."""


# ---- shards -------------------------------------------------------------------------------------
def shard_version(vocab_size: int) -> int:
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    return VERSION_UINT16 if vocab_size <= 1 << 16 else VERSION_UINT32


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int) -> Path:
    """Write tokens atomically (temporary file, then rename) in the format the vocabulary needs."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    check_token_ids(tokens, vocab_size, f"{path}")
    version = shard_version(vocab_size)
    if tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size} tokens do not fit one shard (limit 2**31 - 1)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, version, tokens.size)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(_DTYPES[version], copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only memory map (uint16 or uint32; no copy)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"shard not found: {path}") from None
    if size < HEADER_BYTES:
        raise DataError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, n = (int(x) for x in header[:3])
    if magic != MAGIC:
        raise DataError(f"{path}: not a token shard (magic {magic}, expected {MAGIC})")
    if version not in _DTYPES:
        raise DataError(f"{path}: unknown shard version {version} (this reader knows 1 = uint16, 2 = uint32)")
    expected = HEADER_BYTES + n * _DTYPES[version].itemsize
    if n < 0 or size != expected:
        raise DataError(f"{path}: file is {size} bytes but its header says {n} tokens of "
                        f"{_DTYPES[version].itemsize} bytes ({expected} bytes); the file is truncated "
                        "or damaged")
    if n == 0:
        return np.zeros(0, dtype=_DTYPES[version])
    return np.memmap(path, dtype=_DTYPES[version], mode="r", offset=HEADER_BYTES, shape=(n,))


# ---- datasets -----------------------------------------------------------------------------------
@dataclass
class TokenDataset:
    train: np.ndarray | ShardedTokens  # ShardedTokens for shards on disk: never loaded whole
    val: np.ndarray | ShardedTokens
    tokenizer: Tokenizer
    description: str
    entropy_bits_per_byte: float | None  # only for the synthetic source: the best achievable val_bpb
    val_bytes: int  # UTF-8 bytes that scoring val[1:] accounts for (tokenizer.byte_counts)


def load_token_dataset(source: str, tokenizer: Tokenizer, *, synthetic_train_bytes: int = 4_000_000,
                       synthetic_val_bytes: int = 400_000, seed: int = 0) -> TokenDataset:
    """'synthetic': generate and tokenize the embedded corpus in memory. Otherwise a directory made
    by `prepare_data`, which must have been tokenized with `tokenizer` (compared by sha256), or a
    parameter-golf data directory (shared/data/pg_shards.py: fineweb_*.bin shards, no manifest)."""
    if source == "synthetic":
        return _synthetic_dataset(tokenizer, synthetic_train_bytes, synthetic_val_bytes, seed)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"data source {source!r}: not 'synthetic' and not a directory")
    from shared.data.pg_shards import is_parameter_golf_dir, load_parameter_golf
    if is_parameter_golf_dir(root):
        return load_parameter_golf(root, tokenizer)
    man = read_manifest(root)
    tk = man["tokenizer"]
    if tk.get("sha256") != tokenizer.sha256:
        raise TokenizerError(
            f"{root} was tokenized with {tk.get('name')!r} ({tk.get('kind')}, vocab {tk.get('vocab_size')}, "
            f"sha256 {str(tk.get('sha256'))[:16]}...) but this run uses {tokenizer.name!r} "
            f"({tokenizer.kind}, vocab {tokenizer.vocab_size}, sha256 {tokenizer.sha256[:16]}...); "
            "re-prepare the data with the run's tokenizer or set data.tokenizer to the data's")
    splits = {}
    for split in ("train", "val"):
        files = [root / f for f in man["splits"][split]["files"]]
        if not files:
            raise DataError(f"{root}: the manifest lists no {split} shards")
        # memory maps end to end, never concatenated (shared/data/shard_stream.py)
        tokens = ShardedTokens([read_shard(f) for f in files], [str(f) for f in files])
        tokens.check_ids(tokenizer.vocab_size)  # once per shard, in chunks (SEEDS S13)
        if len(tokens) != man["splits"][split]["tokens"]:
            raise DataError(f"{root}: {split} shards hold {len(tokens)} tokens, the manifest says "
                            f"{man['splits'][split]['tokens']}")
        splits[split] = tokens
    desc = (f"{root}: {len(splits['train']):,} train / {len(splits['val']):,} val tokens "
            f"({man['splits']['val']['bytes']:,} val bytes), tokenizer {tokenizer.name}")
    return TokenDataset(splits["train"], splits["val"], tokenizer, desc, None, int(man["splits"]["val"]["bytes"]))


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{root}: no {MANIFEST}; is it a directory made by `ternary data prepare` (or "
                        "parameter-golf's, with fineweb_train_*.bin and fineweb_val_*.bin shards)?") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if man.get("format") != FORMAT:
        raise DataError(f"{path}: format {man.get('format')!r}, expected {FORMAT!r}")
    for key in ("tokenizer", "splits"):
        if key not in man:
            raise DataError(f"{path}: missing key {key!r}")
    return man


def _synthetic_dataset(tokenizer: Tokenizer, train_bytes: int, val_bytes: int, seed: int) -> TokenDataset:
    from shared.data.corpus import SyntheticCorpus
    for name, v in (("synthetic_train_bytes", train_bytes), ("synthetic_val_bytes", val_bytes)):
        if v <= 0:
            raise DataError(f"data.{name} must be positive, got {v}")
    corpus = SyntheticCorpus(seed)
    splits = {}
    for stream, n in (("train", train_bytes), ("val", val_bytes)):
        ids = encode_words(tokenizer, corpus.generate(n, stream))
        if tokenizer.bos_id is not None:
            ids = np.concatenate([np.array([tokenizer.bos_id], np.int32), ids])
        check_token_ids(ids, tokenizer.vocab_size, f"synthetic {stream} tokens")
        splits[stream] = ids
    val = splits["val"]
    vb = int(tokenizer.byte_counts(val[1:], val[:-1]).sum())
    desc = (f"{corpus.describe()}; {train_bytes:,} train / {val_bytes:,} val bytes -> "
            f"{len(splits['train']):,} / {len(val):,} tokens with {tokenizer.name}")
    return TokenDataset(splits["train"], val, tokenizer, desc, corpus.entropy_bits_per_byte, vb)


def encode_words(tokenizer: Tokenizer, text: str, check_chars: int = 20_000) -> np.ndarray:
    """`tokenizer.encode(text)` for long texts with a small vocabulary of space-separated words,
    in a fraction of the time: each distinct word is encoded once and the results are gathered.

    Exact for tokenizers whose tokens never span a space-preceded word boundary (SentencePiece with
    split_by_whitespace, byte-level BPE with a whitespace pre-tokenizer, bytes). This is verified
    on the first `check_chars` characters against a direct encode; if they differ, or the text has
    many distinct words, it falls back to the direct encode."""
    if tokenizer.kind == "bytes":  # already a single vectorised conversion
        return tokenizer.encode(text)
    parts = text.split(" ")
    if len(parts) < 64:
        return tokenizer.encode(text)
    uniq: dict[str, int] = {}
    idx = np.fromiter((uniq.setdefault(p, len(uniq)) for p in parts), dtype=np.int64, count=len(parts))
    if len(uniq) > max(4096, len(parts) // 20):
        return tokenizer.encode(text)
    anchor = parts[0]
    first = tokenizer.encode(anchor)
    k = len(first)
    pieces: list[np.ndarray] = []
    for u in uniq:  # once per distinct word: its tokens when it follows a word and a space
        ids = tokenizer.encode(anchor + " " + u)
        if not np.array_equal(ids[:k], first):
            return tokenizer.encode(text)
        pieces.append(ids[k:])
    lens = np.array([len(p) for p in pieces], dtype=np.int64)
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]])

    def assemble(sel: np.ndarray) -> np.ndarray:
        """The continuation tokens of the selected words (each with its leading space)."""
        ln = lens[sel]
        starts = np.repeat(offs[sel] - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln)
        return flat[starts + np.arange(int(ln.sum()))]

    def check(words: list[str], sel: np.ndarray) -> bool:
        head = tokenizer.encode(words[0])
        direct = tokenizer.encode(" ".join(words))
        return (np.array_equal(direct[:len(head)], head)
                and np.array_equal(direct[len(head):], assemble(sel)))

    # Verify on a prefix of about `check_chars` characters and on the last few words (the end).
    n = int(np.searchsorted(np.cumsum([len(p) + 1 for p in parts[:check_chars]]), check_chars)) + 1
    n = max(2, min(n, len(parts)))
    if not (check(parts[:n], idx[1:n]) and check(parts[-8:], idx[-7:])):
        return tokenizer.encode(text)
    return np.concatenate([first, assemble(idx[1:])]).astype(np.int32)


# ---- preparing shards ---------------------------------------------------------------------------
def prepare_data(text_files: Iterable[str | os.PathLike], tokenizer: Tokenizer, out_dir: str | os.PathLike,
                 *, val_fraction: float = 0.05, val_bytes: int | None = None,
                 shard_tokens: int = 100_000_000, bos_per_document: bool = True,
                 documents: str = "file", overwrite: bool = False,
                 log: Callable[[str], None] = print, chunk_chars: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Tokenize text files into val_*.bin / train_*.bin shards and manifest.json (see module doc).
    Written into a temporary sibling directory and renamed into place when complete. The text is
    read, tokenized and written piece by piece (shared/data/text_stream.py: pieces of `chunk_chars`
    characters, default ~1M), so memory stays bounded whatever the input's size; `progress` shows
    a bar of bytes read, tokens written and their rates on stderr."""
    files = [Path(f) for f in text_files]
    out_dir = Path(out_dir)
    val_bytes = _prepare_args(files, out_dir, val_fraction=val_fraction, val_bytes=val_bytes,
                              shard_tokens=shard_tokens, documents=documents, overwrite=overwrite)
    from shared.data.text_stream import write_splits
    bos = tokenizer.bos_id if bos_per_document else None
    tmp = staging_dir(out_dir)  # also clears what killed earlier prepares left behind
    try:
        writers, stats = write_splits(files, tokenizer, tmp, val_bytes=val_bytes, shard_tokens=shard_tokens,
                                      bos=bos, documents=documents, chunk_chars=chunk_chars, progress=progress)
        manifest = {
            "format": FORMAT, "version": 1,
            "tokenizer": {"name": tokenizer.name, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "sha256": tokenizer.sha256},
            "shard_version": shard_version(tokenizer.vocab_size),
            "bos_per_document": bos is not None, "documents": documents,
            "sources": [str(f) for f in files],
            "splits": {s: {"files": w.files, "tokens": w.count, "bytes": w.scored_bytes,
                           "text_bytes": stats[s]["text_bytes"], "documents": stats[s]["documents"]}
                       for s, w in writers.items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        swap_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            discard(tmp)
    v, t = manifest["splits"]["val"], manifest["splits"]["train"]
    log(f"data: wrote {out_dir}: {t['tokens']:,} train tokens in {len(t['files'])} shard(s), "
        f"{v['tokens']:,} val tokens ({v['bytes']:,} bytes), tokenizer {tokenizer.name}")
    return manifest


def _prepare_args(files: list[Path], out_dir: Path, *, val_fraction: float, val_bytes: int | None,
                  shard_tokens: int, documents: str, overwrite: bool) -> int:
    """prepare_data's arguments checked before anything is written; the validation split's bytes."""
    if not files:
        raise DataError("prepare_data: no text files given")
    for f in files:
        if not f.is_file():
            raise DataError(f"prepare_data: text file not found: {f}")
    if documents not in ("file", "paragraph"):
        raise DataError(f"prepare_data: documents must be 'file' or 'paragraph', got {documents!r}")
    if not 0 < shard_tokens < 2**31:
        raise DataError(f"prepare_data: shard_tokens must be in 1..2**31 - 1 (one shard's header count), got {shard_tokens}")
    _check_out(files, out_dir, overwrite)
    total_in = sum(f.stat().st_size for f in files)
    if val_bytes is None:
        if not 0 < val_fraction < 1:
            raise DataError(f"prepare_data: val_fraction must be in (0, 1), got {val_fraction}")
        val_bytes = max(1, int(round(val_fraction * total_in)))
    if val_bytes <= 0:
        raise DataError(f"prepare_data: val_bytes must be positive, got {val_bytes}")
    return val_bytes


def _check_out(files: list[Path], out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing `out_dir` unless `overwrite` and it is a data directory we wrote; and never
    one that holds (or is) an input text file."""
    for f in files:
        why = source_conflict(out_dir, {"the input text": f})
        if why:
            raise DataError(f"prepare_data: {why}; choose another --out (nothing was changed)")
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"prepare_data: {out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    why = _data_dir_refusal(out_dir) if occupied(out_dir) else None  # an empty directory holds nothing to lose
    if why:
        raise DataError(f"prepare_data: {why}; overwrite replaces only a directory written by `ternary data "
                        f"prepare` ({MANIFEST} and the shards it lists); nothing was changed")


def _data_dir_refusal(out_dir: Path) -> str | None:
    """None when `out_dir` is a prepared data directory holding only its manifest and the shards it
    lists (what overwrite may replace), else why not."""
    if out_dir.is_symlink() or not out_dir.is_dir():
        return f"{out_dir} is not a directory"
    try:
        splits = read_manifest(out_dir)["splits"]
        own = {MANIFEST} | {name for split in splits.values() for name in split["files"]}
    except (DataError, OSError, TypeError, KeyError, AttributeError):
        return f"{out_dir} is not a data directory of `ternary data prepare` (no readable {MANIFEST})"
    other = foreign_entries(out_dir, lambda e: e.name in own and e.is_file())
    return f"{out_dir} holds {listing(other)}, which its {MANIFEST} does not list" if other else None
