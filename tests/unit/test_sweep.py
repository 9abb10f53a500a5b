"""`ternary sweep`'s spec checks (shared/train/sweep_spec.py), its statistics (sweep_stats.py) and
its table (sweep_report.py), without running anything."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.spec.config import ConfigError
from shared.train import sweep_report as rep
from shared.train.sweep_spec import SpecError, load_spec
from shared.train.sweep_stats import sample_std, student_t_quantile, welch_interval

BASE = """
seeds = [0, 1]
[base]
preset = "smoke"
set = ["train.eval_every=0"]
[budget]
steps = 5
"""


def spec_file(tmp_path, text: str):
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


def test_variants_resolve_every_run(tmp_path):
    s = load_spec(spec_file(tmp_path, BASE + '[variants]\nplain = []\nrelu2 = ["model.hidden_act=relu2"]\n'),
                  out=tmp_path / "o")
    assert [r.name for r in s.runs] == ["plain-seed0", "plain-seed1", "relu2-seed0", "relu2-seed1"]
    assert [r.config.train.seed for r in s.runs] == [0, 1, 0, 1]
    assert {r.config.train.steps for r in s.runs} == {5}
    assert [r.config.model.hidden_act for r in s.runs] == ["silu", "silu", "relu2", "relu2"]
    assert all(r.config.train.eval_every == 0 for r in s.runs)
    assert s.baseline == "plain"


def test_grid_is_the_cartesian_product_in_order(tmp_path):
    s = load_spec(spec_file(tmp_path, BASE.replace("[0, 1]", "[3]") +
                            '[grid.act]\nsilu = []\nrelu2 = ["model.hidden_act=relu2"]\n'
                            '[grid.lr]\nlo = ["train.lr=1e-3"]\nhi = ["train.lr=5e-3"]\n'), out=tmp_path / "o")
    assert list(s.variants) == ["silu-lo", "silu-hi", "relu2-lo", "relu2-hi"]
    cfg = {r.variant: r.config for r in s.runs}
    assert (cfg["relu2-hi"].model.hidden_act, cfg["relu2-hi"].train.lr) == ("relu2", 5e-3)
    assert (cfg["silu-lo"].model.hidden_act, cfg["silu-lo"].train.lr) == ("silu", 1e-3)
    assert s.baseline == "silu-lo"


def test_wall_clock_budget_sets_the_time_budget_and_the_ceiling(tmp_path):
    s = load_spec(spec_file(tmp_path, BASE.replace("steps = 5", "wall_s = 30\nmax_steps = 9999") +
                            "[variants]\na = []\n"), out=tmp_path / "o")
    assert {(r.config.train.time_budget_s, r.config.train.steps) for r in s.runs} == {(30.0, 9999)}


@pytest.mark.parametrize("body, fragments", [
    ('[variants]\nplain = []\nbad = ["model.hidden_sise=64"]\n', ["variant 'bad'", "hidden_sise", "hidden_size"]),
    ('[variants]\nplain = []\nbad = ["model.hidden_act=gelu"]\n', ["variant 'bad'", "model.hidden_act"]),
    ('[variants]\nplain = []\nbad = ["train.lr=fast"]\n', ["variant 'bad'", "train.lr"]),
    ('[variants]\nplain = []\nbad = ["train.seed=3"]\n', ["variant 'bad'", "train.seed", "seeds"]),
    ('[variants]\nplain = []\nbad = ["train.steps=3"]\n', ["variant 'bad'", "train.steps", "budget"]),
    ('[variants]\nplain = []\n"a b" = []\n', ["'a b'", "names directories"]),
    ('[variants]\nplain = []\n[grid.x]\na = []\n', ["exactly one of [variants]"]),
    ('[variants]\n', ["no variants"]),
    ('[variants]\nplain = "model.hidden_act=relu2"\n', ["variants.plain must be a list of strings"]),
    ('[variants]\nplain = []\n[export]\nargs = ["--out", "x"]\n', ["--out is set by the sweep"]),
    ('[variants]\nplain = []\n[export]\nroundtrip = true\n', ["unknown key 'roundtrip'", "round_trip"]),
])
def test_bad_specs_name_the_variant_and_key(tmp_path, body, fragments):
    with pytest.raises(ConfigError) as e:
        load_spec(spec_file(tmp_path, BASE + body), out=tmp_path / "o")
    for f in fragments:
        assert f in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("old, new, fragment", [
    ("seeds = [0, 1]", "seeds = [0, 0]", "repeat a seed"),
    ("seeds = [0, 1]", 'baseline = "nope"\nseeds = [0, 1]', "baseline 'nope' is not a variant"),
    ("seeds = [0, 1]", 'backend = "cuda"\nseeds = [0, 1]', "backend must be one of"),
    ("seeds = [0, 1]", "seeds = []", "non-empty list"),
    ("seeds = [0, 1]", "sedes = [0, 1]", "unknown key 'sedes'"),
    ("steps = 5", "steps = 5\nwall_s = 3", "exactly one of steps"),
    ("steps = 5", "wall_s = 3", "wall_s needs max_steps"),
    ("steps = 5", "steps = 0", "budget.steps must be a positive integer"),
    ('preset = "smoke"', 'preset = "smok"', "unknown preset 'smok'"),
    ('set = ["train.eval_every=0"]', 'set = ["train.seed=1"]', "base.set: train.seed"),
])
def test_bad_spec_fields(tmp_path, old, new, fragment):
    with pytest.raises(ConfigError) as e:
        load_spec(spec_file(tmp_path, BASE.replace(old, new) + "[variants]\na = []\n"), out=tmp_path / "o")
    assert fragment in str(e.value)


def test_spec_error_is_a_spec_error_subclass_of_config_error():
    assert issubclass(SpecError, ConfigError)  # the CLI's user errors: one line, exit 2


# ---- statistics -------------------------------------------------------------------------------
@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert student_t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def _t_density(x: float, df: float) -> float:
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1 + x * x / df) ** (-(df + 1) / 2)


def test_welch_interval_by_hand():
    # a = [1, 2, 3]: mean 2, s^2 = 1;  b = [2, 4, 6, 8]: mean 5, s^2 = 20/3
    # se^2 = 1/3 + (20/3)/4 = 2;  df = 2^2 / ((1/3)^2/2 + (5/3)^2/3) = 4 / (1/18 + 25/27) = 216/53
    d = welch_interval([1, 2, 3], [2, 4, 6, 8])
    assert d.diff == -3
    assert d.df == pytest.approx(216 / 53, rel=1e-12)
    half = (d.high - d.low) / 2
    q = half / math.sqrt(2)
    # q is the 97.5% point of t(216/53): the density integrated from 0 to q (Simpson) is 0.475
    xs = np.linspace(0, q, 2001)
    w = np.ones_like(xs)
    w[1:-1:2], w[2:-1:2] = 4, 2
    area = float(np.sum(w * np.array([_t_density(x, 216 / 53) for x in xs])) * (xs[1] - xs[0]) / 3)
    assert area == pytest.approx(0.475, abs=1e-6)
    assert d.low + d.high == pytest.approx(2 * -3)


def test_welch_interval_with_one_seed_has_none():
    d = welch_interval([1.0], [2.0, 3.0])
    assert d.diff == -1.5 and d.low is None and d.high is None


# ---- the table from records -------------------------------------------------------------------
def _records():
    rng = np.random.default_rng(0)
    recs = []
    for v, centre in (("plain", 2.0), ("x", 1.9)):
        for seed in range(3):
            recs.append({"run": f"{v}-seed{seed}", "variant": v, "seed": seed, "val_bpb": centre + rng.normal(0, 0.02),
                         "steps": 100, "tokens_per_s": 1000 + seed, "train_time_s": 10.0 + seed,
                         "artifact_bytes": 5000 + seed, "roundtrip_bpb": centre + 0.001})
    return recs


def test_table_numbers_are_the_records_statistics():
    recs = _records()
    stats = rep.variant_stats(recs, ["plain", "x"], "plain")
    table = rep.markdown_table(stats)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    for row in cells:
        bpb = np.array([r["val_bpb"] for r in recs if r["variant"] == row[0]])
        assert row[2] == f"{bpb.mean():.4f} ± {bpb.std(ddof=1):.4f}"
        assert row[5] == f"{1001:,.0f}" and row[6] == "11.0" and row[7] == "5,001"
    base = np.array([r["val_bpb"] for r in recs if r["variant"] == "plain"])
    x = np.array([r["val_bpb"] for r in recs if r["variant"] == "x"])
    assert cells[0][3] == "(base)"
    assert cells[1][3].startswith(f"{x.mean() - base.mean():+.4f} [")
    assert rep.winner(stats).name == "x"
    assert json.dumps(rep.text_table(stats))  # printable


def test_sample_std_needs_two_values():
    assert sample_std([1.0]) is None
    assert sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2))


def test_the_example_resolves_and_the_readme_shows_it():
    import re
    from pathlib import Path
    from shared.train.sweep_spec import read_spec, tomllib
    root = Path(__file__).resolve().parents[2]
    path = root / "examples" / "sweep-smoke.toml"
    example = load_spec(path)
    assert len(example.runs) == 12 and example.baseline == "plain" and example.export_args is not None
    assert str(example.out) == "runs/sweep-smoke" and example.budget == {"steps": 200}
    block = re.search(r"```toml\n(out = \"runs/sweep-smoke\".*?)```", (root / "README.md").read_text(), re.S)
    assert tomllib.loads(block.group(1)) == read_spec(path)  # the README's spec is the example's


def test_core_slots_are_equal_and_disjoint():
    from convert.commands.sweep import core_slots
    from convert.common import CliError
    assert core_slots(2, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert core_slots(3, [0, 1, 2, 3, 4]) == [[0], [1], [2]]  # the remainder unused: equal shares
    assert core_slots(1, [4, 7]) == [[4, 7]]
    with pytest.raises(CliError, match="at most 2"):
        core_slots(3, [0, 1])
