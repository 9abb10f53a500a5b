"""Parameter-golf's data directories as a data source (DESIGN 3.5): `data.source=DIR` where DIR is
what parameter-golf's `data/cached_challenge_fineweb.py` downloads (e.g. data/datasets/fineweb10B_sp1024).

Such a directory holds `fineweb_train_*.bin` and `fineweb_val_*.bin` shards and no manifest.json.
Each shard is the format of shared/data/dataset.py at version 1 only (magic 20240520, version 1,
num_tokens, then uint16 tokens; exactly 1024 + 2 * num_tokens bytes), which is all parameter-golf's
`load_data_shard` reads. The train split is the train shards end to end in sorted file-name order
(the order of parameter-golf's TokenStream), the val split the val shards likewise, as memory maps
that are never concatenated (shared/data/shard_stream.py); from there the
training loader, its resume state and its determinism are those of our own shards
(shared/data/loader.py). Without a manifest nothing records which tokenizer made the shards: only
that every id is below the vocabulary of `data.tokenizer`, which must be the SentencePiece `.model`
file the shards were made with (parameter-golf's data/tokenizers/fineweb_1024_bpe.model for sp1024).

Bytes (val_bpb) follow parameter-golf's `build_sentencepiece_luts` exactly: a control, unknown or
unused piece counts 0 bytes and is a boundary; a byte-fallback piece counts 1; any other piece
counts the UTF-8 bytes of its text after one leading '▁' is removed, plus 1 for that '▁' unless the
previous token is a boundary. Our own rule (shared/data/tokenizers.py) differs in one place: a '▁'
inside a piece (not at its start) counts 1 byte with us (it decodes to a space) and 3 with
parameter-golf (the UTF-8 length of '▁'). SentencePiece's default whitespace splitting never makes
such pieces, so the two agree on parameter-golf's tokenizers; here parameter-golf's is used anyway.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from shared.data.dataset import MANIFEST, VERSION_UINT16, DataError, TokenDataset, read_shard
from shared.data.shard_stream import ShardedTokens
from shared.data.tokenizers import Tokenizer, TokenizerError

TRAIN_GLOB = "fineweb_train_*.bin"
VAL_GLOB = "fineweb_val_*.bin"
BYTE_RULE = "parameter-golf"


def is_parameter_golf_dir(root: Path) -> bool:
    """A directory without our manifest that holds parameter-golf shards (train or val)."""
    return (not (root / MANIFEST).exists()
            and any(True for g in (TRAIN_GLOB, VAL_GLOB) for _ in root.glob(g)))


def parameter_golf_byte_rule(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of a SentencePiece tokenizer whose byte tables are parameter-golf's (module doc)."""
    sp = getattr(tokenizer, "sp", None)
    if tokenizer.kind != "sentencepiece" or sp is None:
        raise TokenizerError(f"data.tokenizer {tokenizer.name!r} is {tokenizer.kind}: parameter-golf data is "
                             "scored with its SentencePiece byte rule; set data.tokenizer to the shards' "
                             ".model file")
    n = tokenizer.vocab_size
    base = np.zeros(n, np.int64)
    space = np.zeros(n, bool)
    boundary = np.ones(n, bool)
    for i in range(n):  # once per vocabulary entry, at load
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    out = copy.copy(tokenizer)
    out.base_bytes, out.has_leading_space, out.is_boundary = base, space, boundary
    out.byte_rule = BYTE_RULE
    return out


def load_parameter_golf(root: Path, tokenizer: Tokenizer) -> TokenDataset:
    """The dataset of a parameter-golf directory (module doc); every problem is one DataError line
    naming the directory or the file."""
    scorer = parameter_golf_byte_rule(tokenizer)
    splits, counts = {}, {}
    for split, pattern in (("train", TRAIN_GLOB), ("val", VAL_GLOB)):
        files = sorted(root.glob(pattern))
        if not files:
            raise DataError(f"{root}: no {pattern} shards; a parameter-golf data directory needs both "
                            f"{TRAIN_GLOB} and {VAL_GLOB} (download them with parameter-golf's "
                            "data/cached_challenge_fineweb.py)")
        tokens = ShardedTokens([_read_pg_shard(f) for f in files], [str(f) for f in files])
        tokens.check_ids(tokenizer.vocab_size)  # once per shard, in chunks (SEEDS S13)
        counts[split] = len(files)
        splits[split] = tokens
        if len(splits[split]) < 2:
            raise DataError(f"{root}: the {split} shards hold {len(splits[split])} token(s); at least 2 are needed")
    val = splits["val"]
    val_bytes = _scored_bytes(scorer, val)
    desc = (f"{root} (parameter-golf shards: {counts['train']} train, {counts['val']} val): {len(splits['train']):,} train / "
            f"{len(val):,} val tokens ({val_bytes:,} val bytes, parameter-golf's byte rule), "
            f"tokenizer {tokenizer.name}")
    return TokenDataset(splits["train"], val, scorer, desc, None, val_bytes)


def _read_pg_shard(path: Path) -> np.ndarray:
    tokens = read_shard(path)  # magic, version, size against the header: one line naming the file
    if tokens.dtype.itemsize != np.dtype("<u2").itemsize:
        raise DataError(f"{path}: shard version 2 (uint32 tokens) is this project's extension; parameter-golf "
                        f"shards are version {VERSION_UINT16} (uint16)")
    return tokens


def _scored_bytes(scorer: Tokenizer, tokens: np.ndarray, chunk: int = 1 << 24) -> int:
    """Bytes that scoring tokens[1:] accounts for, in chunks (a FineWeb val split is 62M tokens)."""
    total = 0
    for start in range(1, len(tokens), chunk):
        t = np.asarray(tokens[start:start + chunk])
        p = np.asarray(tokens[start - 1:start - 1 + len(t)])
        total += int(scorer.byte_counts(t, p).sum())
    return total
