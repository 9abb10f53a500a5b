"""`ternary generate`: sample a continuation of a prompt from a checkpoint, in MLX or PyTorch."""
from __future__ import annotations

import sys

from convert import runtime
from convert.commands.checkpoint_args import add_ckpt_args, load_model, load_tokenizer
from convert.common import CliError, non_negative_float, positive_int, sub


def run(args) -> int:
    backend = runtime.start(args.runtime, file=sys.stderr)  # stdout: the text only
    model, cfg, ckpt, (_, generate), _, info = load_model(args.ckpt, backend, not args.no_ema)
    tok = load_tokenizer(args.tokenizer, cfg)
    if tok.bos_id is None and len(tok.encode(args.prompt)) == 0:
        raise CliError(f"--prompt: an empty prompt needs a tokenizer with a BOS token; {tok.name!r} has none")
    if args.top_k < 0:
        raise CliError(f"--top-k must be >= 0 (0 = all tokens), got {args.top_k}")
    top_k = args.top_k if 0 < args.top_k < cfg.model.vocab_size else None  # k >= vocab: every token
    print(f"ternary generate: {ckpt} ({info}); tokenizer {tok.name}", file=sys.stderr)
    text = generate(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                    top_k=top_k, seed=args.seed, kv_cache=not args.no_kv_cache)
    print(args.prompt + text)
    return 0


def register(subs) -> None:
    g = sub(subs, "generate", "Sample a continuation of a prompt from a checkpoint.",
            "  ternary generate runs/smoke-mlx --prompt \"the\"\n"
            "  ternary generate runs/smoke-mlx --backend torch --prompt \"the\" --temperature 0\n"
            "  ternary generate runs/smoke-mlx --prompt \"the\" --max-new-tokens 200 --top-k 20 --seed 3\n\n"
            "Prints the prompt followed by the continuation; stops early at the tokenizer's EOS. Decodes with a\n"
            "KV cache (a line on stderr says when a model option needs the full forward per token instead)\n"
            "and shows tokens/s on stderr for generations that take over 2 s.",
            run)
    add_ckpt_args(g)
    g.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    g.add_argument("--max-new-tokens", type=positive_int, default=100, metavar="N", help="default: 100")
    g.add_argument("--temperature", type=non_negative_float, default=0.8, metavar="X",
                   help="0 = greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, default=50, metavar="N", help="sample among the N likeliest (0 = all; default: 50)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default: 0)")
    g.add_argument("--no-kv-cache", action="store_true",
                   help="run the full forward for every token (a check of the KV cache: the same logits "
                        "to float32 rounding)")
