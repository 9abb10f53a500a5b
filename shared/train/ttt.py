"""Score-first test-time training (train.ttt; SEEDS S14), the same for both backends.

The validation tokens are cut into chunks of train.ttt_chunk_tokens scored targets. Chunk i is
scored (its loss counted) by the model as it stands, which has been adapted on chunks 0..i-1 only;
then the model takes train.ttt_steps gradient steps on chunk i, and those updates carry over to
chunk i+1. The last chunk is scored and never trained on. Afterwards the weights are put back.

Why the illegal variant (train on the validation tokens, then score them) cannot run: the only
thing that updates the model is `_score_then_adapt`, which scores its chunk before it computes a
gradient on it, and chunks are visited once, in order. There is no "adapt" entry point.

The backend supplies three functions (ternary_*/evaluate.py):
  score(piece) -> (nats, tokens, bytes) of piece[1:] in non-overlapping windows (the plain evaluation's),
  gradients(windows (n, seq_len + 1), names) -> {name: float32 gradient of the mean cross-entropy},
  load(weights) -> None (the whole strict weight set).
The update math (SGD on the latent weights, or on a low-rank delta) is NumPy here, so both
backends take the same steps from the same gradients.

Modes:
  "full": SGD on every parameter's latent weight, p -= ttt_lr * g.
  "lora": for each chosen projection (train.ttt_lora_targets, e.g. q_proj, v_proj, in every layer)
          W = W0 + B @ A with A (rank, in) ~ N(0, 1/in) (seeded by train.seed), B (out, rank) = 0, so
          the first chunk's model is the plain one; SGD on A and B (chain rule through W). The delta
          is on the latent weight: a ternary projection is re-ternarized from W0 + B A by the model's
          own forward (not a float side path beside the ternary weight, as the LoRA-TTT record has).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.data.metrics import bits_per_byte, perplexity
from shared.spec.options import MATRIX

TTT_MODES = ("off", "full", "lora")
TTT_KEYS = ("val_loss_ttt", "val_bpb_ttt", "ttt_mode")  # what the summary carries beside val_loss, val_bpb


@dataclass(frozen=True)
class TTTPlan:
    mode: str
    lr: float
    steps: int
    chunk_tokens: int
    lora_rank: int
    lora_targets: tuple[str, ...]
    seed: int

    def describe(self) -> str:
        """How the TTT numbers were made, for every report that shows them."""
        what = (f"lora r={self.lora_rank} on {','.join(self.lora_targets)}" if self.mode == "lora"
                else "full weights")
        return (f"score-first TTT: {what}, chunk {self.chunk_tokens} tokens, {self.steps} SGD "
                f"step{'s' if self.steps != 1 else ''} per chunk at lr {self.lr:g}")


def plan_of(t) -> TTTPlan | None:
    """The TTT of a TrainConfig, or None when train.ttt = "off"."""
    if t.ttt == "off":
        return None
    return TTTPlan(t.ttt, t.ttt_lr, t.ttt_steps, t.ttt_chunk_tokens, t.ttt_lora_rank,
                   tuple(t.ttt_lora_targets), t.seed)


def lora_projection_names(specs: dict) -> dict[str, str]:
    """{parameter name: its projection name} of the block matrices (role matrix, inside a layer, 2-D
    (out, in)): model.layers.<i>.self_attn.q_proj.weight -> q_proj. What train.ttt_lora_targets names."""
    return {n: n.removesuffix(".weight").rsplit(".", 1)[-1] for n, s in specs.items()
            if s.role == MATRIX and s.layer is not None and len(s.shape) == 2}


def lora_target_names(specs: dict, targets) -> list[str]:
    """The block matrices whose projection name is one of `targets`, in canonical order."""
    return [n for n, proj in lora_projection_names(specs).items() if proj in targets]


def chunk_starts(n_tokens: int, max_tokens: int | None, chunk_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk: it scores the targets tokens[start + 1 .. end], from the slice
    tokens[start:end + 1]; the same targets as the plain evaluation of max_tokens."""
    last = n_tokens - 1 if max_tokens is None else min(max_tokens, n_tokens - 1)
    if last < 1:
        raise ValueError(f"score-first TTT: nothing to score ({n_tokens} tokens)")
    return [(s, min(s + chunk_tokens, last)) for s in range(0, last, chunk_tokens)]


class FullAdapter:
    """SGD on every latent weight."""

    def __init__(self, weights: dict[str, np.ndarray], plan: TTTPlan, specs: dict):
        self.lr = np.float32(plan.lr)
        self.w = {k: np.array(v, np.float32) for k, v in weights.items()}
        self.names = list(self.w)

    def weights(self) -> dict[str, np.ndarray]:
        return self.w

    def step(self, grads: dict[str, np.ndarray]) -> None:
        for n in self.names:
            self.w[n] = self.w[n] - self.lr * grads[n]


class LoRAAdapter:
    """W = W0 + B @ A on the target projections; SGD on A and B."""

    def __init__(self, weights: dict[str, np.ndarray], plan: TTTPlan, specs: dict):
        self.lr = np.float32(plan.lr)
        self.base = {k: np.array(v, np.float32) for k, v in weights.items()}
        self.names = lora_target_names(specs, plan.lora_targets)
        if not self.names:
            raise ValueError(f"train.ttt_lora_targets {list(plan.lora_targets)} name no projection of this model")
        rng = np.random.default_rng(plan.seed)
        self.a = {n: (rng.standard_normal((plan.lora_rank, self.base[n].shape[1]))
                      / np.sqrt(self.base[n].shape[1])).astype(np.float32) for n in self.names}
        self.b = {n: np.zeros((self.base[n].shape[0], plan.lora_rank), np.float32) for n in self.names}

    def weights(self) -> dict[str, np.ndarray]:
        return {**self.base, **{n: self.base[n] + self.b[n] @ self.a[n] for n in self.names}}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        for n in self.names:
            g = np.asarray(grads[n], np.float32)
            grad_b, grad_a = g @ self.a[n].T, self.b[n].T @ g
            self.b[n] = self.b[n] - self.lr * grad_b
            self.a[n] = self.a[n] - self.lr * grad_a


