"""Reading text for `ternary data prepare` with bounded memory (DESIGN 3.5): documents as pieces of
at most about `chunk_chars` characters, and shards written as the tokens arrive.

A document longer than a chunk (a whole multi-GB file with documents="file", or a long paragraph
or .jsonl text) is cut into pieces at a space that has a non-space character on each side; the
next piece starts with that space. A later piece is tokenized behind an anchor, the last word of
the piece before it (at most 64 characters), and the anchor's own tokens are dropped: a
SentencePiece model without a dummy prefix (ours, parameter-golf's) encodes " word" at the start
of a text as "w", "o", ... but as "▁word" after a word. For tokenizers whose tokens never span a
space-preceded word boundary (SentencePiece with split_by_whitespace, its default; byte-level BPE
with a whitespace pre-tokenizer, e.g. GPT-2's and Qwen's; bytes) the pieces' tokens are then those
of the whole document, which the tests check; where the anchor's tokens are not the start of the
anchored text's, the tokenizer does merge across the space and prepare stops with an error rather
than write other tokens. A document shorter than a chunk is read and tokenized whole, as before.
Text without such a space for 8 chunks (e.g. long runs of Chinese) is refused with the advice to
split it into documents.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from shared.data.dataset import DataError  # dataset.py imports this module inside functions only

CHUNK_CHARS = 1 << 20  # ~1 MB of text per piece: SentencePiece returns ~0.8 tokens a character as Python ints (~30 MB)
MAX_CHUNKS_WITHOUT_CUT = 8
ANCHOR_CHARS = 64
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a space between two non-space characters


class Piece(NamedTuple):
    text: str
    first: bool  # the document's first piece (BOS goes in front of it)
    last: bool  # the document's last piece
    anchor: str = ""  # a later piece: the end of the previous piece's last word (module doc)


def iter_pieces(files: Iterable[Path], documents: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[Piece]:
    """Every document of `files` (module doc of shared/data/dataset.py), as pieces, in file order."""
    for f in files:
        if f.suffix == ".jsonl":
            docs = ([t] for t in _jsonl_texts(f))
        elif documents == "file":
            docs = [_file_fragments(f, chunk_chars)]
        else:
            docs = _paragraphs(_lines(f))
        for fragments in docs:
            yield from _cut_document(fragments, chunk_chars, f)


def _cut_document(fragments: Iterable[str], chunk_chars: int, where: Path) -> Iterator[Piece]:
    """One document's text, given as consecutive fragments, as pieces cut at _CUT."""
    buf, pending = "", None
    for fragment in fragments:
        buf += fragment
        while len(buf) > chunk_chars:
            cut = _last_cut(buf, chunk_chars)
            if cut is None:
                if len(buf) > MAX_CHUNKS_WITHOUT_CUT * chunk_chars:
                    raise DataError(f"{where}: no space between words in {len(buf):,} characters of one "
                                    "document, so it cannot be read in pieces; split it into documents "
                                    "(--documents paragraph, or a .jsonl file)")
                break
            if pending is not None:
                yield pending
            pending, buf = _next_piece(pending, buf[:cut]), buf[cut:]
    if pending is not None:
        yield pending  # a cut leaves a space in buf: pending is never the last piece
    if buf:
        yield _next_piece(pending, buf)._replace(last=True)


def _next_piece(previous: Piece | None, text: str) -> Piece:
    """The piece of `text` after `previous` (None: the document's first)."""
    if previous is None:
        return Piece(text, True, False)
    return Piece(text, False, False, previous.text[-ANCHOR_CHARS:].split()[-1])


def _last_cut(buf: str, chunk_chars: int) -> int | None:
    """The last _CUT position at or before chunk_chars (else the first after it), None if none."""
    for lo in (max(1, chunk_chars - 4096), 1):
        m = None
        for m in _CUT.finditer(buf, lo, chunk_chars + 2):
            pass
        if m is not None:
            return m.start()
    m = _CUT.search(buf, chunk_chars)
    return m.start() if m else None


def _file_fragments(f: Path, chunk_chars: int) -> Iterator[str]:
    """The text of `f` in reads of `chunk_chars` characters (newlines translated as read_text does)."""
    with open(f, encoding="utf-8") as fh:
        try:
            while True:
                text = fh.read(chunk_chars)
                if not text:
                    return
                yield text
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text ({e})") from None


def _lines(f: Path) -> Iterator[str]:
    with open(f, encoding="utf-8") as fh:
        try:
            for line in fh:
                yield line[:-1] if line.endswith("\n") else line
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text ({e})") from None


