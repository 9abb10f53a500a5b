"""`ternary tokenizer train`: a SentencePiece model with the parameter-golf settings, a thin wrapper over
shared.data.tokenizers.train_sentencepiece."""
from __future__ import annotations

from pathlib import Path

from convert.common import CliError, positive_int, sub


def _literal(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _check_out(args, model_path: Path, vocab_path: Path) -> None:
    """Never an input text; an existing PREFIX.model or PREFIX.vocab only with --force, and then only a
    pair that `tokenizer train` wrote."""
    from shared.data.tokenizers import trained_pair_refusal
    from shared.spec.ownership import inside
    for text in args.text:
        for p in (model_path, vocab_path):
            if inside(p, Path(text)):
                raise CliError(f"--out {args.out}: {p} is the input text {text}; choose another --out")
    existing = [str(p) for p in (model_path, vocab_path) if p.exists() or p.is_symlink()]
    if existing and not args.force:
        raise CliError(f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}; pass --force to replace")
    why = trained_pair_refusal(model_path, vocab_path) if existing else None
    if why:
        raise CliError(f"--force: {why}; it replaces only a PREFIX.model and PREFIX.vocab that `tokenizer train` "
                       "wrote (nothing was changed)")


def run_train(args) -> int:
    from shared.data.tokenizers import SENTENCEPIECE_DEFAULTS, get_tokenizer, train_sentencepiece
    model_path = Path(args.out + ".model")
    _check_out(args, model_path, Path(args.out + ".vocab"))
    options = {"model_type": args.model_type}
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--option {item!r}: expected KEY=VALUE, e.g. character_coverage=1.0")
        options[key.strip()] = _literal(raw.strip())
    if "model_writer" in options or "sentence_iterator" in options:
        raise CliError("--option: model_writer and sentence_iterator are set by ternary itself")
    changed = {k: v for k, v in options.items() if SENTENCEPIECE_DEFAULTS.get(k) != v}
    print(f"ternary tokenizer train: {len(args.text)} file(s), vocab size {args.vocab_size}, "
          f"parameter-golf settings" + (f" with {changed}" if changed else ""), flush=True)
    path = train_sentencepiece(args.text, args.vocab_size, args.out, **options)
    tok = get_tokenizer(path)
    print(f"wrote {path} (and {path.with_suffix('.vocab')})")
    print(f"  sha256      {tok.sha256}")
    print(f"  vocab size  {tok.vocab_size}" + (f" (asked for {args.vocab_size}: the text has too few "
                                                 "distinct pieces)" if tok.vocab_size != args.vocab_size else ""))
    print(f"  bos/eos     {tok.bos_id}/{tok.eos_id}")
    print(f"next: ternary data prepare {' '.join(args.text)} --tokenizer {path} --out data/<name>")
    return 0


def register(subs) -> None:
    t = sub(subs, "tokenizer", "Tokenizers: train a SentencePiece model on your text.",
            "  ternary tokenizer train corpus.txt --vocab-size 1024 --out tok/mine")
    ts = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    tt = sub(ts, "train", "Train a SentencePiece tokenizer (parameter-golf settings: BPE, byte fallback, "
                          "split digits, nmt_nfkc, no dummy prefix, pad/bos/eos/unk = 0/1/2/3).",
             "  ternary tokenizer train corpus.txt --vocab-size 1024 --out tok/mine\n"
             "  ternary tokenizer train a.txt b.txt --vocab-size 4096 --out tok/big --option character_coverage=1.0\n\n"
             "Writes PREFIX.model and PREFIX.vocab; use the model as data.tokenizer=PREFIX.model.\n"
             "Each line of the text is a sentence.", run_train)
    tt.add_argument("text", nargs="+", metavar="TEXT", help="UTF-8 text files")
    tt.add_argument("--vocab-size", type=positive_int, required=True, metavar="N",
                    help="vocabulary size (an upper bound: a small text may give fewer pieces)")
    tt.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")
    tt.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="default: bpe")
    tt.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="any other SentencePiece trainer option, e.g. character_coverage=1.0 (repeatable)")
    tt.add_argument("--force", action="store_true", help="replace an existing PREFIX.model and PREFIX.vocab, but "
                    "only a pair this command wrote (a SentencePiece model and exactly its .vocab)")
