"""The `ternary` subcommands, one module per top-level verb; convert/cli.py registers them in the
order of `COMMANDS`, which is the order `ternary --help` lists them.

Each verb module has `register(subs)`, which adds its subparser(s) to the `ternary` parser's
subparsers, and the function(s) that run it (`run(args)`; `run_train` / `run_prepare` for the verbs
with an action). mlx, torch and the heavier shared modules are imported inside those functions, so
`ternary --help`, `presets` and `config` start fast.

  train.py            ternary train: a training run (options in convert/train_args.py)
  eval.py             ternary eval: val_loss, val_bpb and perplexity of a checkpoint
  generate.py         ternary generate: sample a continuation of a prompt
  presets.py          ternary presets: the named presets with their parameter counts
  config.py           ternary config: the resolved, validated run config as TOML
  init.py             ternary init: a freshly initialised checkpoint directory
  demo.py             ternary demo: forward pass on random tokens, backend parity check
  tokenizer.py        ternary tokenizer train: a SentencePiece model
  data.py             ternary data prepare: text files -> token shards
  import_hf.py        ternary import-hf: a Hugging Face Qwen3/Llama model -> a checkpoint
  import_pg.py        ternary import-pg: a parameter-golf state dict -> a checkpoint
  inspect.py          ternary inspect: verify and describe a checkpoint
  convert.py          ternary convert: export as canonical, packed, hf, mlx-lm, hf-bitnet or gguf
  promote.py          ternary promote: scale an ablation config to a GPU target
  sweep.py            ternary sweep: an ablation of named variants x seeds, with its table and plot

Shared by verbs, not verbs themselves:

  checkpoint_args.py  eval and generate: load_model, load_tokenizer, add_ckpt_args
  promote_check.py    promote --check: check_config, run_check and their estimates

Helpers for every verb (CliError, sub, source_args, resolve, ...) are in convert/common.py.
"""
from __future__ import annotations

from convert.commands import (config, convert, data, demo, eval, generate, import_hf, import_pg, init, inspect, presets,
                              promote, sweep, tokenizer, train)

COMMANDS = (train, eval, generate, presets, config, init, demo, tokenizer, data, import_hf, import_pg, inspect, convert,
            promote, sweep)

__all__ = ["COMMANDS"]