def _paragraphs(lines: Iterable[str]) -> Iterator[Iterator[str]]:
    """Each paragraph, a run of lines between lines that are empty or hold only whitespace
    (WikiText's blank lines hold a space), as the fragments of its newline-joined text: a long
    paragraph is never held whole. Each must be consumed before the next is asked for."""
    it = iter(lines)
    for line in it:
        if line.strip():
            yield _paragraph(line, it)


def _paragraph(first: str, lines: Iterator[str]) -> Iterator[str]:
    yield first
    for line in lines:
        if not line.strip():
            return
        yield "\n" + line


def _jsonl_texts(f: Path) -> Iterator[str]:
    """The "text" of each line of a .jsonl file."""
    with open(f, encoding="utf-8") as fh:
        try:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{f}:{i}: expected a JSON object with a 'text' field ({e})") from None
                if text:
                    yield text
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text ({e.reason})") from None


# ---- shards as the tokens arrive ----------------------------------------------------------------
class AppendingShards:
    """Writes one split's tokens into `<split>_NNNNNN.bin` shards of `shard_tokens` tokens as they
    arrive (a shard's header gets its count when it is complete), holding no tokens in memory. The
    shards are written in a staging directory that is renamed into place at the end, so a partial
    shard is never seen."""

    def __init__(self, root: Path, split: str, shard_tokens: int, header: np.ndarray, dtype: np.dtype):
        self.root, self.split, self.shard_tokens = root, split, shard_tokens
        self.header, self.dtype = header, dtype  # header: the 256 int32 with header[2] to fill in
        self.files: list[str] = []
        self.count = 0  # tokens in finished shards
        self._fh = None
        self._in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        while len(ids):
            if self._fh is None:
                self.files.append(f"{self.split}_{len(self.files):06d}.bin")
                self._fh = open(self.root / self.files[-1], "wb")
                self._fh.write(self.header.tobytes())
            n = min(len(ids), self.shard_tokens - self._in_shard)
            self._fh.write(ids[:n].astype(self.dtype, copy=False).tobytes())
            self._in_shard += n
            ids = ids[n:]
            if self._in_shard == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        header = self.header.copy()
        header[2] = self._in_shard
        self._fh.seek(0)
        self._fh.write(header.tobytes())
        self._fh.close()
        self.count += self._in_shard
        self._fh, self._in_shard = None, 0

    def close(self) -> None:
        if self._fh is not None:
            self._finish()


# ---- the splits ---------------------------------------------------------------------------------
def write_splits(files: list[Path], tokenizer, tmp: Path, *, val_bytes: int, shard_tokens: int, bos: int | None,
                 documents: str, chunk_chars: int | None = None, progress: bool = False):
    """Tokenize the documents piece by piece into both splits' shards in `tmp`: (writers, per-split
    counts). At most a few pieces of text and their tokens are held at once."""
    chunk_chars = CHUNK_CHARS if chunk_chars is None else chunk_chars
    writers = {s: SplitWriter(tmp, s, shard_tokens, tokenizer) for s in ("val", "train")}
    stats = {s: {"documents": 0, "text_bytes": 0} for s in ("val", "train")}
    val = ValSplit(val_bytes)
    pending: list[tuple[str, str, bool, str]] = []  # (split, text, starts a document, anchor)
    encode_batch = getattr(tokenizer, "encode_batch", None) or (lambda ts: [tokenizer.encode(t) for t in ts])
    bar = PrepareProgress(sum(f.stat().st_size for f in files), progress)
    done = False

    def flush() -> None:  # pieces are encoded in batches (multi-threaded where supported)
        for (split, _, starts, _), ids in zip(pending, encode_anchored(encode_batch, pending)):
            if bos is not None and starts:
                ids = np.concatenate([np.array([bos], np.int32), ids])
            writers[split].add(ids)
        pending.clear()
        bar.tokens(sum(w.written for w in writers.values()))

    try:
        for piece in iter_pieces(files, documents, chunk_chars):
            piece_bytes = len(piece.text.encode("utf-8"))
            for split, text, starts in val.split(piece):
                pending.append((split, text, starts, "" if starts else piece.anchor))
                stats[split]["documents"] += starts
                stats[split]["text_bytes"] += piece_bytes if text is piece.text else len(text.encode("utf-8"))
            bar.read(piece_bytes)
            if len(pending) >= 256 or sum(len(t) for _, t, _, _ in pending) >= 2 * chunk_chars:
                flush()
        flush()
        done = True
    finally:
        # the bar ends its line first, so an error from here on (a full disk while the writers close)
        # is a line of its own
        bar.close(complete=done)
        for w in writers.values():
            w.close()
    if writers["val"].count < 2 or writers["train"].count < 2:
        raise DataError(f"prepare_data: too little text for both splits ({writers['val'].count} val and "
                        f"{writers['train'].count} train tokens); lower val_fraction/val_bytes or add text")
    return writers, stats


