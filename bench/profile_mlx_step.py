#!/usr/bin/env python
"""Where an MLX training step's time goes: ours (ternary, float) and mlx-lm, piece by piece.

MLX has no CPU op profiler, so each piece of the step is timed as its own mx.compile'd function,
mx.eval'd after every call (median and min of --reps calls after 2 untimed ones; the rows' calls
interleaved, so that a shared machine's load drift hits them alike), on the model and
batch of bench/train_step.py (same flags for the shape):

  step            the whole training step (ours: Trainer.step; peer: the bench's compiled step)
  fwd_loss        forward + mean cross-entropy only
  fwd_bwd         value_and_grad of the loss (no clip, no update)
  embedding       the token lookup (ours: through the ternary quantizer when the embedding is ternary)
  attention_l0    one block's attention on its normed input, forward + backward (input and weights)
  mlp_l0          one block's MLP, likewise
  head_loss       final hidden state -> logits -> mean CE, forward + backward
  quantizer       every ternary weight's effective weight (absmean per group + STE), fwd + bwd
  grad_clip       global grad norm + scale on the model's gradient shapes
  optimizer       one AdamW (or Muon) update of every parameter
  sdpa            mx.fast.scaled_dot_product_attention (causal) alone, forward + backward
  exp / exp_poly  mx.exp and ternary_mlx.cpu_math.exp over the attention scores' size (B H T T)
  matmul_floor    every GEMM of one forward + backward (projections, head, attention scores and
                  values) as plain matmuls of the model's shapes: the BLAS work any implementation
                  must do

Rows: ours_ternary, ours_float, peer (mlx-lm), ours_float_mlx_kernels (ours with MLX's own exp,
softmax, sdpa, SiLU and cross-entropy instead of ternary_mlx/cpu_math.py: what that module buys).
Per-layer pieces are one layer's; `blocks_estimate` = layers x (attention + MLP). Backward of a
piece is mx.vjp with a fixed random cotangent r (head_loss: the scalar loss, cotangent 1).

    OMP_NUM_THREADS=1 python bench/profile_mlx_step.py [--rows ours_ternary,ours_float,peer] [--json-out F]

Re-executes itself once with Debian's OpenBLAS LD_PRELOADed (as bench/train_step.py's MLX worker
does) unless --mlx-preload '' or it is already mapped. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.train_step import OPENBLAS_PRELOAD, blas_libraries, make_windows, run_config  # noqa: E402

_USE_CPU_MATH = None  # ternary_mlx.cpu_math.use_cpu_math, kept while a row switches it off
ROWS = ("ours_ternary", "ours_float", "peer", "ours_float_mlx_kernels")


def case(fn, args):
    """One piece to time: (fn, args); `measure` runs them all, interleaved."""
    return fn, args


def warm_up(pieces: dict[str, tuple], warmup: int) -> None:
    """Call every piece `warmup` times: mx.compile traces here (with the row's settings)."""
    import mlx.core as mx
    for fn, args in pieces.values():
        for _ in range(warmup):
            mx.eval(fn(*args))


def measure(cases: dict[str, dict[str, tuple]], reps: int) -> dict[str, dict[str, dict]]:
    """{row: {piece: {median, min}}} in ms per call, each call mx.eval'd. The rows' pieces are called
    round-robin (piece by piece, rows in alternating order) so load drift on a shared machine hits
    every row alike; compare rows within one run."""
    import mlx.core as mx
    times = {r: {k: [] for k in pieces} for r, pieces in cases.items()}
    names = list(dict.fromkeys(k for pieces in cases.values() for k in pieces))
    for i in range(reps):
        for k in names:
            for r in (list(cases) if i % 2 == 0 else list(cases)[::-1]):
                if k in cases[r]:
                    fn, args = cases[r][k]
                    t = time.perf_counter()
                    mx.eval(fn(*args))
                    times[r][k].append(time.perf_counter() - t)
    return {r: {k: {"median": round(1e3 * statistics.median(ts), 2), "min": round(1e3 * min(ts), 2)}
                for k, ts in row.items()} for r, row in times.items()}


def piece_fwd_bwd(module, call):
    """compiled (x, r) -> (out, d/dparams, d/dx) for out = call(module, x) and cotangent r (mx.vjp:
    not the gradient of sum(out * r), whose broadcast cotangent MLX's CPU multiplies slowly). The
    module's weights are explicit inputs (restored after the trace), so the graph recomputes the
    quantizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    names, leaves = zip(*tree_flatten(module.trainable_parameters()))
    n = len(leaves)

    def forward(*arrays):
        module.update(tree_unflatten(list(zip(names, arrays[:n]))))
        return call(module, arrays[n])

    vjp = mx.compile(lambda leaves, x, r: mx.vjp(forward, [*leaves, x], [r]))
    params = module.trainable_parameters()

    def run(x, r):
        try:
            return vjp(list(leaves), x, r)
        finally:
            module.update(params)
    return run


def rand(shape, seed):
    import mlx.core as mx
    return mx.random.normal(shape, key=mx.random.key(seed))


def matmul_floor(cfg) -> dict:
    """(compiled fn, args): every GEMM of forward + backward at the model's shapes."""
    import mlx.core as mx
    m, t = cfg.model, cfg.train
    n, H, I, V = t.batch_size * t.seq_len, m.hidden_size, m.intermediate_size, m.vocab_size
    qd, kd = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    shapes = [(H, qd), (H, kd), (H, kd), (qd, H), (H, I), (H, I), (I, H)] * m.num_hidden_layers + [(H, V)]
    xs = {d: rand((n, d), 1 + d) for d in {s[0] for s in shapes} | {s[1] for s in shapes}}
    ws = [rand((o, i), 100 + k) for k, (i, o) in enumerate(shapes)]
    B, T, nh, D = t.batch_size, t.seq_len, m.num_attention_heads, m.head_dim
    q, kk = rand((B, nh, T, D), 7), rand((B, nh, T, D), 8)
    p = rand((B, nh, T, T), 9)

    def gemms(xs, ws, q, kk, p):
        outs = []
        for (i, o), w in zip(shapes, ws):
            x, dy = xs[i], xs[o]
            outs += [mx.sum(x @ w.T), mx.sum(dy @ w), mx.sum(dy.T @ x)]  # forward, dX, dW
        for _ in range(m.num_hidden_layers):  # scores, P @ V; backward: dP, dV, dQ, dK
            outs += [mx.sum(q @ kk.swapaxes(-1, -2)), mx.sum(p @ kk), mx.sum(q @ kk.swapaxes(-1, -2)),
                     mx.sum(p.swapaxes(-1, -2) @ q), mx.sum(p @ kk), mx.sum(p.swapaxes(-1, -2) @ q)]
        return mx.stack(outs)
    return mx.compile(gemms), (xs, ws, q, kk, p)


def profile_ours(cfg, windows, a) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from shared.train.optim_rules import step_scalars
    from ternary_mlx.layers import ternary_weight
    from ternary_mlx.loss import cross_entropy
    from ternary_mlx.model import Model
    from ternary_mlx.train import Trainer
    model = Model(cfg, seed=0)
    tr = Trainer(cfg, model)
    w = windows.reshape(-1, windows.shape[-1])
    x, y = mx.array(w[:, :-1]), mx.array(w[:, 1:])
    m, t = cfg.model, cfg.train
    B, T, H = t.batch_size, t.seq_len, m.hidden_size
    out = {}
    step_no = [0]

    def step():
        h = tr.step(windows, step_no[0])
        step_no[0] += 1
        return [*h, tr._state]
    out["step"] = case(step, ())

    fwd = mx.compile(lambda x, y: cross_entropy(model(x), y), inputs=[model.state])
    out["fwd_loss"] = case(fwd, (x, y))
    vg = nn.value_and_grad(model, lambda x, y: cross_entropy(model(x), y))
    vgc = mx.compile(vg, inputs=[model.state], outputs=[model.state])  # value_and_grad leaves tracers
    out["fwd_bwd"] = case(vgc, (x, y))

    emb = mx.compile(lambda ids: model.model.embed_tokens(ids), inputs=[model.state])
    out["embedding"] = case(emb, (x,))
    layer = model.model.layers[0]
    hx, rx = rand((B, T, H), 3), rand((B, T, H), 4)
    out["attention_l0"] = case(piece_fwd_bwd(layer.self_attn, lambda mod, v: mod(v)), (hx, rx))
    out["mlp_l0"] = case(piece_fwd_bwd(layer.mlp, lambda mod, v: mod(v)), (hx, rx))
    out["head_loss"] = case(piece_fwd_bwd(model, lambda mod, v: cross_entropy(mod.head_logits(v), y)),
                               (hx, mx.array(1.0, mx.float32)))
    tern = [mod.weight for mod in model.ternary_modules().values()]
    if tern:
        G, eps = cfg.ternary.group_size, cfg.ternary.eps

        def quant(ws, rs):
            return sum(mx.sum(ternary_weight(w, G, eps) * r) for w, r in zip(ws, rs))
        rs = [rand(w.shape, 50 + k) for k, w in enumerate(tern)]
        out["quantizer"] = case(mx.compile(mx.value_and_grad(quant)), (tern, rs))
    grads = {k: rand(v.shape, 60) for k, v in tree_flatten(model.parameters())}
    out["grad_clip"] = case(mx.compile(_clip), (grads,))
    scalars = {k: mx.array(v) for k, v in step_scalars(3, t).items()}
    params = dict(tree_flatten(model.parameters()))
    out["optimizer"] = case(mx.compile(lambda p, g, s: tr.opt.apply(p, g, s), inputs=[tr.opt.state], outputs=[tr.opt.state]),
                               (params, grads, scalars))
    return out


def _blocks(out: dict, layers: int) -> dict:
    return {k: round(layers * (out["attention_l0"][k] + out["mlp_l0"][k]), 2) for k in ("median", "min")}


def _clip(grads):
    import mlx.core as mx
    gnorm = mx.sqrt(sum(mx.sum(g * g) for g in grads.values()))
    scale = mx.minimum(1.0, 1.0 / (gnorm + 1e-6))
    return gnorm, {k: g * scale for k, g in grads.items()}


def _sdpa_and_floor(cfg, a) -> dict:
    import mlx.core as mx

    from ternary_mlx import cpu_math
    m, t = cfg.model, cfg.train
    B, T = t.batch_size, t.seq_len
    q = rand((B, m.num_attention_heads, T, m.head_dim), 11)
    k, v = (rand((B, m.num_key_value_heads, T, m.head_dim), s) for s in (12, 13))
    r = rand(q.shape, 14)

    def att(q, k, v, r):
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=m.head_dim ** -0.5, mask="causal")
        return mx.sum(o * r)
    sd = mx.compile(mx.value_and_grad(att, argnums=(0, 1, 2)))
    fn, args = matmul_floor(cfg)
    scores = rand((B, m.num_attention_heads, T, T), 15)
    return {"sdpa": case(sd, (q, k, v, r)), "matmul_floor": case(fn, args),
            "exp": case(mx.exp, (scores,)),
            "exp_poly": case(mx.compile(cpu_math.exp), (scores,))}


