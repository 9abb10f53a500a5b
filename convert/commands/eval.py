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
    plan = _ttt_plan(cfg, args, args.seq_len or cfg.train.seq_len)  # a bad --ttt* value fails before the data loads
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
    if plan is not None:  # beside the plain numbers, from the same weights (put back afterwards)
        ev = {**ev, **backend.evaluate.evaluate_ttt(model, tokens, dataset.tokenizer, seq_len, plan,
                                                    max_tokens=args.max_tokens, batch_size=args.batch,
                                                    progress=not args.json)}
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
    if plan is not None:
        print(f"  val_bpb     {ev['val_bpb_ttt']:.4f} bits/byte ({ev['ttt_mode']}; {ev['ttt_chunks']} chunks)")
        print(f"  val_loss    {ev['val_loss_ttt']:.4f} nats/token ({ev['ttt_mode']})")
    if "entropy_bpb" in out:
        print(f"  source entropy {out['entropy_bpb']:.4f} bpb; gap {out['entropy_gap_bpb']:+.4f} bpb "
              "(0 is the best achievable)")
    return 0


TTT_ARGS = ("ttt", "ttt_lr", "ttt_steps", "ttt_chunk_tokens", "ttt_lora_rank", "ttt_lora_targets")  # = train.<key>


def _ttt_plan(cfg, args, seq_len: int):
    """The score-first TTT of this evaluation: the checkpoint config's train.ttt_* with the --ttt*
    flags on top, checked as the config checks them, for windows of seq_len; None when off."""
    import dataclasses
    from shared.spec.config import RunConfig
    from shared.train.ttt import plan_of
    given = {key: getattr(args, key) for key in TTT_ARGS if getattr(args, key) is not None}
    if "ttt_lora_targets" in given:
        given["ttt_lora_targets"] = [x.strip() for x in given["ttt_lora_targets"].split(",") if x.strip()]
    # only the window and the TTT keys matter here; schedules of the training run are not this evaluation's
    train = dataclasses.replace(cfg.train, seq_len=seq_len, eval_stride=None, seq_len_start=0, batch_tokens_start=0,
                                **given)
    plan = plan_of(RunConfig(model=cfg.model, ternary=cfg.ternary, train=train, data=cfg.data).validate().train)
    if plan is not None and args.stride is not None and args.stride < seq_len:
        raise CliError(f"--stride {args.stride} with score-first TTT ({plan.mode}): TTT scores non-overlapping "
                       "windows; leave out --stride or use --ttt off")
    return plan


def register(subs) -> None:
    e = sub(subs, "eval", "Score a checkpoint: val_loss, val_bpb (bits per UTF-8 byte), perplexity.",
            "  ternary eval runs/smoke-mlx\n"
            "  ternary eval runs/smoke-mlx/checkpoint --backend torch --max-tokens 20000\n"
            "  ternary eval runs/smoke-mlx --stride 64 --json\n"
            "  ternary eval runs/mine --data data/mine-512 --split train\n\n"
            "Without --data, the data is the checkpoint config's data.source (the synthetic corpus\n"
            "also reports its entropy, the best achievable val_bpb). Windows of --seq-len tokens,\n"
            "non-overlapping or, with --stride, sliding. With --ttt lora|full (default: the config's\n"
            "train.ttt) also score-first test-time training: each chunk of the stream is scored before\n"
            "any update has seen it, reported beside the plain numbers.", run)
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
    e.add_argument("--ttt", choices=("off", "full", "lora"),
                   help="score-first test-time training (default: the checkpoint config's train.ttt)")
    e.add_argument("--ttt-lr", type=float, metavar="LR", help="its SGD learning rate (default: train.ttt_lr)")
    e.add_argument("--ttt-steps", type=positive_int, metavar="N", help="SGD steps per chunk (default: train.ttt_steps)")
    e.add_argument("--ttt-chunk-tokens", type=positive_int, metavar="N",
                   help="scored tokens per chunk, a multiple of --seq-len (default: train.ttt_chunk_tokens)")
    e.add_argument("--ttt-lora-rank", type=positive_int, metavar="R", help="LoRA rank (default: train.ttt_lora_rank)")
    e.add_argument("--ttt-lora-targets", metavar="A,B",
                   help="projections LoRA adapts, e.g. q_proj,v_proj (default: train.ttt_lora_targets)")
