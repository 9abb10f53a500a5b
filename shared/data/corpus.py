"""The embedded default corpus: synthetic text with an exactly known entropy rate (DESIGN 3.5).

The smoke run trains on text the project generates itself, so it needs no download, and because
the source is a known stochastic process its best achievable val_bpb is known exactly: a run can
print how far it is from that floor.

The process ("synthetic-v1")
---------------------------
* A fixed vocabulary of `NUM_WORDS` pronounceable lowercase ASCII words, each 1-3 syllables
  (consonant-vowel or consonant-vowel-consonant), built deterministically by a seeded generator.
  Words consist of the letters a-z only and are all distinct.
* A first-order Markov chain over words. From word w the next *step* is either
    - with probability 1 - q_w: the separator " " followed by one of w's 3-8 successors, drawn with
      skewed (Zipf-like, exponent 1.3, shuffled) probabilities, or
    - with probability q_w (a sentence end; q_w in {0.04, 0.08, 0.12, 0.2}): the separator ". "
      followed by a sentence-start word drawn from a Zipf-like distribution S over all words.
  The text opens with a word drawn from S and then concatenates steps:  "word sep word sep word ...".
  Example: "kori kori tabu. kerdisa fusado lisgaza tisrigi lomos lo nufa pali ...".
* The chain is irreducible and aperiodic (every q_w > 0 and S has full support), so it has a unique
  stationary distribution pi over words.

Entropy rate
------------
The map from step sequences to bytes is injective and decodes left to right with no look-ahead
beyond the step (words are [a-z]+, separators are " " or ". "), so the byte process carries exactly
the information of the step process, spread over the bytes. The entropy rate in bits per byte is

    H_byte = sum_w pi(w) H_step(w) / sum_w pi(w) E[bytes of a step | w]
    H_step(w) = h(q_w) + (1 - q_w) H(successors of w) + q_w H(S)             (bits)
    E[bytes | w] = (1 - q_w) (1 + E_succ(w)[len]) + q_w (2 + E_S[len])

(the separator tells " " from ". ", so the two branches never produce the same bytes). This is
the loss of the true model; no predictor can do better on average, and `entropy_bits_per_byte`
returns it: 0.5330 bits per byte (2.912 bits per word over 5.463 bytes per word including its
separator). A 4-layer width-128 ternary model with the synthetic-bpe-512 tokenizer gets within
~0.02 bpb of it in 300 steps of 16 x 128 tokens.

The language (words and chain) is fixed; the constructor's `seed` selects the sample streams.
`generate(n, "train")` and `generate(n, "val")` come from independent random streams of the same
chain, and a shorter request is always a prefix of a longer one. The text is plain ASCII with
single spaces and no newlines, so SentencePiece's nmt_nfkc normalisation leaves it unchanged
(except that a trailing space at the very end of a document is stripped).
"""
from __future__ import annotations

import bisect

import numpy as np

VERSION = "synthetic-v1"
NUM_WORDS = 160
LANGUAGE_SEED = 20240520
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = "nrs"
_END_PROBS = (0.04, 0.08, 0.12, 0.2)
_SUCCESSOR_COUNTS = (3, 8)  # inclusive range
_ZIPF_SUCCESSORS = 1.3
_ZIPF_START = 1.0
_STREAM_KEYS = {"train": 1, "val": 2}
_BLOCK_STEPS = 1 << 14  # steps drawn per block: keeps generate(n) a prefix of generate(m > n)


