"""`ternary presets`: the named presets (shared/spec/presets.py) with their parameter counts, the stock
formats `ternary convert` exports them to (convert/formats/support.py) and their notes."""
from __future__ import annotations

import shutil
import textwrap

from convert.common import config_sizes, counts, human, sub


def exports(cfg) -> str:
    """'all' (hf, mlx-lm, hf-bitnet, gguf), the list, or '-' (canonical and packed only)."""
    from convert.formats.support import STOCK_FORMATS, stock_formats
    got = stock_formats(cfg)
    return "all" if len(got) == len(STOCK_FORMATS) else ",".join(got) or "-"


def run(args) -> int:
    from shared.spec.presets import PRESETS, get_preset
    rows = []
    for name in PRESETS:
        cfg = get_preset(name)
        total, tern = counts(cfg, config_sizes(cfg))
        rows.append((name, human(total), human(tern), exports(cfg), PRESETS[name].note))
    head = ("NAME", "PARAMS", "TERNARY", "EXPORTS")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    indent = sum(w) + 8
    width = max(indent + 30, shutil.get_terminal_size((120, 24)).columns)
    print(f"{'NAME':<{w[0]}}  {'PARAMS':>{w[1]}}  {'TERNARY':>{w[2]}}  {'EXPORTS':<{w[3]}}  NOTE")
    for name, total, tern, fmts, note in rows:
        lines = textwrap.wrap(note, width - indent) or [""]
        print(f"{name:<{w[0]}}  {total:>{w[1]}}  {tern:>{w[2]}}  {fmts:<{w[3]}}  {lines[0]}")
        for line in lines[1:]:
            print(" " * indent + line)
    print("\n  EXPORTS: the stock formats `ternary convert --to` writes besides canonical and packed "
          "(all = hf, mlx-lm, hf-bitnet, gguf; - = none).")
    return 0


def register(subs) -> None:
    sub(subs, "presets", "List the named presets with their parameter counts, stock export formats and notes.",
        "  ternary presets", run)