def encode_anchored(encode_batch, pending: list[tuple[str, str, bool, str]]) -> list[np.ndarray]:
    """The tokens of each pending (split, text, starts, anchor): a text with an anchor is encoded
    behind it and the anchor's tokens are dropped (module doc)."""
    texts = [a + t for _, t, _, a in pending]
    anchors = [a for _, _, _, a in pending if a]
    encoded = [np.asarray(ids, dtype=np.int32) for ids in encode_batch(texts + anchors)]
    out, k = [], len(texts)
    for (_, text, _, anchor), ids in zip(pending, encoded):
        if anchor:
            head, k = encoded[k], k + 1
            if not np.array_equal(ids[:len(head)], head):
                raise DataError(f"prepare_data: the tokenizer merges across the space before {text[1:40]!r}, so "
                                "a long document cannot be tokenized in pieces; split the text into documents "
                                "(--documents paragraph, or a .jsonl file)")
            ids = ids[len(head):]
        out.append(ids)
    return out


class ValSplit:
    """The validation split is the first `val_bytes` bytes of text, in file order. The document that
    straddles the boundary is cut at the last whitespace before it (at the boundary if there is
    none); its rest, without leading whitespace, is a new train document. Piece by piece, this is
    exactly the cut made on the whole document (a later piece starts with a space)."""

    def __init__(self, val_bytes: int):
        self.remaining = val_bytes
        self.rest_opens_document = False  # the straddling document's rest has not started yet

    def split(self, piece: Piece) -> list[tuple[str, str, bool]]:
        """[(split, text, starts a document)] of one piece."""
        if piece.first:
            self.rest_opens_document = False
        if self.remaining <= 0:
            if not self.rest_opens_document:
                return [("train", piece.text, piece.first)]
            text = piece.text.lstrip()
            self.rest_opens_document = not text and not piece.last
            return [("train", text, True)] if text else []
        raw = piece.text.encode("utf-8")
        if len(raw) < self.remaining or (len(raw) == self.remaining and piece.last):
            self.remaining -= len(raw)
            return [("val", piece.text, piece.first)]
        head = raw[:self.remaining].decode("utf-8", errors="ignore")
        cut = max(head.rfind(" "), head.rfind("\n"))
        cut = cut if cut > 0 or (cut == 0 and not piece.first) else len(head)
        val_text, train_text = piece.text[:cut], piece.text[cut:].lstrip()
        self.remaining -= len(val_text.encode("utf-8"))
        out = [("val", val_text, piece.first)] if val_text else []
        if train_text or not piece.last:  # the document goes on in train
            self.remaining = 0
            self.rest_opens_document = not train_text
        if train_text:
            out.append(("train", train_text, True))
        return out


class SplitWriter:
    """One split's shards (AppendingShards), checking every id and counting the bytes its targets
    (every token after the split's first) stand for, as evaluation will."""

    def __init__(self, root: Path, split: str, shard_tokens: int, tokenizer):
        from shared.data.dataset import _DTYPES, HEADER_INTS, MAGIC, shard_version
        version = shard_version(tokenizer.vocab_size)
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:2] = (MAGIC, version)
        self.out = AppendingShards(root, split, shard_tokens, header, _DTYPES[version])
        self.split, self.tokenizer = split, tokenizer
        self.scored_bytes = 0
        self.written = 0
        self.prev: int | None = None

    @property
    def files(self) -> list[str]:
        return self.out.files

    @property
    def count(self) -> int:
        return self.out.count

    def add(self, ids: np.ndarray) -> None:
        from shared.data.checks import check_token_ids
        if len(ids) == 0:
            return
        check_token_ids(ids, self.tokenizer.vocab_size, f"{self.split} tokens")
        if self.prev is None:
            targets, prev = ids[1:], ids[:-1]
        else:
            targets, prev = ids, np.concatenate([np.array([self.prev], ids.dtype), ids[:-1]])
        self.scored_bytes += int(self.tokenizer.byte_counts(targets, prev).sum())
        self.prev = int(ids[-1])
        self.out.write(ids)
        self.written += len(ids)

    def close(self) -> None:
        self.out.close()


class PrepareProgress:
    """A bar of bytes read out of the input's size, with the tokens written and their rate (stderr)."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.bar = None
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="data prepare", mininterval=0.5, dynamic_ncols=True)

    def read(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(min(nbytes, self.bar.total - self.bar.n))

    def tokens(self, n: int) -> None:
        if self.bar is not None:
            rate = n / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{n:,} tokens, {rate:,.0f} tokens/s", refresh=False)

    def close(self, complete: bool = True) -> None:
        if self.bar is not None:
            if complete:  # newlines translated on reading: a few bytes fewer than the files' sizes
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
