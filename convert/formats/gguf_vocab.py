"""The tokenizer metadata of a `--to gguf` export (convert/formats/gguf_export.py): llama.cpp refuses a
GGUF without `tokenizer.ggml.model` ("key not found in model"), so the export writes one for every
tokenizer it can express and otherwise fails, unless `--no-tokenizer` is given.

The keys are those of llama.cpp's own converter (convert_hf_to_gguf.py, `_set_vocab_sentencepiece` /
`_set_vocab_gpt2`) as llama.cpp's loader (src/llama-vocab.cpp) reads them:
  - SentencePiece (.model, e.g. the built-in synthetic-bpe-512, `ternary tokenizer train` output):
    tokenizer.ggml.model "llama" (llama.cpp's SPM vocabulary), pre "default", tokens = the pieces,
    scores = SentencePiece's scores, token_type = the piece types of the model file (NORMAL, UNKNOWN,
    CONTROL, USER_DEFINED, UNUSED, BYTE: the same numbers in both), bos/eos/unk/pad ids, add_bos,
    add_space_prefix (the model's add_dummy_prefix: llama.cpp assumes true when absent) and
    remove_extra_whitespaces. llama.cpp's SPM tokenizer does not apply the model's normalization
    rule (e.g. nmt_nfkc turns a newline into a space), so text with newlines, runs of spaces or
    characters NFKC changes can be tokenized differently; the report says so.
  - Hugging Face byte-level BPE (tokenizer.json): "gpt2" with merges, as before, and the BOS/EOS ids
    and add_bos of our tokenizer (shared.data.tokenizers), which may differ from tokenizer_config.json
    (a Qwen tokenizer has no bos_token; we put <|endoftext|> in front of each document).
  - the built-in `bytes` tokenizer (id = byte value): an SPM vocabulary of the 256 byte tokens
    <0x00>..<0xFF> without merges, so llama.cpp's byte fallback yields exactly the UTF-8 bytes; byte
    0x20 is the piece "▁" instead, because llama.cpp's SPM tokenizer turns every space into "▁"
    before the lookup (a literal U+2581 in the text then also maps to 0x20). There are no special
    tokens and add_bos is false; llama.cpp's defaults for an SPM vocabulary (EOS = id 2, byte 0x02)
    cannot be switched off, so its generation stops at a 0x02 byte.
Ids past the tokenizer's size up to model.vocab_size are "[PAD<i>]" tokens of type UNUSED (score
-10000), llama.cpp's convention.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from shared.spec.config import ConfigError, RunConfig

QWEN2_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
PAD_SCORE = -10000.0
NO_TOKENIZER_NOTE = ("not written (--no-tokenizer): tokenizer.ggml.model = no_vocab, so llama.cpp can load the "
                     "file but cannot tokenize or detokenize text with it")


@dataclass
class Vocab:
    """What `write` puts in the GGUF file; `note` is the report's line."""
    model: str                                     # tokenizer.ggml.model
    note: str
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    pre: str | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)   # bos / eos / unk / pad -> id
    flags: dict[str, bool] = field(default_factory=dict)    # add_bos_token, add_space_prefix, ...
    chat_template: object = None                   # a string, or a list of named templates


def plan(config: RunConfig, no_tokenizer: bool = False) -> Vocab:
    """The vocabulary to write for `config`'s data.tokenizer; ConfigError when none can be written
    (and --no-tokenizer was not given), before anything is written."""
    if no_tokenizer:
        return Vocab("no_vocab", NO_TOKENIZER_NOTE)
    from shared.data.tokenizers import TokenizerError, get_tokenizer
    name = config.data.tokenizer
    try:
        tok = get_tokenizer(name)
    except TokenizerError as e:
        raise _refuse(f"data.tokenizer {name!r} cannot be loaded ({e})") from None
    n = config.model.vocab_size
    if tok.vocab_size > n:
        raise _refuse(f"tokenizer {name!r} has {tok.vocab_size} tokens, more than model.vocab_size = {n}")
    if tok.kind == "sentencepiece":
        return _sentencepiece(tok, n)
    if tok.kind == "bytes":
        return _bytes(n)
    return _gpt2(tok, n)