class SyntheticCorpus:
    """A word-level Markov chain rendered as bytes, with an analytic entropy rate."""

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SyntheticCorpus seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        rng = np.random.default_rng(LANGUAGE_SEED)
        self.words: tuple[str, ...] = _make_words(rng, NUM_WORDS)
        n = len(self.words)
        self.word_lengths = np.array([len(w) for w in self.words], dtype=np.int64)
        # Sentence-start distribution S: Zipf over a random order of the words.
        order = rng.permutation(n)
        s = np.empty(n)
        s[order] = 1.0 / np.arange(1, n + 1) ** _ZIPF_START
        self.start_probs = s / s.sum()
        # Per-word sentence-end probability and successors.
        self.end_probs = rng.choice(np.array(_END_PROBS), size=n)
        self.successors: list[np.ndarray] = []
        self.successor_probs: list[np.ndarray] = []
        lo, hi = _SUCCESSOR_COUNTS
        for _ in range(n):
            k = int(rng.integers(lo, hi + 1))
            succ = rng.choice(n, size=k, replace=False)
            p = 1.0 / np.arange(1, k + 1) ** _ZIPF_SUCCESSORS
            self.successors.append(succ.astype(np.int64))
            self.successor_probs.append(p / p.sum())
        self._build_tables()
        self.stationary = self._stationary()
        self.entropy_bits_per_step, self.bytes_per_step = self._rates()

    # ---- the chain ------------------------------------------------------------------------------
    def transition_matrix(self) -> np.ndarray:
        """P[w, v]: probability that the word after w is v (summed over both separators)."""
        n = len(self.words)
        p = np.outer(self.end_probs, self.start_probs)
        for w in range(n):
            p[w, self.successors[w]] += (1.0 - self.end_probs[w]) * self.successor_probs[w]
        return p

    def _stationary(self) -> np.ndarray:
        """Solve pi P = pi, sum(pi) = 1 (unique: the chain is irreducible)."""
        p = self.transition_matrix()
        n = p.shape[0]
        a = p.T - np.eye(n)
        a[-1, :] = 1.0
        b = np.zeros(n)
        b[-1] = 1.0
        pi = np.linalg.solve(a, b)
        if (pi < -1e-12).any() or not np.allclose(pi @ p, pi, atol=1e-12):  # pragma: no cover
            raise RuntimeError("synthetic corpus: chain has no unique stationary distribution")
        return pi

    def _rates(self) -> tuple[float, float]:
        h_start = _entropy_bits(self.start_probs)
        len_start = float(self.start_probs @ self.word_lengths)
        q = self.end_probs
        h_succ = np.array([_entropy_bits(p) for p in self.successor_probs])
        len_succ = np.array([float(p @ self.word_lengths[s])
                             for s, p in zip(self.successors, self.successor_probs)])
        h_end = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
        h_step = h_end + (1 - q) * h_succ + q * h_start
        bytes_step = (1 - q) * (1 + len_succ) + q * (2 + len_start)
        return float(self.stationary @ h_step), float(self.stationary @ bytes_step)

    @property
    def entropy_bits_per_byte(self) -> float:
        """The exact entropy rate of the generated byte stream, in bits per UTF-8 byte."""
        return self.entropy_bits_per_step / self.bytes_per_step

    # ---- sampling -------------------------------------------------------------------------------
    def _build_tables(self) -> None:
        """Per word: one CDF over all outcomes (successors with ' ', then every word with '. ').
        Outcome codes are next_word + n * ended_sentence."""
        n = len(self.words)
        self._cdfs: list[list[float]] = []
        self._codes: list[list[int]] = []
        for w in range(n):
            q = self.end_probs[w]
            probs = np.concatenate([(1 - q) * self.successor_probs[w], q * self.start_probs])
            codes = np.concatenate([self.successors[w], np.arange(n) + n])
            cdf = np.cumsum(probs)
            cdf[-1] = 1.0 + 1e-12  # uniforms are < 1; guard against rounding
            self._cdfs.append(cdf.tolist())
            self._codes.append(codes.tolist())
        self._start_cdf = np.cumsum(self.start_probs)
        self._start_cdf[-1] = 1.0 + 1e-12
        # Rendered steps, indexed by code: " word" or ". word".
        self._pieces = [" " + w for w in self.words] + [". " + w for w in self.words]

    def sample_codes(self, n_steps: int, stream: str) -> np.ndarray:
        """The first word index followed by `n_steps - 1` outcome codes (see `_build_tables`)."""
        rng = self._rng(stream)
        n = len(self.words)
        out = np.empty(max(n_steps, 0), dtype=np.int64)
        if n_steps <= 0:
            return out
        u = rng.random(_BLOCK_STEPS)
        state = int(np.searchsorted(self._start_cdf, u[0], side="right"))
        out[0] = state
        cdfs, codes, bis = self._cdfs, self._codes, bisect.bisect_right
        t, j = 1, 1
        while t < n_steps:
            if j == _BLOCK_STEPS:
                u, j = rng.random(_BLOCK_STEPS), 0
            m = min(n_steps - t, _BLOCK_STEPS - j)
            block = u[j:j + m].tolist()
            res = out[t:t + m]
            for i, x in enumerate(block):  # pointer chasing is sequential; ~0.2 us per step
                c = codes[state][bis(cdfs[state], x)]
                res[i] = c
                state = c % n
            t += m
            j += m
        return out

    def generate(self, n_bytes: int, stream: str) -> str:
        """Exactly `n_bytes` bytes (ASCII, so also characters) of the given stream; the last word
        may be cut. Deterministic per (seed, stream); a shorter text is a prefix of a longer one."""
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or n_bytes < 0:
            raise ValueError(f"generate: n_bytes must be a non-negative integer, got {n_bytes!r}")
        n_bytes = int(n_bytes)
        if n_bytes == 0:
            self._rng(stream)  # still reject an unknown stream name
            return ""
        # Mean step length is ~6 bytes; ask for a margin and top up in the (rare) short case.
        n_steps = int(n_bytes / self.bytes_per_step * 1.05) + 64
        while True:
            codes = self.sample_codes(n_steps, stream)
            text = self.words[codes[0]] + "".join([self._pieces[c] for c in codes[1:].tolist()])
            if len(text) >= n_bytes:
                return text[:n_bytes]
            n_steps *= 2

    def _rng(self, stream: str) -> np.random.Generator:
        if stream not in _STREAM_KEYS:
            raise ValueError(f"unknown stream {stream!r}; choose one of {', '.join(_STREAM_KEYS)}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM_KEYS[stream]]))

    def describe(self) -> str:
        ks = [len(s) for s in self.successors]
        return (f"{VERSION} synthetic corpus (seed {self.seed}): first-order Markov chain over "
                f"{len(self.words)} words ({min(self.word_lengths)}-{max(self.word_lengths)} letters), "
                f"{min(ks)}-{max(ks)} successors each, sentence ends with p in "
                f"{{{', '.join(f'{q:g}' for q in _END_PROBS)}}}; "
                f"{self.entropy_bits_per_step:.4f} bits and {self.bytes_per_step:.4f} bytes per word: "
                f"entropy rate {self.entropy_bits_per_byte:.4f} bits per byte (the best achievable val_bpb)")


def _entropy_bits(p: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _make_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        n_syl = int(rng.choice([1, 2, 2, 3]))
        w = ""
        for _ in range(n_syl):
            w += _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
            if rng.random() < 0.2:
                w += _CODAS[rng.integers(len(_CODAS))]
        if w not in seen:
            seen.add(w)
            words.append(w)
    return tuple(words)
