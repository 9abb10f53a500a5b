"""Evaluation metrics with byte accounting (DESIGN 3.6).

val_loss   = total nats / scored tokens
val_bpb    = total nats / ln 2 / total UTF-8 bytes of the scored tokens
           = (val_loss / ln 2) * tokens / bytes      (parameter-golf's formula)
perplexity = exp(val_loss)
Bytes come from `Tokenizer.byte_counts(targets, prev)`, so a BOS target counts 0 bytes and a
leading-space piece after a boundary does not count its space (see shared/data/tokenizers.py).
"""
from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    if total_bytes <= 0:
        raise ValueError(f"bits_per_byte: no bytes were scored (total_bytes={total_bytes})")
    return float(total_nats) / LN2 / int(total_bytes)


def perplexity(mean_nats: float) -> float:
    """exp(mean loss in nats); inf rather than an OverflowError for a hopeless model."""
    return math.exp(mean_nats) if mean_nats < 709.0 else math.inf


class EvalAccumulator:
    """Sums nats, tokens and bytes over scored tokens; `result()` gives the metrics.

    add(nats, targets, prev, tokenizer=None, mask=None):
      nats     per-token losses in nats, shaped like targets (or, with a float, the already
               summed loss of the scored tokens: a backend that reduces on the device)
      targets  the scored target ids; prev the token before each (the inputs at the same positions)
      mask     optional bool array selecting the scored positions (then nats may be unmasked)
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.nats = 0.0
        self.tokens = 0
        self.bytes = 0

    def add(self, nats, targets: np.ndarray, prev: np.ndarray, tokenizer=None, mask: np.ndarray | None = None) -> None:
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise ValueError("EvalAccumulator.add: no tokenizer (pass one here or to the constructor) "
                             "to count the bytes of the scored tokens")
        targets, prev = np.asarray(targets), np.asarray(prev)
        if np.ndim(nats) == 0:
            if mask is not None:
                targets, prev = targets[np.asarray(mask, bool)], prev[np.asarray(mask, bool)]
            total = float(nats)
        else:
            nats = np.asarray(nats, dtype=np.float64)
            if nats.shape != targets.shape:
                raise ValueError(f"EvalAccumulator.add: nats {nats.shape} and targets {targets.shape} differ in shape")
            if mask is not None:
                m = np.asarray(mask, bool)
                nats, targets, prev = nats[m], targets[m], prev[m]
            total = float(nats.sum())
        if not math.isfinite(total):
            raise ValueError(f"EvalAccumulator.add: non-finite loss {total}")
        self.nats += total
        self.tokens += int(targets.size)
        self.bytes += int(tok.byte_counts(targets, prev).sum())

    def add_totals(self, nats: float, tokens: int, n_bytes: int) -> None:
        self.nats += float(nats)
        self.tokens += int(tokens)
        self.bytes += int(n_bytes)

    def result(self) -> dict:
        if self.tokens == 0:
            raise ValueError("EvalAccumulator.result: no tokens were scored")
        loss = self.nats / self.tokens
        return {"val_loss": loss, "val_bpb": bits_per_byte(self.nats, self.bytes),
                "perplexity": perplexity(loss), "tokens": self.tokens, "bytes": self.bytes}
