"""Tokenizer specs and one interface over byte, SentencePiece and Hugging Face tokenizers (DESIGN 3.5).

Every tokenizer exposes `name`, `kind` ('bytes' | 'sentencepiece' | 'hf'), `vocab_size`, `sha256`
(of its model file; for 'bytes', of a canonical description), `bos_id` (the id put in front of each
document, or None), `encode(text) -> int32 array`, `decode(ids) -> str`, and
`byte_counts(targets, prev) -> int64 array`: the UTF-8 bytes each target token adds to the text
given the token before it, which is what val_bpb divides by (DESIGN 3.6).

Byte accounting (per-id lookup tables, built once at load; applying them is vectorised, SEEDS S6):
  bytes(target | prev) = base_bytes[target] + (has_leading_space[target] and not is_boundary[prev])
* 'bytes': every token is one byte.
* 'sentencepiece' (the parameter-golf rule): a piece counts the UTF-8 bytes of its text with a
  leading '▁' stripped, plus one byte for that '▁' (a space) unless the previous token is a boundary
  (control/unknown/unused: BOS, EOS, pad), because SentencePiece drops the space at the start of a
  document. Control and unknown tokens count 0 bytes; byte-fallback tokens <0xNN> count 1. A '▁'
  inside a piece counts as one space byte (parameter-golf's tokenizers never have such pieces, so
  the numbers agree with theirs). What is counted is the normalised text SentencePiece actually
  encodes: with nmt_nfkc a newline becomes a space and runs of whitespace collapse to one.
* 'hf': from the bytes each token decodes to. Byte-level BPE (GPT-2, Qwen): the token string mapped
  back through the byte-to-unicode table, exact even for tokens holding part of a UTF-8 character.
  Metaspace tokenizers (SentencePiece converted to tokenizer.json): the SentencePiece rule above.
  Anything else: len(decode([id]).encode()), which is exact for tokenizers whose tokens decode
  independently. Special tokens count 0 bytes and are boundaries.

Registry: `get_tokenizer(name_or_path)` accepts a built-in name (`BUILTIN_TOKENIZERS`), a path to a
SentencePiece `.model` file, or a directory holding a Hugging Face `tokenizer.json`. Built-in model
files are checked against the sha256 recorded in their spec.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from shared.data.checks import check_token_ids

TOKENIZER_FILES = Path(__file__).resolve().parent / "tokenizer_files"
_SPACE_MARK = "\u2581"  # SentencePiece's '▁'
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenizerError(ValueError):
    """An unknown tokenizer, a damaged tokenizer file, or data tokenized with another tokenizer."""


@dataclass(frozen=True)
class TokenizerSpec:
    """A built-in tokenizer: what `get_tokenizer(name)` loads and the hash its file must have."""
    name: str
    kind: str  # 'bytes' | 'sentencepiece' | 'hf'
    vocab_size: int
    file: str | None  # relative to shared/data/tokenizer_files/; None for 'bytes'
    sha256: str
    description: str


BYTES_DESCRIPTION = "ternary tokenizer 'bytes' v1: token id = UTF-8 byte value, 256 ids, no special tokens"

BUILTIN_TOKENIZERS: dict[str, TokenizerSpec] = {
    "bytes": TokenizerSpec(
        name="bytes", kind="bytes", vocab_size=256, file=None,
        sha256=hashlib.sha256(BYTES_DESCRIPTION.encode()).hexdigest(),
        description="raw UTF-8 bytes, 256 ids, no BOS"),
    "synthetic-bpe-512": TokenizerSpec(
        name="synthetic-bpe-512", kind="sentencepiece", vocab_size=512,
        file="synthetic-bpe-512.model",
        sha256="ac845e08091ec8af39d76eacee1efef01cfd837fe7f2a915bbedc4ff74254412",
        description="SentencePiece BPE with byte fallback trained on the synthetic corpus "
                    "(tools/make_synthetic_tokenizer.py); pad/bos/eos/unk = 0/1/2/3"),
}


class Tokenizer:
    """Common interface; subclasses fill the byte-accounting tables."""
    kind: str = ""
    eos_id: int | None = None  # end-of-text id for generation (not added to prepared data)

    def __init__(self, name: str, vocab_size: int, sha256: str, bos_id: int | None,
                 base_bytes: np.ndarray, has_leading_space: np.ndarray, is_boundary: np.ndarray,
                 path: str | None = None):
        self.name = name
        self.vocab_size = int(vocab_size)
        self.sha256 = sha256
        self.bos_id = bos_id
        self.path = path
        self.base_bytes = np.asarray(base_bytes, dtype=np.int64)
        self.has_leading_space = np.asarray(has_leading_space, dtype=bool)
        self.is_boundary = np.asarray(is_boundary, dtype=bool)
        for t in (self.base_bytes, self.has_leading_space, self.is_boundary):
            if t.shape != (self.vocab_size,):
                raise ValueError(f"tokenizer {name}: lookup table of shape {t.shape}, expected ({self.vocab_size},)")

    def encode(self, text: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def byte_counts(self, targets: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """UTF-8 bytes contributed by each target token given the token before it (same shapes)."""
        targets, prev = np.asarray(targets), np.asarray(prev)
        if targets.shape != prev.shape:
            raise ValueError(f"byte_counts: targets {targets.shape} and prev {prev.shape} differ in shape")
        check_token_ids(targets, self.vocab_size, f"byte_counts targets ({self.name})")
        check_token_ids(prev, self.vocab_size, f"byte_counts prev ({self.name})")
        return self.base_bytes[targets] + (self.has_leading_space[targets] & ~self.is_boundary[prev])

    def describe(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"{self.name} ({self.kind}, vocab {self.vocab_size}, sha256 {self.sha256[:12]}){where}"

    def __repr__(self) -> str:
        return f"<Tokenizer {self.describe()}>"


class ByteTokenizer(Tokenizer):
    kind = "bytes"

    def __init__(self):
        spec = BUILTIN_TOKENIZERS["bytes"]
        super().__init__("bytes", 256, spec.sha256, None,
                         np.ones(256, np.int64), np.zeros(256, bool), np.zeros(256, bool))

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        check_token_ids(ids, 256, "decode (bytes)")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_file: str | Path, name: str | None = None):
        import sentencepiece as spm
        path = Path(model_file)
        data = _read_file(path, "SentencePiece model")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with a terse message
            raise TokenizerError(f"{path}: not a valid SentencePiece model ({e})") from None
        n = int(self.sp.vocab_size())
        kinds = []
        for i in range(n):  # once per vocabulary entry at load time, never per token
            if self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_unused(i):
                kinds.append("control")
            else:
                kinds.append("byte" if self.sp.is_byte(i) else "normal")
        base, space, boundary = sentencepiece_byte_tables([self.sp.id_to_piece(i) for i in range(n)], kinds)
        bos, eos = int(self.sp.bos_id()), int(self.sp.eos_id())
        self.eos_id = eos if eos >= 0 else None
        super().__init__(name or path.stem, n, hashlib.sha256(data).hexdigest(),
                         bos if bos >= 0 else None, base, space, boundary, path=str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(t, dtype=np.int32) for t in self.sp.encode(list(texts), num_threads=os.cpu_count() or 1)]

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        check_token_ids(ids, self.vocab_size, f"decode ({self.name})")
        return self.sp.decode(ids.astype(np.int64).ravel().tolist())

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` loaded with the `tokenizers` library (imported lazily)."""
    kind = "hf"

    def __init__(self, directory: str | Path, name: str | None = None):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise TokenizerError("loading a Hugging Face tokenizer needs the 'tokenizers' package "
                                 "(pip install tokenizers)") from None
        directory = Path(directory)
        tj = directory / "tokenizer.json"
        data = _read_file(tj, "Hugging Face tokenizer")
        try:
            spec = json.loads(data)
            self.hf = _HF.from_str(data.decode("utf-8"))
        except Exception as e:
            raise TokenizerError(f"{tj}: not a valid tokenizer.json ({e})") from None
        n = int(self.hf.get_vocab_size(with_added_tokens=True))
        vocab = self.hf.get_vocab(with_added_tokens=True)
        n = max(n, max(vocab.values()) + 1) if vocab else n
        id_to_tok = {i: t for t, i in vocab.items()}
        special = {int(a["id"]) for a in spec.get("added_tokens", []) if a.get("special")}
        base = np.zeros(n, np.int64)
        space = np.zeros(n, bool)
        boundary = np.zeros(n, bool)
        style = _hf_decoder_style(spec.get("decoder"))
        added = {int(a["id"]): a["content"] for a in spec.get("added_tokens", [])}
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        for i in range(n):  # once per vocabulary entry at load time
            if i in special or i not in id_to_tok:
                boundary[i] = True
                continue
            tok = id_to_tok[i]
            if i in added:  # non-special added tokens are literal text
                base[i] = len(added[i].encode("utf-8"))
            elif style == "bytelevel":
                base[i] = sum(1 if c in byte_decoder else len(c.encode("utf-8")) for c in tok)
            elif style == "metaspace":
                base[i], space[i] = (1, False) if _BYTE_PIECE.match(tok) else _piece_bytes(tok)
            else:
                base[i] = len(self.hf.decode([i], skip_special_tokens=False).encode("utf-8"))
        self.style = style
        self.eos_id = _hf_special_id(directory, "eos_token", vocab)
        bos = _hf_special_id(directory, "bos_token", vocab)
        if bos is None and "<|endoftext|>" in vocab:
            bos = vocab["<|endoftext|>"]  # GPT/Qwen-style document separator
        super().__init__(name or directory.name, n, hashlib.sha256(data).hexdigest(), bos,
                         base, space, boundary, path=str(directory))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32)
                for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        check_token_ids(ids, self.vocab_size, f"decode ({self.name})")
        return self.hf.decode(ids.astype(np.int64).ravel().tolist(), skip_special_tokens=False)


