"""`ternary convert --to packed --artifact pg-record`: the round trip (SEEDS S15: an export's quality
is measured after it). The checkpoint and the decoded artifact are scored by the same evaluator on
the same validation tokens, so the difference is the export's alone."""
from __future__ import annotations

from pathlib import Path


class RoundTrip:
    """Loads the checkpoint and its data before anything is written (missing data is refused with
    nothing written), then scores the checkpoint and, after the write, the artifact."""

    def __init__(self, src: Path, backend: str, max_tokens: int | None, threads: int):
        from convert.backends import load_backend
        from convert.commands.checkpoint_args import load_model, load_tokenizer
        from convert.runtime import apply_threads
        from shared.data.dataset import load_token_dataset
        self.backend = backend
        loaded = load_backend(backend)
        apply_threads(loaded, threads)  # convert --threads
        model, cfg, _, (self.evaluate, _), self.weights, _ = load_model(str(src), loaded, True)
        d = cfg.data
        self.dataset = load_token_dataset(d.source, load_tokenizer(None, cfg),
                                          synthetic_train_bytes=d.synthetic_train_bytes,
                                          synthetic_val_bytes=d.synthetic_val_bytes, seed=d.seed)
        self.seq_len = cfg.train.seq_len
        self.max_tokens = max_tokens or cfg.train.eval_tokens
        self.before = self._score(model)

    def _score(self, model) -> dict:
        return self.evaluate(model, self.dataset.val, self.dataset.tokenizer, self.seq_len,
                             max_tokens=self.max_tokens, batch_size=8, progress=False)

    def after(self, artifact: Path) -> dict:
        from convert.commands.checkpoint_args import load_model
        model, *_ = load_model(str(artifact), self.backend, False)
        return self._score(model)

    def lines(self, after: dict) -> list[str]:
        b, a = self.before["val_bpb"], after["val_bpb"]
        return [f"  val_bpb: training {b:.4f} (the checkpoint's {self.weights} weights), round trip {a:.4f} "
                f"(the artifact decoded; {a - b:+.4f}), both on the same {after['tokens']:,d} val tokens "
                f"({after['bytes']:,d} bytes; {after['mode']}; {self.backend})"]
