"""Metrics: the bpb formula, byte accounting through EvalAccumulator, perplexity."""
import math

import numpy as np
import pytest

from shared.data.metrics import EvalAccumulator, bits_per_byte, perplexity
from shared.data.tokenizers import Tokenizer, get_tokenizer, sentencepiece_byte_tables


def test_bits_per_byte_formula():
    assert bits_per_byte(1000 * math.log(2), 500) == pytest.approx(2.0)
    assert bits_per_byte(3.0, 7) == pytest.approx(3.0 / math.log(2) / 7)
    with pytest.raises(ValueError, match="no bytes"):
        bits_per_byte(1.0, 0)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(17.0)) == pytest.approx(17.0)
    assert perplexity(1e6) == math.inf


def test_byte_tokenizer_bpb_is_loss_over_ln2():
    tok = get_tokenizer("bytes")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, size=(4, 65))
    nats = rng.uniform(0.1, 5.0, size=(4, 64))
    acc = EvalAccumulator(tok)
    acc.add(nats, ids[:, 1:], ids[:, :-1])
    r = acc.result()
    assert r["tokens"] == r["bytes"] == 256
    assert r["val_loss"] == pytest.approx(nats.mean())
    assert r["val_bpb"] == pytest.approx(nats.mean() / math.log(2))
    assert r["perplexity"] == pytest.approx(math.exp(nats.mean()))


def test_accumulator_uses_tokenizer_byte_counts_and_masks():
    pieces = ["<pad>", "<s>", "</s>", "<unk>", "▁the", "cat", "<0x41>"]
    kinds = ["control"] * 4 + ["normal", "normal", "byte"]
    tok = Tokenizer("toy", 7, "0" * 64, 1, *sentencepiece_byte_tables(pieces, kinds))
    prev = np.array([[1, 4, 5, 4]])
    targets = np.array([[4, 5, 4, 6]])  # bytes: 3 (after BOS), 3, 4 (" the"), 1
    nats = np.array([[1.0, 2.0, 3.0, 4.0]])
    mask = np.array([[True, True, True, False]])
    a = EvalAccumulator(tok)
    a.add(nats, targets, prev, mask=mask)
    r = a.result()
    assert (r["tokens"], r["bytes"]) == (3, 10)
    assert r["val_loss"] == pytest.approx(2.0)
    # parameter-golf: val_bpb = (val_loss / ln 2) * tokens / bytes
    assert r["val_bpb"] == pytest.approx(2.0 / math.log(2) * 3 / 10)
    # the lead's calling convention: pre-masked arrays, tokenizer per call; and a device-side sum
    b = EvalAccumulator()
    b.add(nats[mask], targets[mask], prev[mask], tok)
    c = EvalAccumulator(tok)
    c.add(6.0, targets, prev, mask=mask)
    assert b.result() == r == c.result()
    a.add(np.array([4.0]), np.array([6]), np.array([5]))
    assert a.result()["bytes"] == 11 and a.result()["tokens"] == 4


def test_accumulator_errors():
    with pytest.raises(ValueError, match="no tokens"):
        EvalAccumulator().result()
    with pytest.raises(ValueError, match="no tokenizer"):
        EvalAccumulator().add(np.ones(2), np.ones(2, int), np.ones(2, int))
    tok = get_tokenizer("bytes")
    with pytest.raises(ValueError, match="non-finite"):
        EvalAccumulator(tok).add(np.array([np.nan]), np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="shape"):
        EvalAccumulator(tok).add(np.ones(3), np.ones(2, int), np.ones(2, int))