def _refuse(why: str) -> ConfigError:
    return ConfigError(f"--to gguf: no tokenizer metadata can be written: {why}; llama.cpp refuses a GGUF "
                       "without it. Pass --no-tokenizer to export anyway (llama.cpp then cannot use the file "
                       "for text)")


def _pad(tokens: list[str], types: list[int], scores: list[float] | None, n: int) -> int:
    """Pad to n ids with llama.cpp's unused [PAD<i>] tokens; the number added."""
    import gguf
    k = n - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n)]
    types += [int(gguf.TokenType.UNUSED)] * k
    if scores is not None:
        scores += [PAD_SCORE] * k
    if len(set(tokens)) != len(tokens):  # llama.cpp refuses a duplicate token text
        raise _refuse("two ids have the same token text")
    return k


def _sentencepiece(tok, n: int) -> Vocab:
    sp = tok.sp
    norm = sentencepiece_spec(sp.serialized_model_proto())
    types = norm["types"]
    if len(types) != sp.vocab_size():
        raise _refuse(f"{tok.path}: {len(types)} piece types for {sp.vocab_size()} pieces")
    tokens = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    scores = [float(sp.get_score(i)) for i in range(sp.vocab_size())]
    pad = _pad(tokens, types, scores, n)
    special = {k: int(i) for k, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                      ("pad", sp.pad_id())) if i >= 0}
    flags = {"add_bos_token": tok.bos_id is not None, "add_eos_token": False,
             "add_space_prefix": norm["add_dummy_prefix"],
             "remove_extra_whitespaces": norm["remove_extra_whitespaces"]}
    rule = norm["name"] or "identity"
    ids = ", ".join(f"{k} {i}" for k, i in special.items())
    note = (f"written: {tok.name} as llama.cpp's SPM vocabulary 'llama' ({sp.vocab_size()} pieces"
            + (f" + {pad} padding" if pad else "") + f"; {ids}; add_bos {str(flags['add_bos_token']).lower()})"
            + ("" if rule == "identity" else
               f"; llama.cpp does not apply its normalization {rule!r}, so text that changes (newlines, "
               "repeated spaces, NFKC forms) may be tokenized differently"))
    return Vocab("llama", note, tokens, types, scores, pre="default", special=special, flags=flags)


def sentencepiece_spec(model: bytes) -> dict:
    """From a serialized SentencePiece ModelProto, read in the protobuf wire format (the Python API has
    no predicate for USER_DEFINED pieces nor getters for the normalizer and trainer specs, and
    sentencepiece's generated protobuf module pins a protobuf runtime version): `types`, the type of
    every piece (SentencePiece's numbers, which are gguf.TokenType's); the normalizer's `name`,
    `charsmap`, `add_dummy_prefix` and `remove_extra_whitespaces`; the trainer's `model_type`
    (1 unigram, 2 BPE) and `split_by_whitespace`. Absent fields take the proto2 defaults."""
    spec = {"types": [], "name": "", "charsmap": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
            "model_type": 1, "split_by_whitespace": True}
    norm = {1: "name", 2: "charsmap", 3: "add_dummy_prefix", 4: "remove_extra_whitespaces"}
    trainer = {3: "model_type", 22: "split_by_whitespace"}
    for num, value in _proto_fields(model):
        if num == 1:  # repeated SentencePiece pieces = 1 {piece = 1; score = 2; type = 3 [default NORMAL]}
            spec["types"].append(next((v for k, v in _proto_fields(value) if k == 3), 1))
        elif num in (2, 3):  # TrainerSpec trainer_spec = 2; NormalizerSpec normalizer_spec = 3
            for k, v in _proto_fields(value):
                key = (trainer if num == 2 else norm).get(k)
                if key is not None:
                    spec[key] = v.decode("utf-8") if key == "name" else v if key in ("charsmap", "model_type") else bool(v)
    return spec


