"""`ternary train`, `eval` and `generate`: the training run (shared/train/runner.py), scoring a checkpoint
and sampling from it, in MLX or PyTorch (convert/backends.py; imported lazily)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from convert.backends import load_backend
from convert.common import CliError, backend_arg, checkpoint_dir, positive_int, sub
from convert.train_args import add_train_args, train_options


# ---- train --------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from shared.train.loop import NonFiniteLoss
    from shared.train.runner import default_out_dir, run_training
    if args.resume is not None and (args.preset or args.config):
        raise CliError("--resume continues with the checkpoint's own config; drop --preset/--config "
                       "(--set may still change train.* values such as train.steps)")
    opts = train_options(args)
    if opts.resume is None and opts.out is None:
        opts.out = default_out_dir(opts, args.backend)  # what run_training would pick; said up front
    backend = load_backend(args.backend)
    extra = f", blas: {backend.blas}" if backend.blas else ""
    where = opts.out or checkpoint_dir(opts.resume).parent
    print(f"ternary train: backend {backend.name} {backend.version}{extra}; run directory {where}", flush=True)
    try:
        code = run_training(opts, backend)
    except NonFiniteLoss as e:
        print(f"ternary: error: {e}", file=sys.stderr)
        return 1
    if code == 0:
        print(f"\nnext: ternary eval {where} --backend {args.backend}\n"
              f"      ternary generate {where} --backend {args.backend} --prompt \"...\"")
    else:
        print(f"\nresume with: ternary train --backend {args.backend} --resume {where}")
    return code


# ---- loading a checkpoint for eval / generate ---------------------------------------------------
def load_model(path: str, backend: str, use_ema: bool):
    """(model, config, checkpoint dir, (evaluate, generate), "latent" | "ema", info line) for a
    checkpoint or run directory.

    When the run kept an EMA of the weights (train.ema_decay) and the checkpoint holds it, the EMA
    weights are used unless `use_ema` is False: they are what training evaluated."""
    from shared.spec import checkpoint as fmt
    packed = Path(path).is_file()  # a `ternary convert --to packed` artifact: the round trip (S15)
    if packed:
        from convert.formats.packed import load_packed
        ckpt = Path(path)
        cfg, packed_weights = load_packed(ckpt, form="latent")  # same codes; scales from fp16
    else:
        ckpt = checkpoint_dir(path)
    b = load_backend(backend)
    model, cfg = (b.new_model(cfg, packed_weights), cfg) if packed else b.load_checkpoint(ckpt)
    info = b.describe() + (f", blas: {b.blas}" if b.blas else "")
    functions = (b.evaluate.evaluate, b.generate.generate)
    if packed:
        from convert.formats.packed import describe
        return model, cfg, ckpt, functions, "packed", f"{info}; packed artifact ({describe(ckpt)})"
    weights, note = "latent", "latent weights"
    if cfg.train.ema_decay and use_ema:
        opt = fmt.read_optimizer(ckpt)
        names = list(model.numpy_weights())
        if opt is not None and all(f"{n}.ema" in opt[0] for n in names):
            model.load_numpy({n: opt[0][f"{n}.ema"] for n in names})
            weights = "ema"
            note = f"EMA weights (train.ema_decay={cfg.train.ema_decay:g}; --no-ema for the latent ones)"
    return model, cfg, ckpt, functions, weights, f"{info}; {note}"


def _tokenizer(name: str, cfg):
    from shared.data.tokenizers import get_tokenizer
    tok = get_tokenizer(name)
    if tok.vocab_size > cfg.model.vocab_size:
        raise CliError(f"tokenizer {tok.name!r} has {tok.vocab_size} tokens but the model's vocab_size is "
                       f"{cfg.model.vocab_size}")
    return tok


# ---- eval ---------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from shared.data.dataset import load_token_dataset
    model, cfg, ckpt, (evaluate, _), weights, info = load_model(args.ckpt, args.backend, not args.no_ema)
    tok = _tokenizer(args.tokenizer or cfg.data.tokenizer, cfg)
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
    ev = evaluate(model, tokens, tok, seq_len, stride=args.stride, max_tokens=args.max_tokens,
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


# ---- generate -----------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    model, cfg, ckpt, (_, generate), _, info = load_model(args.ckpt, args.backend, not args.no_ema)
    tok = _tokenizer(args.tokenizer or cfg.data.tokenizer, cfg)
    if tok.bos_id is None and len(tok.encode(args.prompt)) == 0:
        raise CliError(f"--prompt: an empty prompt needs a tokenizer with a BOS token; {tok.name!r} has none")
    if args.top_k < 0:
        raise CliError(f"--top-k must be >= 0 (0 = all tokens), got {args.top_k}")
    top_k = args.top_k if 0 < args.top_k < cfg.model.vocab_size else None  # k >= vocab: every token
    print(f"ternary generate: {ckpt} ({info}); tokenizer {tok.name}", file=sys.stderr)
    text = generate(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                    top_k=top_k, seed=args.seed)
    print(args.prompt + text)
    return 0


# ---- argument parsing ---------------------------------------------------------------------------
def _ckpt_args(p) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint directory, or a run directory (its checkpoint/)")
    backend_arg(p, "runs the model")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                   help="tokenizer (default: the checkpoint config's data.tokenizer)")
    p.add_argument("--no-ema", action="store_true",
                   help="with a run that kept an EMA of the weights, use the latent weights instead")


def register(subs) -> None:
    t = sub(subs, "train", "Train a model: metrics, loss plot, summary and checkpoint in a run directory.",
            "  ternary train --preset smoke\n"
            "  ternary train --preset smoke --backend torch --out runs/smoke-torch\n"
            "  ternary train --config run.toml --set train.steps=1000 train.lr=2e-3\n"
            "  ternary train --resume runs/smoke-torch --backend torch --set train.steps=600\n"
            "  ternary train --preset smoke --init runs/smoke-torch/checkpoint --out runs/finetune\n"
            "  ternary train --init ckpt/student --teacher ckpt/teacher --set ternary.warmup_steps=200 model.subln=true\n\n"
            "Several processes (train.batch_size is per rank):\n"
            "  torchrun --standalone --nproc_per_node=8 -m ternary_cuda.train --config run.toml --out runs/big\n"
            "  mlx.launch --backend ring -n 2 -- python -m ternary_mlx.train --preset smoke --out runs/dp2\n\n"
            "The run directory holds config.toml, metrics.jsonl, loss.png, summary.json and\n"
            "checkpoint/. The first Ctrl-C finishes the current step, saves checkpoint/ and exits\n"
            "130 (resume with --resume DIR); a second Ctrl-C aborts at once. Exits 1 if the loss\n"
            "becomes non-finite.", cmd_train)
    add_train_args(t)
    backend_arg(t, "trains")

    e = sub(subs, "eval", "Score a checkpoint: val_loss, val_bpb (bits per UTF-8 byte), perplexity.",
            "  ternary eval runs/smoke-mlx\n"
            "  ternary eval runs/smoke-mlx/checkpoint --backend torch --max-tokens 20000\n"
            "  ternary eval runs/smoke-mlx --stride 64 --json\n"
            "  ternary eval runs/mine --data data/mine-512 --split train\n\n"
            "Without --data, the data is the checkpoint config's data.source (the synthetic corpus\n"
            "also reports its entropy, the best achievable val_bpb). Windows of --seq-len tokens,\n"
            "non-overlapping or, with --stride, sliding; never any test-time training.", cmd_eval)
    _ckpt_args(e)
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

    g = sub(subs, "generate", "Sample a continuation of a prompt from a checkpoint.",
            "  ternary generate runs/smoke-mlx --prompt \"the\"\n"
            "  ternary generate runs/smoke-mlx --backend torch --prompt \"the\" --temperature 0\n"
            "  ternary generate runs/smoke-mlx --prompt \"the\" --max-new-tokens 200 --top-k 20 --seed 3\n\n"
            "Prints the prompt followed by the continuation; stops early at the tokenizer's EOS.",
            cmd_generate)
    _ckpt_args(g)
    g.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    g.add_argument("--max-new-tokens", type=positive_int, default=100, metavar="N", help="default: 100")
    g.add_argument("--temperature", type=float, default=0.8, metavar="X", help="0 = greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, default=50, metavar="N", help="sample among the N likeliest (0 = all; default: 50)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default: 0)")
