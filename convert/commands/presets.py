"""`ternary presets`: the named presets (shared/spec/presets.py) with their parameter counts and notes."""
from __future__ import annotations

import shutil
import textwrap

from convert.common import config_sizes, counts, human, sub


def run(args) -> int:
    from shared.spec.presets import PRESETS, get_preset
    rows = []
    for name in PRESETS:
        cfg = get_preset(name)
        total, tern = counts(cfg, config_sizes(cfg))
        rows.append((name, human(total), human(tern), PRESETS[name].note))
    w = [max(len(r[i]) for r in rows + [("NAME", "PARAMS", "TERNARY")]) for i in range(3)]
    indent = sum(w) + 6
    width = max(indent + 30, shutil.get_terminal_size((120, 24)).columns)
    print(f"{'NAME':<{w[0]}}  {'PARAMS':>{w[1]}}  {'TERNARY':>{w[2]}}  NOTE")
    for name, total, tern, note in rows:
        lines = textwrap.wrap(note, width - indent) or [""]
        print(f"{name:<{w[0]}}  {total:>{w[1]}}  {tern:>{w[2]}}  {lines[0]}")
        for line in lines[1:]:
            print(" " * indent + line)
    return 0


def register(subs) -> None:
    sub(subs, "presets", "List the named presets with their parameter counts and notes.",
        "  ternary presets", run)
