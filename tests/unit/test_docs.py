"""Every `DESIGN x.y` and `SEEDS Sn` reference in the code resolves to a section of docs/design.md or
an item of docs/pitfalls.md, so a clone carries the design the code cites."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("shared", "ternary_mlx", "ternary_cuda", "convert", "tests", "bench", "tools")
           for p in (ROOT / d).rglob("*.py")]


def _headings(doc: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, (ROOT / "docs" / doc).read_text(), re.M))


def test_design_and_seeds_references_resolve():
    sections = _headings("design.md", r"^#{2,3} (\d+(?:\.\d+)?)[. ]")
    items = _headings("pitfalls.md", r"^### (S\d+) ")
    assert {"3.2", "3.7", "4"} <= sections and {"S1", "S16"} <= items  # the patterns read the documents
    missing = []
    for p in SOURCES:
        text = p.read_text()
        for ref in re.findall(r"\bDESIGN (\d+(?:\.\d+)?)", text):
            if ref.rstrip(".") not in sections:
                missing.append(f"{p.relative_to(ROOT)}: DESIGN {ref}")
        for group in re.findall(r"\bSEEDS ((?:S\d+(?:[-, /]+)?)+)", text):
            for ref in re.findall(r"S\d+", group):
                if ref not in items:
                    missing.append(f"{p.relative_to(ROOT)}: SEEDS {ref}")
    assert not missing, "references with no section in docs/: " + "; ".join(missing)