# ---- registry -------------------------------------------------------------------------------------
def get_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """A built-in name, a SentencePiece `.model` file, or a directory with `tokenizer.json`."""
    key = str(name_or_path)
    if key in BUILTIN_TOKENIZERS:
        return _load_builtin(BUILTIN_TOKENIZERS[key])
    path = Path(key).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path)
        models = sorted(p.name for p in path.glob("*.model"))
        hint = f"; it holds {', '.join(models)}: pass that file" if models else ""
        raise TokenizerError(f"tokenizer directory {path} has no tokenizer.json{hint}")
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        if path.name == "tokenizer.json":
            return HFTokenizer(path.parent)
        raise TokenizerError(f"tokenizer file {path}: expected a SentencePiece .model file or a "
                             "directory holding tokenizer.json")
    close = difflib.get_close_matches(key, list(BUILTIN_TOKENIZERS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TokenizerError(f"unknown tokenizer {key!r}{hint}: not a built-in name "
                         f"({', '.join(BUILTIN_TOKENIZERS)}) and no such file or directory")


def _load_builtin(spec: TokenizerSpec) -> Tokenizer:
    if spec.kind == "bytes":
        tok: Tokenizer = ByteTokenizer()
    else:
        path = TOKENIZER_FILES / spec.file
        digest = hashlib.sha256(_read_file(path, f"built-in tokenizer {spec.name!r}")).hexdigest()
        if digest != spec.sha256:
            raise TokenizerError(
                f"{path}: sha256 {digest} does not match the spec of built-in tokenizer {spec.name!r} "
                f"({spec.sha256}); the file was changed or damaged (regenerate it with "
                "tools/make_synthetic_tokenizer.py or reinstall the package)")
        tok = SentencePieceTokenizer(path, name=spec.name)
    if tok.vocab_size != spec.vocab_size or tok.sha256 != spec.sha256:
        raise TokenizerError(f"built-in tokenizer {spec.name!r}: loaded vocab {tok.vocab_size} / sha256 "
                             f"{tok.sha256}, spec says {spec.vocab_size} / {spec.sha256}")
    return tok


# The files of a Hugging Face tokenizer directory that matter to a tokenizer (what `ternary import-hf`
# copies, and copy_tokenizer).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json")


def copy_tokenizer(tok: Tokenizer, dest: Path) -> str:
    """Copy a tokenizer loaded from a file or directory into the directory `dest` (staged in a
    temporary sibling, then renamed) and return its name there, for data.tokenizer. A `dest` that
    already holds this tokenizer (same sha256) is used as it is; one holding anything else is refused."""
    import shutil
    import uuid
    src = Path(tok.path)
    files = [src] if src.is_file() else [src / n for n in HF_TOKENIZER_FILES if (src / n).is_file()]
    target = dest / src.name if src.is_file() else dest
    if dest.exists():
        try:
            same = get_tokenizer(target).sha256 == tok.sha256
        except TokenizerError:
            same = False
        if not same:
            raise TokenizerError(f"{dest} exists and does not hold the tokenizer {tok.name!r} of {src}; "
                                 "refusing to replace it")
        return str(target)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


# ---- SentencePiece training ---------------------------------------------------------------------
# parameter-golf's settings (DESIGN 5): BPE, byte fallback, split digits, nmt_nfkc, no dummy
# prefix, ids pad/bos/eos/unk = 0/1/2/3. num_threads=1 keeps the output byte-for-byte reproducible
# (the thread count is recorded inside the model file).
SENTENCEPIECE_DEFAULTS = dict(
    model_type="bpe", character_coverage=0.999, byte_fallback=True, split_digits=True,
    normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2,
    unk_id=3, hard_vocab_limit=False, num_threads=1, max_sentence_length=4192,
    input_sentence_size=0, minloglevel=2,
)


def train_sentencepiece(text_files: Iterable[str | os.PathLike], vocab_size: int,
                        out_prefix: str | os.PathLike, **overrides) -> Path:
    """Train a SentencePiece model on text files (parameter-golf settings unless overridden) and
    write `<out_prefix>.model` and `<out_prefix>.vocab` atomically. Each non-empty line is a
    sentence; lines longer than max_sentence_length bytes are cut at spaces. Returns the .model path."""
    files = [Path(f) for f in text_files]
    if not files:
        raise TokenizerError("train_sentencepiece: no text files given")
    for f in files:
        if not f.is_file():
            raise TokenizerError(f"train_sentencepiece: text file not found: {f}")
    opts = {**SENTENCEPIECE_DEFAULTS, **overrides}

    def lines() -> Iterator[str]:
        for f in files:
            with open(f, encoding="utf-8") as fh:
                try:
                    for line in fh:
                        yield line.strip()
                except UnicodeDecodeError as e:
                    raise TokenizerError(f"{f}: not UTF-8 text ({e.reason}); a tokenizer is trained on "
                                         "text files") from None

    return train_sentencepiece_from_sentences(lines(), vocab_size, out_prefix, **opts)


def train_sentencepiece_from_sentences(sentences: Iterable[str], vocab_size: int,
                                       out_prefix: str | os.PathLike, **overrides) -> Path:
    import sentencepiece as spm
    opts = {**SENTENCEPIECE_DEFAULTS, **overrides}
    if int(vocab_size) <= 0:
        raise TokenizerError(f"train_sentencepiece: vocab_size must be positive, got {vocab_size}")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = int(opts["max_sentence_length"])
    it = (piece for s in sentences for piece in _cut(s, limit) if piece)
    buf = io.BytesIO()  # model_writer keeps paths out of the model file: reproducible bytes
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=it, model_writer=buf, vocab_size=int(vocab_size), **opts)
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    model = buf.getvalue()
    vocab = _vocab_text(spm.SentencePieceProcessor(model_proto=model))
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    _atomic_write(out_prefix.with_name(out_prefix.name + ".vocab"), vocab.encode("utf-8"))
    _atomic_write(model_path, model)
    return model_path


def _vocab_text(sp) -> str:
    """The .vocab file written next to a model: one 'piece<TAB>score' line per id."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def trained_pair_refusal(model_path: Path, vocab_path: Path) -> str | None:
    """None when `model_path` and `vocab_path` are a pair that train_sentencepiece wrote (a SentencePiece
    model and exactly the .vocab it writes for it), the only files --force may replace; else why not."""
    import sentencepiece as spm
    for p in (model_path, vocab_path):
        if p.is_symlink() or not p.is_file():
            return f"{p} is missing or not a file (tokenizer train writes PREFIX.model and PREFIX.vocab together)"
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
    except (RuntimeError, OSError):
        return f"{model_path} is not a SentencePiece model"
    try:
        same = vocab_path.read_text(encoding="utf-8") == _vocab_text(sp)
    except (OSError, UnicodeDecodeError):
        same = False
    return None if same else f"{vocab_path} is not the vocabulary of {model_path}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cut(s: str, limit: int) -> Iterator[str]:
    """Split a sentence into pieces of at most `limit` UTF-8 bytes, at spaces where possible."""
    while len(s.encode("utf-8")) > limit:
        head = s.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
        cut = head.rfind(" ")
        cut = cut if cut > 0 else len(head)
        yield s[:cut]
        s = s[cut:].lstrip(" ")
    yield s


# ---- helpers ------------------------------------------------------------------------------------
def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise TokenizerError(f"{what}: {path} is a directory, expected a file") from None


def sentencepiece_byte_tables(pieces: list[str], kinds: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-id (base_bytes, has_leading_space, is_boundary) for SentencePiece-style pieces.
    kinds[i]: 'control' (control, unknown or unused: 0 bytes, a boundary), 'byte' (a byte-fallback
    piece <0xNN>: 1 byte) or 'normal' (the piece's text; a leading '▁' is the optional space)."""
    n = len(pieces)
    base = np.zeros(n, np.int64)
    space = np.zeros(n, bool)
    boundary = np.zeros(n, bool)
    for i, (piece, kind) in enumerate(zip(pieces, kinds, strict=True)):
        if kind == "control":
            boundary[i] = True
        elif kind == "byte":
            base[i] = 1
        elif kind == "normal":
            base[i], space[i] = _piece_bytes(piece)
        else:
            raise ValueError(f"sentencepiece_byte_tables: unknown kind {kind!r} for piece {piece!r}")
    return base, space, boundary


def _piece_bytes(piece: str) -> tuple[int, bool]:
    """(bytes without the leading-space marker, whether it had one); an inner '▁' is one space."""
    lead = piece.startswith(_SPACE_MARK)
    body = piece[1:] if lead else piece
    return len(body.replace(_SPACE_MARK, " ").encode("utf-8")), lead


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _hf_decoder_style(dec: dict | None) -> str:
    if not dec:
        return "other"
    types = [dec.get("type")] + [d.get("type") for d in dec.get("decoders", []) or []]
    if "ByteLevel" in types:
        return "bytelevel"
    if "Metaspace" in types or any(
            d.get("type") == "Replace" and d.get("pattern", {}).get("String") == _SPACE_MARK
            for d in dec.get("decoders", []) or []):
        return "metaspace"
    return "other"


def _hf_special_id(directory: Path, key: str, vocab: dict[str, int]) -> int | None:
    cfg = directory / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get(key)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{cfg}: not valid JSON: {e}") from None
    if isinstance(value, dict):
        value = value.get("content")
    return vocab.get(value) if isinstance(value, str) else None
