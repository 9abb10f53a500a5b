"""Text generation for either backend: sampling on the host from the backend's last-position logits."""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterator

import numpy as np

from shared.data.tokenizers import Tokenizer


def kv_cache_unsupported(m) -> str | None:
    """Why the backends' KV cache (ternary_*/kv_cache.py) cannot decode model config `m`, or None.
    Every option of shared/spec/options.py decodes with it today (the block plug-ins through the
    input histories the cache keeps); an option added without cache support names itself here,
    and `generate` then says so and runs the full forward per token."""
    return None


class CachedLogits:
    """`last_logits(ids (1, T)) -> (vocab,)` for generate_ids, with a KV cache behind it.

    `new_cache()` makes an empty cache and `forward(ids (1, T), cache)` returns the last position's
    logits after reading and extending it. A window that extends the previous one by one token is
    one cached step; any other (the first call, or a window that slid past the context length, whose
    positions all move) is a fresh prefill, which is exactly the full forward on that window.
    """

    def __init__(self, new_cache: Callable, forward: Callable):
        self.new_cache, self.forward = new_cache, forward
        self.cache, self.seen = None, []

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        window = [int(i) for i in ids[0]]
        if self.cache is not None and window[:-1] == self.seen:
            out = self.forward(np.array([window[-1:]], np.int64), self.cache)
        else:
            self.cache = self.new_cache()
            out = self.forward(np.array([window], np.int64), self.cache)
        self.seen = window
        return out


class Progress:
    """A progress line on stderr for long generations: tokens done / total and tokens/s, at most
    once per `every` seconds, from the first update after `after` seconds."""

    def __init__(self, total: int, file=None, after: float = 2.0, every: float = 1.0):
        self.total, self.file, self.after, self.every = total, file or sys.stderr, after, every
        self.start = self.last = time.perf_counter()
        self.shown = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.start < self.after or (self.shown and now - self.last < self.every and done < self.total):
            return
        self.last, self.shown = now, True
        rate = done / max(now - self.start, 1e-9)
        print(f"generate: {done}/{self.total} tokens, {rate:.1f} tokens/s", file=self.file, flush=True)


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int | None) -> int:
    """Greedy at temperature 0; otherwise softmax(logits / temperature) over the top_k tokens."""
    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    if top_k:
        cut = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= cut, logits, -np.inf)
    p = np.exp((logits - logits.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))


def generate_ids(last_logits: Callable[[np.ndarray], np.ndarray], prompt_ids: np.ndarray, max_new_tokens: int,
                 context: int, *, temperature: float = 0.8, top_k: int | None = 50,
                 seed: int = 0, stop_ids: set[int] | None = None,
                 progress: Progress | None = None) -> Iterator[int]:
    """Yield new token ids; `last_logits(ids (1, T)) -> (vocab,)` is the backend's forward pass.

    Each step asks for the last `context` tokens' logits; `CachedLogits` answers that from a KV
    cache, a plain forward re-reads them (O(T^2) per sequence). `progress` gets the count so far.
    """
    rng = np.random.default_rng(seed)
    ids = list(int(i) for i in prompt_ids)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt")
    for n in range(max_new_tokens):
        nxt = sample_next(last_logits(np.array([ids[-context:]], np.int64)), rng, temperature, top_k)
        if stop_ids and nxt in stop_ids:
            return
        ids.append(nxt)
        if progress is not None:
            progress.update(n + 1)
        yield nxt


def generate_text(last_logits, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, context: int,
                  **kw) -> str:
    prompt_ids = tokenizer.encode(prompt)
    if tokenizer.bos_id is not None:
        prompt_ids = np.concatenate([[tokenizer.bos_id], prompt_ids])
    stop = {tokenizer.eos_id} if getattr(tokenizer, "eos_id", None) is not None else None
    new = list(generate_ids(last_logits, prompt_ids, max_new_tokens, context, stop_ids=stop, **kw))
    # Decode prompt + continuation together: decoding the new tokens alone would drop the space a
    # SentencePiece "▁word" piece carries when it comes first.
    full = tokenizer.decode(np.concatenate([prompt_ids, np.array(new, np.int64)]))
    head = tokenizer.decode(np.asarray(prompt_ids, np.int64))
    return full[len(head):] if full.startswith(head) else tokenizer.decode(np.array(new, np.int64))
