"""Host-side sampling and text assembly (shared/train/generation.py)."""
from __future__ import annotations

import numpy as np

from shared.train.generation import CachedLogits, Progress, generate_ids, generate_text, sample_next
from shared.data.tokenizers import get_tokenizer


def test_greedy_and_top_k():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    assert sample_next(logits, rng, temperature=0, top_k=None) == 1
    draws = {sample_next(logits, rng, temperature=1.0, top_k=2) for _ in range(200)}
    assert draws == {1, 3}  # only the two best tokens are ever drawn


def test_generation_feeds_back_its_own_tokens_and_crops_context():
    seen = []

    def last_logits(ids):
        seen.append(ids.copy())
        out = np.zeros(10)
        out[(ids[0, -1] + 1) % 10] = 5.0  # always predicts last + 1
        return out

    new = list(generate_ids(last_logits, np.array([3]), 4, context=2, temperature=0))
    assert new == [4, 5, 6, 7]
    assert [s.tolist() for s in seen] == [[[3]], [[3, 4]], [[4, 5]], [[5, 6]]]


def test_continuation_keeps_the_space_of_a_word_piece():
    """Decoding only the new tokens would drop the space that a leading '▁word' piece stands for."""
    tok = get_tokenizer("synthetic-bpe-512")
    word = next(i for i in range(tok.vocab_size) if tok.id_to_piece(i).startswith("\u2581") and len(tok.id_to_piece(i)) > 3)

    def last_logits(ids):
        out = np.full(tok.vocab_size, -10.0)
        out[word] = 10.0
        return out

    text = generate_text(last_logits, tok, "the", 2, context=64, temperature=0)
    piece = tok.id_to_piece(word)[1:]
    assert text == f" {piece} {piece}"


def test_cached_logits_steps_one_token_and_prefills_a_slid_window():
    """CachedLogits: a window one token longer than the last is a cached step (the new token only);
    the first window and one that slid past the context (every position moves) are fresh prefills."""
    calls = []

    def forward(ids, cache):
        calls.append((ids[0].tolist(), cache["n"]))
        cache["n"] += ids.shape[1]
        return np.zeros(10)

    logits = CachedLogits(lambda: {"n": 0}, forward)
    list(generate_ids(logits, np.array([1, 2]), 4, context=4, temperature=0))
    # windows: [1 2], [1 2 0], [1 2 0 0], then [2 0 0 0] (slid: a fresh cache)
    assert calls == [([1, 2], 0), ([0], 2), ([0], 3), ([2, 0, 0, 0], 0)]


def test_progress_line_counts_tokens_and_rate(monkeypatch):
    import io

    import shared.train.generation as g
    clock = iter([0.0, 1.0, 3.0, 3.5, 5.0])
    monkeypatch.setattr(g.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    p = Progress(10, out, after=2.0, every=1.0)  # start at 0
    p.update(1)   # t=1: before `after`, silent
    p.update(6)   # t=3: shown
    p.update(7)   # t=3.5: within `every` of the last line, silent
    p.update(10)  # t=5: the last token is always shown
    assert out.getvalue().splitlines() == ["generate: 6/10 tokens, 2.0 tokens/s", "generate: 10/10 tokens, 2.0 tokens/s"]
