"""SPEC.toml of `ternary sweep`: read it, check all of it, and resolve every run's config before
anything runs (a bad override in the last variant must not cost the first variant's runs).

    out = "runs/sweep-smoke"      # the sweep's directory (--out overrides it)
    seeds = [0, 1, 2]             # train.seed of each run of every variant
    backend = "torch"             # optional: auto (default), mlx or torch
    baseline = "plain"            # optional: the variant the others are compared with (default: the first)

    [base]                        # what `ternary train` would take: preset or config, and --set
    preset = "smoke"
    set = ["train.eval_every=0"]

    [budget]                      # equal steps ...
    steps = 150
    # ... or equal training wall-clock (parameter-golf's measure): train.time_budget_s per run,
    # train.steps = max_steps as a ceiling (and what step-based schedules see)
    # wall_s = 60
    # max_steps = 100000

    [variants]                    # named variants: --set overrides on top of the base
    plain = []
    relu2 = ["model.hidden_act=relu2"]

    # or [grid]: named axes of named levels; the variants are their cartesian product, named
    # LEVEL-LEVEL..., the first level of every axis first
    # [grid.act]
    # silu = []
    # relu2 = ["model.hidden_act=relu2"]

    [export]                      # optional: `ternary convert RUN --to packed ARGS` after each run,
    args = ["--compress", "zstd"] # its bytes, and (round_trip = true, the default) its val_bpb
    round_trip = true

Paths (out, base.config) are taken from the current directory, as on the command line.
"""
from __future__ import annotations

import difflib
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from shared.spec.config import ConfigError, RunConfig

