"""The embedded synthetic corpus: its analytic entropy rate matches the true chain's log-loss."""
import math
import re

import numpy as np
import pytest

from shared.data.corpus import SyntheticCorpus

_STEP = re.compile(r"(\. | )([a-z]+)")


def true_chain_bits_per_byte(corpus: SyntheticCorpus, text: str) -> tuple[float, int]:
    """Score `text` with the true chain, written independently of the module's entropy formula:
    -log2 P(first word) - sum log2 P(separator, word | previous word), over the bytes consumed."""
    first = re.match(r"[a-z]+", text).group(0)
    index = {w: i for i, w in enumerate(corpus.words)}
    succ = [dict(zip(s.tolist(), p.tolist())) for s, p in zip(corpus.successors, corpus.successor_probs)]
    bits = -math.log2(corpus.start_probs[index[first]])
    pos, prev = len(first), index[first]
    while True:
        m = _STEP.match(text, pos)
        if m is None or m.end() == len(text):  # the last word may be cut: stop before it
            break
        sep, w = m.group(1), index[m.group(2)]
        q = corpus.end_probs[prev]
        p = q * corpus.start_probs[w] if sep == ". " else (1 - q) * succ[prev].get(w, 0.0)
        assert p > 0, f"text contains an impossible transition {corpus.words[prev]!r} -> {m.group(0)!r}"
        bits -= math.log2(p)
        pos, prev = m.end(), w
    return bits / pos, pos


@pytest.fixture(scope="module")
def corpus():
    return SyntheticCorpus(0)


def test_entropy_rate_matches_true_chain_log_loss(corpus):
    text = corpus.generate(200_000, "val")
    empirical, used = true_chain_bits_per_byte(corpus, text)
    assert used > 199_000
    h = corpus.entropy_bits_per_byte
    assert 0.3 < h < 0.8
    assert abs(empirical - h) / h < 0.02, (empirical, h)


def test_entropy_rate_is_not_the_unigram_or_a_miscounted_rate(corpus):
    # Guards against a formula that forgets the separator bytes or the sentence-end choice:
    # those would be off by far more than the 2% the convergence test allows.
    h_words = corpus.entropy_bits_per_step
    mean_word = float(corpus.stationary @ corpus.word_lengths)
    assert abs(h_words / mean_word - corpus.entropy_bits_per_byte) / corpus.entropy_bits_per_byte > 0.1
    assert corpus.bytes_per_step > mean_word + 1.0  # every step has at least one separator byte


def test_generation_is_deterministic_and_streams_differ(corpus):
    a = corpus.generate(5_000, "train")
    assert len(a) == 5_000 and a.isascii()
    assert a == SyntheticCorpus(0).generate(5_000, "train")
    assert a == corpus.generate(20_000, "train")[:5_000]  # a shorter request is a prefix
    long = corpus.generate(250_000, "val")  # spans several random blocks
    assert corpus.generate(120_000, "val") == long[:120_000]
    assert a != corpus.generate(5_000, "val")
    assert a != SyntheticCorpus(1).generate(5_000, "train")
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz. ")
    assert "  " not in a and "\n" not in a


def test_language_is_fixed_and_well_formed(corpus):
    # The language is part of the spec: the shipped synthetic-bpe-512 tokenizer was trained on it and
    # the docs quote its entropy rate. Changing the chain needs a new VERSION and a new tokenizer.
    assert round(corpus.entropy_bits_per_byte, 4) == 0.5330
    other = SyntheticCorpus(7)
    assert other.words == corpus.words
    assert other.entropy_bits_per_byte == corpus.entropy_bits_per_byte
    assert len(set(corpus.words)) == len(corpus.words)
    assert all(re.fullmatch(r"[a-z]+", w) for w in corpus.words)
    p = corpus.transition_matrix()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(corpus.stationary @ p, corpus.stationary, atol=1e-12)
    assert "bits per byte" in corpus.describe()


def test_bad_arguments(corpus):
    with pytest.raises(ValueError, match="unknown stream"):
        corpus.generate(10, "test")
    with pytest.raises(ValueError, match="non-negative"):
        corpus.generate(-1, "train")
    with pytest.raises(ValueError, match="seed"):
        SyntheticCorpus(-3)
    assert corpus.generate(0, "train") == ""
