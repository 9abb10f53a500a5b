"""What `ternary sweep` makes of its results.jsonl: the table (Markdown and printed), the plot and the
winner. Everything here is computed from the records alone, so a table can be re-made, and checked,
from results.jsonl.

Per variant: mean +- sample std of val_bpb over its seeds, the difference of means from the
baseline variant with a 95% Welch t interval (shared/train/sweep_stats.py), and the means of steps,
tokens/s, training seconds, artifact bytes and round-trip val_bpb.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from shared.train.sweep_stats import Difference, mean, sample_std, welch_interval

LEVEL = 0.95
SMOOTH_FRAC = 0.02  # the loss curves' running-mean window, as a fraction of a run's steps
COLUMNS = ("variant", "seeds", "val_bpb (mean ± std)", f"Δ vs base ({LEVEL:.0%} CI, Welch t)", "steps",
           "tokens/s", "train s", "artifact bytes", "round-trip bpb")


@dataclass
class VariantStats:
    name: str
    bpb: list[float]
    diff: Difference | None  # None for the baseline itself
    steps: float
    tokens_per_s: float | None
    train_s: float | None
    artifact_bytes: float | None
    roundtrip_bpb: float | None


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _mean_of(recs: list[dict], key: str) -> float | None:
    values = [r[key] for r in recs if r.get(key) is not None]
    return mean(values) if values else None


def variant_stats(records: list[dict], order: list[str], baseline: str) -> list[VariantStats]:
    """One VariantStats per variant of `order` that has records."""
    by = {name: [r for r in records if r["variant"] == name] for name in order}
    base_bpb = [r["val_bpb"] for r in by.get(baseline, [])]
    out = []
    for name in order:
        recs = by[name]
        if not recs:
            continue
        bpb = [r["val_bpb"] for r in recs]
        diff = None if name == baseline or not base_bpb else welch_interval(bpb, base_bpb, LEVEL)
        out.append(VariantStats(name, bpb, diff, _mean_of(recs, "steps"), _mean_of(recs, "tokens_per_s"),
                                _mean_of(recs, "train_time_s"), _mean_of(recs, "artifact_bytes"),
                                _mean_of(recs, "roundtrip_bpb")))
    return out


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _diff_cell(d: Difference | None) -> str:
    if d is None:
        return "(base)"
    if d.low is None:
        return f"{d.diff:+.4f} (no CI: one seed)"
    return f"{d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def rows(stats: list[VariantStats]) -> list[list[str]]:
    out = []
    for s in stats:
        std = sample_std(s.bpb)
        out.append([s.name, str(len(s.bpb)), f"{mean(s.bpb):.4f} ± {_num(std, '{:.4f}')}", _diff_cell(s.diff),
                    _num(s.steps, "{:.0f}"), _num(s.tokens_per_s, "{:,.0f}"), _num(s.train_s, "{:.1f}"),
                    _num(s.artifact_bytes, "{:,.0f}"), _num(s.roundtrip_bpb, "{:.4f}")])
    return out


def markdown_table(stats: list[VariantStats]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(stats)]
    return "\n".join(lines) + "\n"


def text_table(stats: list[VariantStats]) -> str:
    table = [list(COLUMNS), *rows(stats)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def winner(stats: list[VariantStats]) -> VariantStats:
    """The variant with the lowest mean val_bpb (the first of equals)."""
    return min(stats, key=lambda s: mean(s.bpb))


def verdict(best: VariantStats) -> str:
    """One sentence on whether the winner's lead over the base is more than seed noise."""
    d = best.diff
    if d is None:
        return f"winner: {best.name}, the baseline itself (no variant has a lower mean val_bpb)"
    if d.low is None:
        return f"winner: {best.name} ({d.diff:+.4f} val_bpb vs base; one seed: no interval, no verdict)"
    settled = d.high < 0
    return (f"winner: {best.name} ({d.diff:+.4f} val_bpb vs base, {LEVEL:.0%} CI [{d.low:+.4f}, {d.high:+.4f}]"
            + ("; below zero: better than the base beyond seed noise)" if settled else
               "; includes zero: not distinguishable from the base at this many seeds)"))


def plot(records: list[dict], stats: list[VariantStats], metrics: dict[str, Path], baseline: str, path: Path) -> None:
    """sweep.png: val_bpb per variant (each seed a dot, mean +- std as error bars) and the training
    loss curves of every run (metrics.jsonl), one colour per variant. `metrics`: run name -> file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_bpb, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {s.name: f"C{i % 10}" for i, s in enumerate(stats)}
    for i, s in enumerate(stats):
        std = sample_std(s.bpb)
        ax_bpb.errorbar([i], [mean(s.bpb)], yerr=[std] if std is not None else None, fmt="o", capsize=6,
                        color=colours[s.name], markersize=8)
        ax_bpb.scatter([i + 0.12] * len(s.bpb), s.bpb, s=12, color=colours[s.name], alpha=0.6)
    base = next((s for s in stats if s.name == baseline), None)
    if base is not None:
        ax_bpb.axhline(mean(base.bpb), ls="--", lw=1, color="grey", label=f"{baseline} mean")
        ax_bpb.legend()
    ax_bpb.set_xticks(range(len(stats)), [s.name for s in stats], rotation=20)
    ax_bpb.set_ylabel("val_bpb (mean ± std over seeds; dots: seeds)")
    ax_bpb.grid(alpha=0.3)
    labelled = set()
    for r in records:
        curve = _train_curve(metrics.get(r["run"]))
        if not curve:
            continue
        label = None if r["variant"] in labelled else r["variant"]
        labelled.add(r["variant"])
        ax_loss.plot(*_running_mean(curve), lw=0.8, alpha=0.7, color=colours.get(r["variant"], "k"), label=label)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"train loss (nats/token; running mean of {SMOOTH_FRAC:.0%} of the steps)")
    ax_loss.grid(alpha=0.3)
    if labelled:
        ax_loss.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _running_mean(curve: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """The curve averaged over windows of SMOOTH_FRAC of its points (one step's loss is noisy, and a
    dozen noisy lines on one axis hide their differences); each point averages the window ending there."""
    steps, losses = zip(*curve)
    k = max(1, int(len(losses) * SMOOTH_FRAC))
    sums = [0.0]
    for x in losses:
        sums.append(sums[-1] + x)
    return list(steps), [(sums[i + 1] - sums[max(0, i + 1 - k)]) / (i + 1 - max(0, i + 1 - k)) for i in range(len(losses))]


def _train_curve(path: Path | None) -> list[tuple[int, float]]:
    if path is None or not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and math.isfinite(rec["loss"]):
            curve.append((rec["step"], rec["loss"]))
    return curve
