"""The tokenizer files of an `hf`, `mlx-lm` or `hf-bitnet` export (convert/formats/hf_export.py,
hf_bitnet.py), so that `AutoTokenizer.from_pretrained(DIR)` and `mlx_lm.load(DIR)` read the text the
way our tokenizer does. Without them mlx_lm.load still "succeeds", with an empty Qwen2Tokenizer that
encodes any text as [].

  - a Hugging Face tokenizer directory: its files, copied.
  - a SentencePiece BPE model (the built-in synthetic-bpe-512, `ternary tokenizer train` output): a
    tokenizer.json built with the `tokenizers` library: BPE over the pieces with byte fallback, the
    merges read off the pieces in score order (each piece from two shorter ones, the rule
    transformers' SentencePiece converter uses), the model's own normalization (its precompiled
    charsmap, e.g. nmt_nfkc), removal of extra whitespace and the dummy prefix as the model file
    says, spaces as U+2581 split like SentencePiece's split_by_whitespace; a post-processor puts BOS
    in front as training and `ternary generate` do; and tokenizer_config.json naming the special tokens.
  - the built-in bytes tokenizer: the 256 byte tokens <0x00>..<0xFF>, no merges, byte fallback.
Each generated tokenizer.json is checked against our tokenizer on a fixed set of strings (newlines,
runs of spaces, NFKC forms, non-ASCII, digits) and on text made from its own vocabulary; if any id
differs nothing is written and the report says so. Anything else (a SentencePiece unigram model) is
not written, and the report says so too.
"""
from __future__ import annotations

import json
from pathlib import Path

from shared.spec.config import RunConfig

SPACE = "\u2581"
CHECK_STRINGS = ["hello world", "the end.\nA new line\n\nand more", "two  spaces and   three ", " leading space",
                 "caf\u00e9 na\u00efve \u6f22\u5b57 \U0001f600", "\ufb01 ligature \u2460 \uff21", "tab\there", "12345 678.9"]


def tokenizer_files(config: RunConfig) -> tuple[dict[str, bytes], str]:
    """(file name -> contents, a note for the report) for data.tokenizer."""
    from shared.data.tokenizers import TokenizerError, get_tokenizer
    name = config.data.tokenizer
    d = Path(name).expanduser()
    if d.is_dir() and (d / "tokenizer.json").is_file():
        from convert.formats.hf_import import tokenizer_files as hf_files
        return {f.name: f.read_bytes() for f in hf_files(d)}, f"copied from {d}"
    try:
        tok = get_tokenizer(name)
    except TokenizerError as e:
        return {}, f"not written: data.tokenizer {name!r} cannot be loaded ({e}); add tokenizer files yourself"
    if tok.vocab_size > config.model.vocab_size:
        return {}, (f"not written: tokenizer {tok.name!r} has {tok.vocab_size} ids, more than model.vocab_size = "
                    f"{config.model.vocab_size}")
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return {}, "not written: building tokenizer.json needs the 'tokenizers' package (pip install tokenizers)"
    if tok.kind == "bytes":
        backend, special = _bytes_backend(), {}
    else:
        backend, special = _sentencepiece_backend(tok)
        if backend is None:
            return {}, f"not written: {tok.name} is a SentencePiece {special} model; only BPE is converted"
    bad = _mismatch(backend, tok)
    if bad:
        return {}, f"not written: the tokenizer.json built for {tok.name} does not reproduce it on {bad!r}"
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
           "model_max_length": config.model.max_position_embeddings, **special}
    files = {"tokenizer.json": backend.to_str().encode("utf-8"),
             "tokenizer_config.json": (json.dumps(cfg, indent=2) + "\n").encode("utf-8")}
    return files, f"tokenizer.json built from {tok.name} ({tok.kind}, {tok.vocab_size} ids; checked against it)"


def write_files(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _bytes_backend():
    from tokenizers import Tokenizer, decoders, models
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    t = Tokenizer(models.BPE(vocab, [], byte_fallback=True))
    t.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return t


def _sentencepiece_backend(tok):
    """(tokenizers.Tokenizer, special tokens for tokenizer_config.json), or (None, model type name)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from convert.formats.gguf_vocab import sentencepiece_spec
    sp = tok.sp
    spec = sentencepiece_spec(sp.serialized_model_proto())
    if spec["model_type"] != 2:  # TrainerSpec.ModelType: UNIGRAM 1, BPE 2, WORD 3, CHAR 4
        return None, {1: "unigram", 3: "word", 4: "char"}.get(spec["model_type"], str(spec["model_type"]))
    n = sp.vocab_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    plain = [i for i in range(n) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))]
    merges = sorted((i, vocab[p[:k]], vocab[p[k:]], p[:k], p[k:]) for i in plain for p in [sp.id_to_piece(i)]
                    for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab)
    unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
    t = Tokenizer(models.BPE(vocab, [(a, b) for *_, a, b in merges], unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Precompiled(spec["charsmap"])] if spec["charsmap"] else []
    if spec["remove_extra_whitespaces"]:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=True, right=True)]
    if spec["add_dummy_prefix"]:
        steps.append(normalizers.Prepend(SPACE))
    t.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never",
                                               split=spec["split_by_whitespace"])
    t.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                  + ([decoders.Strip(" ", 1, 0)] if spec["add_dummy_prefix"] else []))
    special = {f"{k}_token": sp.id_to_piece(i) for k, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()),
                                                            ("unk", sp.unk_id()), ("pad", sp.pad_id())) if i >= 0}
    if tok.bos_id is not None:  # BOS in front, as our data and `ternary generate` have it
        b = sp.id_to_piece(tok.bos_id)
        t.post_processor = processors.TemplateProcessing(single=f"{b} $A", pair=f"{b} $A {b} $B",
                                                         special_tokens=[(b, int(tok.bos_id))])
    return t, special


def _mismatch(backend, tok) -> str | None:
    """The first check string our tokenizer and `backend` encode differently, or None."""
    words = [p.replace(SPACE, " ") for p in (tok.decode([i]) for i in range(tok.vocab_size)) if p.strip()]
    for text in CHECK_STRINGS + [" ".join(words[:200]), "".join(words[200:400])]:
        ours = [int(i) for i in tok.encode(text)]
        if backend.encode(text, add_special_tokens=False).ids != ours or backend.decode(ours) != tok.decode(ours):
            return text[:60]
    return None