TOP_KEYS = ("out", "seeds", "backend", "baseline", "base", "budget", "variants", "grid", "export")
BASE_KEYS = ("preset", "config", "set")
BUDGET_KEYS = ("steps", "wall_s", "max_steps")
EXPORT_KEYS = ("args", "round_trip")
BACKENDS = ("auto", "mlx", "torch")
# what the sweep itself sets in every run; an override of one would make the comparison unequal
OWNED_KEYS = {"train.seed": "seeds", "train.steps": "budget", "train.time_budget_s": "budget"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SpecError(ConfigError):
    """SPEC.toml cannot be run as written (one line, exit 2 on the command line)."""


@dataclass
class Run:
    """One (variant, seed) of the sweep, with its resolved config."""
    variant: str
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class SweepSpec:
    path: Path
    out: Path | None
    seeds: list[int]
    backend: str
    baseline: str
    base_source: dict[str, Any]        # {"preset": ...} or {"config": ...} or {}
    base_set: list[str]
    budget: dict[str, Any]             # {"steps": N} or {"wall_s": S, "max_steps": N}
    variants: dict[str, list[str]]     # name -> overrides, in order
    export_args: list[str] | None      # None: no export
    round_trip: bool = True
    runs: list[Run] = field(default_factory=list)

    def budget_overrides(self) -> list[str]:
        if "steps" in self.budget:
            return [f"train.steps={self.budget['steps']}"]
        return [f"train.steps={self.budget['max_steps']}", f"train.time_budget_s={self.budget['wall_s']}"]

    def describe_budget(self) -> str:
        if "steps" in self.budget:
            return f"{self.budget['steps']} steps per run"
        return (f"{self.budget['wall_s']:g} s of training per run (train.time_budget_s; at most "
                f"{self.budget['max_steps']} steps)")

    def identity(self) -> dict[str, Any]:
        """What makes two specs the same sweep (sweep.json keeps it: a resume must not mix specs)."""
        return {"seeds": self.seeds, "backend": self.backend, "baseline": self.baseline,
                "base": {**self.base_source, "set": self.base_set}, "budget": self.budget,
                "variants": self.variants, "export": None if self.export_args is None else
                {"args": self.export_args, "round_trip": self.round_trip},
                "configs": {r.name: r.config.to_dict() for r in self.runs}}


def _check_keys(table: dict, valid, where: str) -> None:
    for k in table:
        if k not in valid:
            close = difflib.get_close_matches(k, list(valid), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{where}: unknown key {k!r}{hint}; valid keys: {', '.join(valid)}")


def _table(d: dict, key: str, where: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise SpecError(f"{where}: {key} must be a table ([{key}]), got {type(v).__name__}")
    return v


def _strings(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise SpecError(f"{where} must be a list of strings such as [\"train.lr=1e-3\"], got {v!r}")
    return list(v)


def _name(name: str, where: str) -> str:
    if not NAME.fullmatch(name):
        raise SpecError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (it names directories)")
    return name


def _positive(v: Any, where: str, kind: type) -> Any:
    ok = isinstance(v, kind) and not isinstance(v, bool) if kind is int else \
        isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok or v <= 0:
        raise SpecError(f"{where} must be a positive {'integer' if kind is int else 'number'}, got {v!r}")
    return v


def _budget(d: dict, where: str) -> dict[str, Any]:
    b = _table(d, "budget", where)
    _check_keys(b, BUDGET_KEYS, f"{where}: [budget]")
    if ("steps" in b) == ("wall_s" in b):
        raise SpecError(f"{where}: [budget] needs exactly one of steps (equal steps) or wall_s (equal "
                        "training wall-clock, with max_steps)")
    if "steps" in b:
        if "max_steps" in b:
            raise SpecError(f"{where}: [budget] max_steps goes with wall_s only (steps is already the count)")
        return {"steps": _positive(b["steps"], f"{where}: budget.steps", int)}
    if "max_steps" not in b:
        raise SpecError(f"{where}: [budget] wall_s needs max_steps: train.steps is the ceiling of a timed run "
                        "and what step-based schedules (warm-up, cosine, warmdown) are laid out over")
    return {"wall_s": float(_positive(b["wall_s"], f"{where}: budget.wall_s", float)),
            "max_steps": _positive(b["max_steps"], f"{where}: budget.max_steps", int)}


def _variants(d: dict, where: str) -> dict[str, list[str]]:
    if ("variants" in d) == ("grid" in d):
        raise SpecError(f"{where}: give exactly one of [variants] (a list of named variants) or [grid] (named axes)")
    if "variants" in d:
        variants = {_name(k, f"{where}: variants"): _strings(v, f"{where}: variants.{k}")
                    for k, v in _table(d, "variants", where).items()}
    else:
        axes = []
        for axis, levels in _table(d, "grid", where).items():
            if not isinstance(levels, dict) or not levels:
                raise SpecError(f"{where}: grid.{axis} must be a table of named levels, e.g. "
                                f"[grid.{axis}] a = [...], b = [...]")
            axes.append([(_name(k, f"{where}: grid.{axis}"), _strings(v, f"{where}: grid.{axis}.{k}"))
                         for k, v in levels.items()])
        variants = {}
        for combo in itertools.product(*axes):
            name = "-".join(level for level, _ in combo)
            if name in variants:
                raise SpecError(f"{where}: grid variant name {name!r} occurs twice; make the level names unique")
            variants[name] = [o for _, sets in combo for o in sets]
    if not variants:
        raise SpecError(f"{where}: no variants")
    return variants


def _seeds(d: dict, where: str) -> list[int]:
    seeds = d.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and s >= 0 for s in seeds):
        raise SpecError(f"{where}: seeds must be a non-empty list of integers >= 0, e.g. seeds = [0, 1, 2]; "
                        f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}: seeds {seeds} repeat a seed")
    return seeds


def _base(d: dict, where: str) -> tuple[dict[str, Any], list[str]]:
    b = _table(d, "base", where)
    _check_keys(b, BASE_KEYS, f"{where}: [base]")
    if "preset" in b and "config" in b:
        raise SpecError(f"{where}: [base] takes preset or config, not both")
    source = {k: b[k] for k in ("preset", "config") if k in b}
    for k, v in source.items():
        if not isinstance(v, str):
            raise SpecError(f"{where}: base.{k} must be a string, got {v!r}")
    return source, _strings(b.get("set", []), f"{where}: base.set")


def _export(d: dict, where: str) -> tuple[list[str] | None, bool]:
    if "export" not in d:
        return None, True
    e = _table(d, "export", where)
    _check_keys(e, EXPORT_KEYS, f"{where}: [export]")
    round_trip = e.get("round_trip", True)
    if not isinstance(round_trip, bool):
        raise SpecError(f"{where}: export.round_trip must be true or false, got {round_trip!r}")
    args = _strings(e.get("args", []), f"{where}: export.args")
    for a in args:
        if a in ("--to", "--out", "--force") or a.startswith(("--to=", "--out=")):
            raise SpecError(f"{where}: export.args: {a} is set by the sweep (--to packed, --out in its directory)")
    return args, round_trip


def read_spec(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"sweep spec not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None


def load_spec(path: Path, out: Path | None = None) -> SweepSpec:
    """The checked spec of `path`, every run's config resolved (SpecError/ConfigError naming the key)."""
    where = str(path)
    d = read_spec(path)
    _check_keys(d, TOP_KEYS, where)
    backend = d.get("backend", "auto")
    if backend not in BACKENDS:
        raise SpecError(f"{where}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    source, base_set = _base(d, where)
    variants = _variants(d, where)
    baseline = d.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise SpecError(f"{where}: baseline {baseline!r} is not a variant; variants: {', '.join(variants)}")
    if out is None and "out" in d:
        if not isinstance(d["out"], str) or not d["out"]:
            raise SpecError(f"{where}: out must be a directory name, got {d['out']!r}")
        out = Path(d["out"])
    export_args, round_trip = _export(d, where)
    spec = SweepSpec(Path(path), out, _seeds(d, where), backend, baseline, source, base_set, _budget(d, where),
                     variants, export_args, round_trip)
    spec.runs = resolve_runs(spec)
    return spec


def _owned(overrides: list[str], where: str) -> None:
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in OWNED_KEYS:
            raise SpecError(f"{where}: {key} is set by the sweep's {OWNED_KEYS[key]} (the same for every run); "
                            "remove this override")


def base_config(spec: SweepSpec) -> RunConfig:
    from shared.spec.presets import get_preset
    if "config" in spec.base_source:
        return RunConfig.load_toml(spec.base_source["config"])
    return get_preset(spec.base_source.get("preset", "smoke"))


def resolve_runs(spec: SweepSpec) -> list[Run]:
    """Every (variant, seed) with its config: base, base.set, the variant's overrides, budget, seed."""
    where = str(spec.path)
    _owned(spec.base_set, f"{where}: base.set")
    try:
        base = base_config(spec)
    except (ConfigError, KeyError) as e:
        raise SpecError(f"{where}: [base]: {e}") from None
    runs = []
    for name, overrides in spec.variants.items():
        _owned(overrides, f"{where}: variant {name!r}")
        for seed in spec.seeds:
            sets = [*spec.base_set, *overrides, *spec.budget_overrides(), f"train.seed={seed}"]
            try:
                cfg = base.with_overrides(sets)
            except ConfigError as e:
                raise SpecError(f"{where}: variant {name!r}: {e}") from None
            runs.append(Run(name, seed, cfg))
    return runs
