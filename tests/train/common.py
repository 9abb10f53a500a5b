"""Tiny runs of the shared training loop (shared/train/loop.py via shared/train/runner.py) for tests/train."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from shared.spec.config import RunConfig
from shared.train.runner import Backend, train
from tests.variants import DEFAULT_INIT, tiny_sets

# A 90k-parameter model on the byte tokenizer: one step takes milliseconds on a CPU.
# the initializer range a real run starts from: these trajectory tolerances were measured there
BASE = tiny_sets(initializer_range=DEFAULT_INIT,
                 data=dict(tokenizer="bytes", synthetic_train_bytes=50000, synthetic_val_bytes=10000),
                 train=dict(seq_len=32, batch_size=4, eval_tokens=2000, eval_every=0, log_every=1))


def config(*overrides: str) -> RunConfig:
    return RunConfig().with_overrides(BASE + list(overrides))


def backend(name: str, wrap=None) -> Backend:
    """The real backend record; `wrap(trainer) -> trainer` wraps every Trainer it builds."""
    pkg = "ternary_mlx" if name == "mlx" else "ternary_cuda"
    model = importlib.import_module(f"{pkg}.model")
    trainer = importlib.import_module(f"{pkg}.train")
    Trainer = trainer.Trainer
    if wrap is not None:
        def Trainer(cfg, m, opt=None, teacher=None, _T=trainer.Trainer):  # noqa: N802 - stands in for a class
            return wrap(_T(cfg, m, opt, teacher=teacher))
    return Backend(name, model.Model, Trainer, "test")


def run(cfg: RunConfig, name: str, out: Path, *, wrap=None, **kw):
    """shared.train.runner.train without a progress bar; returns (result, summary, log lines)."""
    logs: list[str] = []
    result, summary = train(cfg, backend(name, wrap), out, log=logs.append, progress=False, **kw)
    return result, summary, logs


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_losses(out: Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record in metrics.jsonl, in file order."""
    return [(r["step"], r["loss"]) for r in records(out) if "eval" not in r]


def trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


class Wrapper:
    """Delegates everything to a real Trainer; subclasses override what a test needs."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