def profile_peer(cfg, windows, a) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    from bench.train_step import PeerMLXLM
    row = PeerMLXLM("peer_mlx_lm", a, windows)
    row.setup()
    m, t = cfg.model, cfg.train
    B, T, H = t.batch_size, t.seq_len, m.hidden_size
    w = windows.reshape(-1, windows.shape[-1])
    x, y = mx.array(w[:, :-1]), mx.array(w[:, 1:])
    out = {"step": case(lambda: row.step(0), ())}
    lm = row.model

    def ce(mod, x, y):
        return nn.losses.cross_entropy(mod(x), y, reduction="mean")
    out["fwd_loss"] = case(mx.compile(lambda x, y: ce(lm, x, y), inputs=[lm.state]), (x, y))
    vg = mx.compile(nn.value_and_grad(lm, lambda x, y: ce(lm, x, y)), inputs=[lm.state], outputs=[lm.state])
    out["fwd_bwd"] = case(vg, (x, y))
    out["embedding"] = case(mx.compile(lambda ids: lm.model.embed_tokens(ids), inputs=[lm.state]), (x,))
    layer = lm.model.layers[0]
    hx, rx = rand((B, T, H), 3), rand((B, T, H), 4)
    out["attention_l0"] = case(piece_fwd_bwd(layer.self_attn, lambda mod, v: mod(v, mask="causal")), (hx, rx))
    out["mlp_l0"] = case(piece_fwd_bwd(layer.mlp, lambda mod, v: mod(v)), (hx, rx))
    out["head_loss"] = case(piece_fwd_bwd(lm, lambda mod, v: nn.losses.cross_entropy(
        mod.model.embed_tokens.as_linear(v), y, reduction="mean")), (hx, mx.array(1.0, mx.float32)))
    return out


