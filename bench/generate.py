"""Prompt and decode tokens/s: `ternary generate`'s path against mlx-lm's and transformers' generation.

    OMP_NUM_THREADS=1 python bench/generate.py                  # all four rows, JSON on stdout
    python bench/generate.py --rows ours_mlx peer_mlx_lm --new-tokens 256 --json-out bench/generate.json

One Qwen3-shaped ternary model (stock Qwen3 options, ternary attn + mlp, `--group-size`, seed 0), and
the same model in float for the peers: the peers get our effective weights (codes x scales, what
`ternary convert --to hf` / `--to mlx-lm` write unpacked), so all four rows run the same math.
  ours_mlx / ours_torch  ternary_*/generate.py's decoding as `ternary generate` runs it: weights frozen
                         once (layers.frozen_weights), a KV cache (kv_cache.py), greedy sampling on the
                         host from each step's last logits (shared/train/generation.py)
  peer_mlx_lm            mlx_lm.models.qwen3.Model + mlx_lm.generate.generate_step (greedy sampler)
  peer_transformers      transformers Qwen3ForCausalLM (float32, sdpa) + .generate(do_sample=False)
Each row: a prompt of --prompt-tokens random ids, then --new-tokens new ones, best of --reps. prompt
tokens/s = prompt tokens / time to the first new token; decode tokens/s = the other new tokens / the
time after it. The rows of one framework take turns, rep by rep, in one worker process per framework
with --threads threads (OMP, OpenBLAS, MKL and torch.set_num_threads); the MLX worker preloads
Debian's OpenBLAS where it exists, as the CLI does (convert/blas.py). On a shared machine the
numbers move with the load: compare rows of one run, never runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ["ours_mlx", "peer_mlx_lm", "ours_torch", "peer_transformers"]
OPENBLAS_PRELOAD = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def run_config(a):
    from shared.spec.config import ModelConfig, RunConfig, TernaryConfig, TrainConfig
    m = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                    num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                    max_position_embeddings=a.prompt_tokens + a.new_tokens)
    return RunConfig(model=m, ternary=TernaryConfig(group_size=a.group_size),
                     train=TrainConfig(seq_len=m.max_position_embeddings)).validate()


def effective_float_weights(model, frozen_weights) -> dict[str, np.ndarray]:
    """Canonical name -> the weight the forward uses (ternary ones as codes x scales), float32."""
    w = model.numpy_weights()
    with frozen_weights(model):
        for name, mod in model.ternary_modules().items():
            w[name] = np.array(mod._frozen, np.float32) if not hasattr(mod._frozen, "numpy") \
                else mod._frozen.float().cpu().numpy()
    return w


def timed(tokens) -> tuple[float, float, int]:
    """(seconds to the first item, seconds after it, items) of an iterator of new tokens."""
    t0 = time.perf_counter()
    first, n = None, 0
    for _ in tokens:
        n += 1
        if first is None:
            first = time.perf_counter()
    return first - t0, time.perf_counter() - first, n


def row_ours(backend: str, a, prompt: np.ndarray):
    from shared.train.generation import generate_ids
    pkg = "ternary_mlx" if backend == "mlx" else "ternary_cuda"
    Model = __import__(f"{pkg}.model", fromlist=["Model"]).Model
    gen = __import__(f"{pkg}.generate", fromlist=["cached_last_logits"])
    frozen = __import__(f"{pkg}.layers", fromlist=["frozen_weights"]).frozen_weights
    model = Model(run_config(a), seed=0)
    if backend == "torch":
        model.eval()

    def once():
        with frozen(model):
            return timed(generate_ids(gen.cached_last_logits(model), prompt, a.new_tokens, 10 ** 9,
                                      temperature=0))
    return once


def row_mlx_lm(a, prompt: np.ndarray):
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.qwen3 import Model, ModelArgs

    from ternary_mlx.layers import frozen_weights
    from ternary_mlx.model import Model as Ours
    cfg = run_config(a)
    m = cfg.model
    w = effective_float_weights(Ours(cfg, seed=0), frozen_weights)
    model = Model(ModelArgs(
        model_type="qwen3", hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        intermediate_size=m.intermediate_size, num_attention_heads=m.num_attention_heads,
        rms_norm_eps=m.rms_norm_eps, vocab_size=m.vocab_size, num_key_value_heads=m.num_key_value_heads,
        max_position_embeddings=m.max_position_embeddings, head_dim=m.head_dim, tie_word_embeddings=True,
        rope_theta=m.rope_theta))
    model.load_weights([(k, mx.array(v)) for k, v in w.items()], strict=True)
    mx.eval(model.parameters())

    def once():
        steps = generate_step(mx.array(prompt.astype(np.int32)), model, max_tokens=a.new_tokens,
                              sampler=lambda logprobs: mx.argmax(logprobs, axis=-1))
        return timed(tok for tok, _ in steps)
    return once


def row_transformers(a, prompt: np.ndarray):
    import torch
    import transformers
    from transformers.generation.streamers import BaseStreamer

    from ternary_cuda.layers import frozen_weights
    from ternary_cuda.model import Model as Ours
    cfg = run_config(a)
    m = cfg.model
    w = effective_float_weights(Ours(cfg, seed=0), frozen_weights)
    hf = transformers.Qwen3Config(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
        max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.rms_norm_eps,
        rope_theta=m.rope_theta, tie_word_embeddings=True, attention_dropout=0.0)
    hf._attn_implementation = "sdpa"
    model = transformers.Qwen3ForCausalLM(hf).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"transformers weights: missing {missing}, unexpected {unexpected}")

    class Stamps(BaseStreamer):  # put() gets the prompt first, then each new token
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def once():
        s = Stamps()
        ids = torch.from_numpy(prompt[None].astype(np.int64))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                                 streamer=s, pad_token_id=0)
        n = out.shape[1] - ids.shape[1]
        return s.times[1] - t0, s.times[-1] - s.times[1], n
    return once


def worker(a) -> dict:
    """Run the rows of one framework (a.worker) here; their results by row name."""
    prompt = np.random.default_rng(0).integers(0, a.vocab, a.prompt_tokens).astype(np.int64)
    rows = [r for r in a.rows if framework(r) == a.worker]
    if a.worker == "torch":
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
    make = {"ours_mlx": lambda: row_ours("mlx", a, prompt), "ours_torch": lambda: row_ours("torch", a, prompt),
            "peer_mlx_lm": lambda: row_mlx_lm(a, prompt), "peer_transformers": lambda: row_transformers(a, prompt)}
    onces = {r: make[r]() for r in rows}
    runs = {r: [] for r in rows}
    for rep in range(a.reps + 1):  # rep 0 warms up (first-call allocations, kernel set-up)
        for r in rows:  # interleaved, so that a change of the machine's load hits both rows alike
            t = onces[r]()
            if rep:
                runs[r].append(t)
    out = {}
    for r in rows:
        first, rest, n = min(runs[r], key=lambda t: t[0] + t[1])
        out[r] = {"prompt_tokens_per_s": round(a.prompt_tokens / first, 1),
                  "decode_tokens_per_s": round((n - 1) / rest, 1), "new_tokens": n,
                  "time_to_first_token_ms": round(first * 1e3, 2), "decode_s": round(rest, 3)}
    return out


def framework(row: str) -> str:
    return "mlx" if row in ("ours_mlx", "peer_mlx_lm") else "torch"


def spawn(kind: str, argv: list[str], a) -> dict:
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(a.threads)
    if kind == "mlx" and os.path.exists(OPENBLAS_PRELOAD):
        env["LD_PRELOAD"] = OPENBLAS_PRELOAD
    res = subprocess.run([sys.executable, __file__, *argv, "--worker", kind], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"generate bench: the {kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="threads per worker (0: framework defaults)")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    t0 = time.perf_counter()
    rows = {}
    for kind in ("mlx", "torch"):
        if any(framework(r) == kind for r in a.rows):
            rows.update(spawn(kind, argv, a))
    ratio = {}
    for ours, peer in (("ours_mlx", "peer_mlx_lm"), ("ours_torch", "peer_transformers")):
        if ours in rows and peer in rows:
            ratio[f"{ours}/{peer}"] = {k: round(rows[ours][k] / rows[peer][k], 2)
                                       for k in ("prompt_tokens_per_s", "decode_tokens_per_s")}
    out = {"benchmark": "generate", "command": " ".join(["python", "bench/generate.py"] + argv),
           "model": {"shape": f"Qwen3 {a.layers} x {a.hidden}, MLP {a.intermediate}, {a.heads}/{a.kv_heads} heads "
                              f"of 64, vocab {a.vocab}, tied; ternary attn+mlp G{a.group_size} (peers: its "
                              "effective weights in float32)",
                     "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens},
           "threads": a.threads or "framework defaults",
           "statistic": f"best of {a.reps} after one warm-up, the rows of a framework interleaved",
           "machine_note": "a shared machine: rows of one run compare; absolute numbers move with the load",
           "rows": rows, "ours_over_peer": ratio, "total_wall_s": round(time.perf_counter() - t0, 1)}
    text = json.dumps(out, indent=2)
    if a.json_out:
        tmp = a.json_out.with_suffix(a.json_out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(a.json_out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
