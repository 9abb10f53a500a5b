"""`ternary import-hf`: a Hugging Face Qwen3/Llama checkpoint (local or hub) -> a ternary checkpoint
(convert/formats/hf_import.py)."""
from __future__ import annotations

import argparse
import sys
import warnings

from convert.common import sub


def run(args) -> int:
    from convert.formats import hf_import as hf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hf.import_hf(args.src, args.out, ternary=args.ternary, overrides=list(args.set or []),
                              revision=args.revision, force=args.force)
    for w in caught:
        print(f"ternary: warning: {w.message}", file=sys.stderr)
    print(hf.summary(result))
    return 0


def register(subs) -> None:
    p = sub(subs, "import-hf", "Import a Hugging Face Qwen3/Llama model (directory or hub id) as a checkpoint.",
            "  ternary import-hf Qwen/Qwen3-0.6B --out runs/qwen3-0.6b-ternary\n"
            "  ternary import-hf ./my-hf-model --out runs/float --no-ternary\n"
            "  ternary import-hf Qwen/Qwen3-0.6B --revision main --out runs/q --set ternary.group_size=64\n\n"
            "The model section comes from config.json; weights (float32, float16 or bfloat16 safetensors,\n"
            "single or sharded) are stored as float32. Tokenizer files are copied to OUT/tokenizer/\n"
            "(outside the checkpoint manifest) and data.tokenizer points there.", run)
    p.add_argument("src", metavar="SRC", help="a local Hugging Face model directory or a hub id (owner/name)")
    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to create")
    p.add_argument("--ternary", action=argparse.BooleanOptionalAction, default=True,
                   help="enable ternary projection (default: on, group 128, attn+mlp; tune with --set ternary.*)")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="extend", nargs="+", default=[],
                   help="override ternary/train/data config values, e.g. ternary.group_size=64")
    p.add_argument("--revision", metavar="R", help="hub revision (branch, tag or commit) for a hub id")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out, but only "
                   "what import-hf writes: the checkpoint's manifest and the files it lists, and tokenizer/")