def main(argv=None) -> int:
    from bench.train_step import parse_args as bench_args
    p = argparse.ArgumentParser(prog="python bench/profile_mlx_step.py", allow_abbrev=False)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"), help="ours' optimizer")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json-out", type=Path, default=None)
    a, rest = p.parse_known_args(argv)
    shape = bench_args(rest + ["--warmup", "2"])  # the bench's shape flags (--batch, --seq, --hidden, ...)
    a.warmup = 2
    for k in ("vocab", "hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "seq", "batch",
              "group", "clip", "peer_clip", "seed", "mlx_preload"):
        setattr(a, k, getattr(shape, k))
    if a.mlx_preload and os.path.exists(a.mlx_preload) and a.mlx_preload not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=a.mlx_preload)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env)
    import mlx.core as mx

    from ternary_mlx import cpu_math
    global _USE_CPU_MATH
    _USE_CPU_MATH = cpu_math.use_cpu_math
    rows = [r for r in a.rows.split(",") if r]
    windows = make_windows(a)
    cases = {}
    res = {"benchmark": "profile_mlx_step", "command": " ".join(["python", "bench/profile_mlx_step.py",
                                                                 *(argv or sys.argv[1:])]),
           "mlx_version": mx.__version__, "openblas_libraries_mapped": blas_libraries(),
           "threads": os.environ.get("OMP_NUM_THREADS"), "unit": "ms per call: median and min of --reps calls, the rows' calls interleaved"}
    for r in rows + ["common"]:
        t0 = time.perf_counter()
        if r == "common":  # the same work for every row
            cases[r] = _sdpa_and_floor(run_config(a, False, "adamw"), a)
        elif r == "peer":
            cases[r] = profile_peer(run_config(a, False, "adamw"), windows, a)
        else:  # ours_float_mlx_kernels: MLX's own exp, softmax, sdpa, silu and CE (no ternary_mlx/cpu_math.py)
            cpu_math.use_cpu_math = (lambda: False) if r.endswith("mlx_kernels") else _USE_CPU_MATH
            cases[r] = profile_ours(run_config(a, r == "ours_ternary", a.optimizer), windows, a)
        warm_up(cases[r], a.warmup)
        cpu_math.use_cpu_math = _USE_CPU_MATH
        print(f"[{r}] built and warmed up in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    res["rows"] = measure(cases, a.reps)
    for r in rows:
        res["rows"][r]["blocks_estimate"] = _blocks(res["rows"][r], a.layers)
    text = json.dumps(res, indent=2)
    if a.json_out:
        a.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
