"""Text generation for either backend: sampling on the host from the backend's last-position logits."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from shared.data.tokenizers import Tokenizer


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
                 seed: int = 0, stop_ids: set[int] | None = None) -> Iterator[int]:
    """Yield new token ids; `last_logits(ids (1, T)) -> (vocab,)` is the backend's forward pass.

    No KV cache: each step re-reads the last `context` tokens (fine for the small models this
    tool trains on a laptop; O(T^2) per sequence).
    """
    rng = np.random.default_rng(seed)
    ids = list(int(i) for i in prompt_ids)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt")
    for _ in range(max_new_tokens):
        nxt = sample_next(last_logits(np.array([ids[-context:]], np.int64)), rng, temperature, top_k)
        if stop_ids and nxt in stop_ids:
            return
        ids.append(nxt)
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