def _proto_fields(buf: bytes):
    """(field number, value) of each field of a protobuf message: an int for a varint, else bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        else:
            raise _refuse(f"not a SentencePiece model file (protobuf wire type {wire})")
        yield key >> 3, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise _refuse("not a SentencePiece model file (truncated protobuf)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _bytes(n: int) -> Vocab:
    import gguf
    tokens = ["\u2581" if b == 0x20 else f"<0x{b:02X}>" for b in range(256)]
    types = [int(gguf.TokenType.NORMAL if b == 0x20 else gguf.TokenType.BYTE) for b in range(256)]
    scores = [0.0] * 256
    pad = _pad(tokens, types, scores, n)
    flags = {"add_bos_token": False, "add_eos_token": False, "add_space_prefix": False,
             "remove_extra_whitespaces": False}
    note = ("written for the built-in 'bytes' tokenizer (llama SPM vocabulary of the 256 byte tokens"
            + (f" + {pad} padding" if pad else "") + ", no merges: llama.cpp's byte fallback gives the UTF-8 "
            "bytes; no BOS; llama.cpp's default EOS is byte 0x02)")
    return Vocab("llama", note, tokens, types, scores, pre="default", flags=flags)


def _gpt2(tok, n: int) -> Vocab:
    import gguf
    d = Path(tok.path)
    try:
        bpe = gguf.BpeVocab(d)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        raise _refuse(f"{d} is not a byte-level BPE tokenizer llama.cpp's gpt2 model reads ({e})") from None
    toks = list(bpe.all_tokens())
    tj = json.loads((d / "tokenizer.json").read_text())
    pre = "qwen2" if json.dumps(QWEN2_REGEX_START)[1:-1] in json.dumps(tj.get("pre_tokenizer")) else "default"
    tokens = [t if isinstance(t, str) else t.decode("utf-8") for t, _, _ in toks]
    types = [int(ty) for _, _, ty in toks]
    for a in tj.get("added_tokens") or []:  # special tokens kept in the BPE vocab are control tokens too
        if a.get("special") and a["id"] < len(types):
            types[a["id"]] = int(gguf.TokenType.CONTROL)
    pad = _pad(tokens, types, None, n)
    sv = gguf.SpecialVocab(d, load_merges=True, n_vocab=n)
    special = dict(sv.special_token_ids)
    flags = {f"add_{k}_token": v for k, v in sv.add_special_token.items()}
    # Ours, which training and `ternary generate` used, win over tokenizer_config.json's.
    for key, i in (("bos", tok.bos_id), ("eos", tok.eos_id)):
        if i is not None:
            special[key] = int(i)
    flags["add_bos_token"] = tok.bos_id is not None
    note = (f"written from {d} (gpt2 BPE, pre-tokenizer {pre!r}, {len(toks)} tokens"
            + (f" + {pad} padding" if pad else "") + f", {len(sv.merges)} merges, bos {special.get('bos')}, "
            f"eos {special.get('eos')}, add_bos {flags['add_bos_token']})"
            + ("" if pre == "qwen2" else "; WARNING: the pre-tokenizer is not Qwen2's, so it is written as "
               "llama.cpp's 'default', which may split text differently from this tokenizer"))
    return Vocab("gpt2", note, tokens, types, None, pre=pre, merges=list(sv.merges), special=special,
                 flags=flags, chat_template=sv.chat_template)


def write(writer, v: Vocab, vocab_size: int) -> None:
    """Add `v`'s keys to a gguf.GGUFWriter (before write_kv_data_to_file)."""
    writer.add_tokenizer_model(v.model)
    writer.add_vocab_size(vocab_size)  # llama.cpp sizes a no_vocab model from it
    if v.model == "no_vocab":
        return
    writer.add_tokenizer_pre(v.pre or "default")
    writer.add_token_list(v.tokens)
    if v.scores is not None:
        writer.add_token_scores(v.scores)
    writer.add_token_types(v.types)
    if v.merges:
        writer.add_token_merges(v.merges)
    for key, i in v.special.items():
        _call(writer, f"add_{key}_token_id", i)
    for key, value in v.flags.items():
        _call(writer, f"add_{key}", value)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)


def _call(writer, method: str, value) -> None:
    """writer.METHOD(value); a special-token kind this gguf version has no key for is skipped, as
    gguf.SpecialVocab.add_to_gguf does (tokenizer_config.json may name cls / mask tokens)."""
    fn = getattr(writer, method, None)
    if fn is not None:
        fn(value)