ADAPTERS = {"full": FullAdapter, "lora": LoRAAdapter}


def training_windows(piece: np.ndarray, seq_len: int) -> np.ndarray:
    """The chunk's whole windows of seq_len + 1 tokens: the plain evaluation's windows of it."""
    n = (len(piece) - 1) // seq_len
    return np.stack([piece[k * seq_len:(k + 1) * seq_len + 1] for k in range(n)])


def _score_then_adapt(piece: np.ndarray, adapter, plan: TTTPlan, seq_len: int, *, train: bool,
                      score: Callable, gradients: Callable, load: Callable) -> tuple[float, int, int]:
    """Chunk `piece`: first its score under the current model, then (unless it is the last chunk)
    the gradient steps on it. The order here is the legality of the whole method."""
    totals = score(piece)  # before any update has seen these tokens
    if train:
        windows = training_windows(piece, seq_len)
        for _ in range(plan.steps):
            adapter.step(gradients(windows, adapter.names))
            load(adapter.weights())
    return totals


def score_first_ttt(plan: TTTPlan, weights: dict[str, np.ndarray], specs: dict, tokens: np.ndarray,
                    seq_len: int, max_tokens: int | None, *, score: Callable, gradients: Callable,
                    load: Callable, progress: bool = False) -> dict:
    """val_loss_ttt, val_bpb_ttt, perplexity_ttt, ttt_mode (plan.describe()), ttt_chunks and the
    per-chunk losses ttt_chunk_loss, from the model whose weights are `weights` (loaded); the
    model holds `weights` again afterwards, whatever happened."""
    if plan.chunk_tokens % seq_len:
        raise ValueError(f"train.ttt_chunk_tokens={plan.chunk_tokens} is not a multiple of the window "
                         f"length {seq_len}")
    chunks = chunk_starts(len(tokens), max_tokens, plan.chunk_tokens)
    adapter = ADAPTERS[plan.mode](weights, plan, specs)
    nats, n_tok, n_bytes, per_chunk = 0.0, 0, 0, []
    it = chunks
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(chunks, unit="chunk", desc="score-first TTT", leave=False)
    try:
        for i, (s, e) in enumerate(it):
            c_nats, c_tok, c_bytes = _score_then_adapt(
                tokens[s:e + 1], adapter, plan, seq_len, train=i + 1 < len(chunks),
                score=score, gradients=gradients, load=load)
            nats, n_tok, n_bytes = nats + c_nats, n_tok + c_tok, n_bytes + c_bytes
            per_chunk.append(c_nats / c_tok)
    finally:
        load(weights)
    loss = nats / n_tok
    return {"val_loss_ttt": loss, "val_bpb_ttt": bits_per_byte(nats, n_bytes), "perplexity_ttt": perplexity(loss),
            "ttt_mode": plan.describe(), "ttt_chunks": len(chunks), "ttt_chunk_loss": per_chunk}


def mean_gradients(grad_fn: Callable, windows: np.ndarray, names, batch_size: int) -> dict[str, np.ndarray]:
    """The gradient of the mean cross-entropy over all `windows` (all of equal length), from
    micro-batches of batch_size windows: grad_fn(batch, names) is each batch's mean gradient."""
    total: dict[str, np.ndarray] | None = None
    for b in range(0, len(windows), batch_size):
        part = windows[b:b + batch_size]
        g = grad_fn(part, names)
        w = np.float32(len(part) / len(windows))
        total = {n: w * g[n] for n in names} if total is None else {n: total[n] + w * g[n] for n in names}
    return total


def plain_score(nll_fn: Callable, tokenizer, seq_len: int, batch_size: int) -> Callable:
    """score(piece) -> (nats, tokens, bytes) of piece[1:] as the plain evaluation scores it
    (non-overlapping windows of seq_len; shared.train.evaluation.evaluate_tokens)."""
    from shared.train.evaluation import evaluate_tokens

    def score(piece: np.ndarray) -> tuple[float, int, int]:
        m = evaluate_tokens(nll_fn, piece, tokenizer, seq_len, batch_size=batch_size)
        return m["val_loss"] * m["tokens"], m["tokens"], m["bytes"]
    return score


def run_backend_ttt(model, plan: TTTPlan, tokens: np.ndarray, tokenizer, seq_len: int, *, nll_fn: Callable,
                    grad_fn: Callable, max_tokens: int | None, batch_size: int, progress: bool) -> dict:
    """score_first_ttt on a backend model (numpy_weights / load_numpy / config), with its per-token
    nll_fn(x, y) and its grad_fn(windows, names) (ternary_*/evaluate.py)."""
    from shared.spec.params import parameter_specs
    return score_first_ttt(plan, model.numpy_weights(), parameter_specs(model.config.model), tokens, seq_len,
                           max_tokens, score=plain_score(nll_fn, tokenizer, seq_len, batch_size),
                           gradients=lambda w, names: mean_gradients(grad_fn, w, names, batch_size),
                           load=model.load_numpy, progress=progress)
