"""`ternary data prepare`: text files -> train/val token shards and a manifest.json, a thin wrapper over
shared.data.dataset.prepare_data."""
from __future__ import annotations

from pathlib import Path

from convert.common import CliError, positive_int, sub


def run_prepare(args) -> int:
    from shared.data.dataset import prepare_data
    from shared.data.tokenizers import get_tokenizer
    documents = args.documents
    if documents == "jsonl":
        bad = [t for t in args.text if not t.endswith(".jsonl")]
        if bad:
            raise CliError(f"--documents jsonl: {bad[0]} is not a .jsonl file (one JSON object with a "
                           "'text' field per line)")
        documents = "file"  # prepare_data reads every .jsonl file one document per line
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise CliError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    tok = get_tokenizer(args.tokenizer)
    print(f"ternary data prepare: {len(args.text)} file(s) with tokenizer {tok.describe()}", flush=True)
    man = prepare_data(args.text, tok, args.out, val_fraction=args.val_fraction or 0.05,
                       val_bytes=args.val_bytes, shard_tokens=args.shard_tokens,
                       bos_per_document=not args.no_bos, documents=documents, overwrite=args.overwrite,
                       log=lambda _m: None, progress=not args.no_progress)
    for split in ("train", "val"):
        s = man["splits"][split]
        print(f"  {split:<5} {s['tokens']:>12,} tokens in {len(s['files'])} shard(s); {s['documents']:,} "
              f"document(s), {s['text_bytes']:,} text bytes, {s['bytes']:,} scored bytes")
    print(f"wrote {args.out}/manifest.json (tokenizer {tok.name}, vocab {tok.vocab_size}, shard version "
          f"{man['shard_version']})")
    print(_next_hint(args.out, args.tokenizer, tok.vocab_size))
    return 0


def _next_hint(out: str, tokenizer: str, vocab_size: int) -> str:
    """What to train next. A tokenizer inside a checkpoint (`ternary import-hf` copies it there) means
    fine-tuning that model, which keeps its own vocab_size (151,936 rows for Qwen3's 151,669 tokens)."""
    ckpt = Path(tokenizer).parent
    if (ckpt / "manifest.json").is_file():
        return f"next: ternary train --init {ckpt} --set data.source={out}"
    return (f"next: ternary train --set data.source={out} data.tokenizer={tokenizer} model.vocab_size={vocab_size}\n"
            f"      (model.vocab_size must be at least {vocab_size:,}, the tokenizer's size; to fine-tune a "
            "checkpoint, use --init CKPT without model.vocab_size: the model keeps its own)")


def register(subs) -> None:
    d = sub(subs, "data", "Data: tokenize text files into token shards for training and evaluation.",
            "  ternary data prepare corpus.txt --tokenizer tok/mine.model --out data/mine")
    ds = d.add_subparsers(dest="action", metavar="ACTION", required=True)
    dp = sub(ds, "prepare", "Tokenize text files into train/val token shards and a manifest.json.",
             "  ternary data prepare corpus.txt --tokenizer tok/mine.model --out data/mine\n"
             "  ternary data prepare docs/*.txt --tokenizer synthetic-bpe-512 --out data/docs --documents paragraph\n"
             "  ternary data prepare web.jsonl --tokenizer bytes --out data/web --val-bytes 1000000\n\n"
             "The validation split is the first --val-bytes of text (default: 5% of it), in file\n"
             "order. Each document is tokenized on its own and prefixed with the tokenizer's BOS\n"
             "(if it has one; `bytes` has none). Text is read, tokenized and written in pieces of\n"
             "about 1 MB, so memory stays bounded whatever the size of the input.\n"
             "Train on it with --set data.source=DIR data.tokenizer=<the same tokenizer>; a run or\n"
             "`ternary eval` refuses data tokenized with another tokenizer.", run_prepare)
    dp.add_argument("text", nargs="+", metavar="TEXT", help="UTF-8 text files (.jsonl: one {\"text\": ...} per line)")
    dp.add_argument("--tokenizer", required=True, metavar="NAME_OR_PATH",
                    help="a built-in name (bytes, synthetic-bpe-512), a SentencePiece .model or an HF tokenizer directory")
    dp.add_argument("--out", required=True, metavar="DIR", help="directory to create")
    v = dp.add_mutually_exclusive_group()
    v.add_argument("--val-bytes", type=positive_int, metavar="N", help="bytes of text for the validation split")
    v.add_argument("--val-fraction", type=float, metavar="X", help="... or this fraction of the text (default: 0.05)")
    dp.add_argument("--documents", choices=("file", "paragraph", "jsonl"), default="file",
                    help="a document is a whole file (default), a paragraph (lines between blank lines; a line of "
                         "only whitespace is blank), or a line of a .jsonl file (.jsonl files are always read that way)")
    dp.add_argument("--shard-tokens", type=positive_int, default=100_000_000, metavar="N",
                    help="tokens per shard (default: 100,000,000)")
    dp.add_argument("--no-bos", action="store_true", help="do not put BOS in front of each document")
    dp.add_argument("--no-progress", action="store_true", help="no progress bar (bytes read of the total, "
                    "tokens written and their rates, on stderr)")
    dp.add_argument("--overwrite", action="store_true", help="replace an existing --out directory, but only one "
                    "that `data prepare` wrote: its manifest.json and the shards it lists, nothing else")
