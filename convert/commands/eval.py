"""`ternary eval`: score a checkpoint (val_loss, val_bpb, perplexity) on a data split, in MLX or PyTorch."""
from __future__ import annotations

import json

import sys

from convert import runtime
from convert.commands.checkpoint_args import add_ckpt_args, load_model, load_tokenizer
from convert.common import CliError, positive_int, sub


def run(args) -> int:
    from shared.data.dataset import load_token_dataset
    backend = runtime.start(args.runtime, file=sys.stderr if args.json else sys.stdout)  # --json: stdout is JSON only
    model, cfg, ckpt, (evaluate, _), weights, info = load_model(args.ckpt, backend, not args.no_ema)
    tok = load_tokenizer(args.tokenizer, cfg)
    d = cfg.data
    dataset = load_token_dataset(args.data or d.source, tok, synthetic_train_bytes=d.synthetic_train_bytes,
                                 synthetic_val_bytes=d.synthetic_val_bytes, seed=d.seed)
    seq_len = args.seq_len or cfg.train.seq_len
    limit = cfg.model.max_position_embeddings
    if seq_len > limit:
        raise CliError(f"--seq-len {seq_len} is above the model's max_position_embeddings ({limit})")
    if args.stride is not None and args.stride > seq_len:
        raise CliError(f"--stride {args.stride} is above --seq-len {seq_len}; a stride of at most seq_len "
                       "is needed (equal to it means non-overlapping windows)")
    tokens = dataset.val if args.split == "val" else dataset.train
    if not args.json:
        print(f"ternary eval: {ckpt} ({info})")
        print(f"data: {dataset.description}; split {args.split}", flush=True)
    ev = evaluate(model, tokens, dataset.tokenizer, seq_len, stride=args.stride, max_tokens=args.max_tokens,
                  batch_size=args.batch, progress=not args.json)
    out = {"checkpoint": str(ckpt), "backend": args.backend, "weights": weights, "tokenizer": tok.name,
           "split": args.split,
           "seq_len": seq_len, "stride": args.stride, "max_tokens": args.max_tokens, **ev}
    if dataset.entropy_bits_per_byte is not None:
        out["entropy_bpb"] = dataset.entropy_bits_per_byte
        out["entropy_gap_bpb"] = ev["val_bpb"] - dataset.entropy_bits_per_byte
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"  val_loss    {ev['val_loss']:.4f} nats/token")
    print(f"  val_bpb     {ev['val_bpb']:.4f} bits/byte")
    print(f"  perplexity  {ev['perplexity']:.2f}")
    print(f"  tokens      {ev['tokens']:,} scored ({ev['bytes']:,} bytes)")
    print(f"  mode        {ev['mode']}")
    if "entropy_bpb" in out:
        print(f"  source entropy {out['entropy_bpb']:.4f} bpb; gap {out['entropy_gap_bpb']:+.4f} bpb "
              "(0 is the best achievable)")
    return 0


def register(subs) -> None:
    e = sub(subs, "eval", "Score a checkpoint: val_loss, val_bpb (bits per UTF-8 byte), perplexity.",
            "  ternary eval runs/smoke-mlx\n"
            "  ternary eval runs/smoke-mlx/checkpoint --backend torch --max-tokens 20000\n"
            "  ternary eval runs/smoke-mlx --stride 64 --json\n"
            "  ternary eval runs/mine --data data/mine-512 --split train\n\n"
            "Without --data, the data is the checkpoint config's data.source (the synthetic corpus\n"
            "also reports its entropy, the best achievable val_bpb). Windows of --seq-len tokens,\n"
            "non-overlapping or, with --stride, sliding; never any test-time training.", run)
    add_ckpt_args(e)
    e.add_argument("--data", metavar="DIR|synthetic",
                   help="a directory from `ternary data prepare`, or 'synthetic' (default: data.source); "
                        "it must have been tokenized with the tokenizer used here")
    e.add_argument("--split", choices=("val", "train"), default="val", help="which split to score (default: val)")
    e.add_argument("--seq-len", type=positive_int, metavar="N", help="window length (default: train.seq_len)")
    e.add_argument("--stride", type=positive_int, metavar="N",
                   help="sliding windows: each scores its last N tokens with seq_len - N tokens of context")
    e.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help="score only the first N tokens of the split (default: all)")
    e.add_argument("--batch", type=positive_int, default=8, metavar="N", help="windows per forward pass (default: 8)")
    e.add_argument("--json", action="store_true", help="print one JSON object only (no progress bar)")
