#!/usr/bin/env python
"""Training-step throughput: ours (MLX and torch, ternary and float) against the peers, one run.

Every row trains the same tiny Qwen3-shaped model (same shape, same initial weights from
`shared.spec.init.init_weights`, tied embeddings) on the same random token batch:

  ours_mlx_ternary_adamw    ternary_mlx Trainer, ternary (group 128 by default), hand-written AdamW
  ours_mlx_float_adamw      the same with ternary.enabled = false
  ours_torch_ternary_adamw  ternary_cuda Trainer, ternary
  ours_torch_float_adamw    the same with ternary.enabled = false
  peer_mlx_lm               mlx_lm.models.qwen3.Model + mlx.optimizers.AdamW, an mx.compile'd
                            nn.value_and_grad step with state [model.state, optimizer.state,
                            mx.random.state] (the idiom of mlx_lm/tuner/trainer.py)
  peer_transformers         transformers Qwen3ForCausalLM (float32, sdpa) + torch.optim.AdamW (defaults)
  ours_mlx_ternary_muon     extra: ours with train.optimizer = muon
  ours_torch_ternary_muon   extra: likewise on torch

Same work in every row: forward, mean cross-entropy over all B*T positions, backward, global
grad-norm clip at `--clip` (ours always computes the norm and clips at train.grad_clip = 1.0 by
default; the peers get their library's clip function, `--peer-clip 0` turns it off), AdamW with
ours' hyper-parameters (lr, betas, eps, weight_decay = 0, bias correction on) at a constant LR
(ours with train.warmup_steps = 0). Ours-float and the peers then follow the same trajectory
(same weights, same batch): `derived.loss_check_ours_float_vs_peer` compares first and last losses.

Processes: MLX rows run in one worker process with Debian's OpenBLAS LD_PRELOADed (MLX's bundled
CPU BLAS is ~35x slower at matmul), torch rows in another worker without it, as the CLI does
(convert/blas.py: only MLX commands re-execute with the preload; in a torch process the preloaded
OpenBLAS interposes MKL's sgemm_ and adds its own threads to torch's OpenMP threads). The parent
imports neither framework and drives the workers in turn. `machine.workers.*.openblas_preload_active`
is read from each worker's /proc/self/maps.

Threads: `--threads 1` by default (OMP/OPENBLAS/MKL_NUM_THREADS and torch.set_num_threads in the
workers). On a 2-core machine shared with other jobs, 2-thread torch steps are bimodal (0.5 s, or
3-17 s when a core is taken: every OpenMP region then waits a scheduler slice for the descheduled
thread), which makes medians meaningless; single-threaded rows are stable and comparable.
`--threads 0` keeps each framework's default threading (report it next to the single-thread run).

Timing: `--warmup` untimed steps per row (MLX compiles here), then `--steps` timed steps, each
followed by a host sync of the loss, the grad norm and the whole updated state (parameters and
optimizer state), so no work leaks into the next step. Timed steps are split into `--rounds`
chunks visited in alternating row order, so drift in the machine's load hits all rows alike.
Reported per row: median wall ms per step, tokens/s = batch * seq / median, min, IQR, CPU ms.

    python bench/train_step.py [--steps N] [--warmup N] [--batch B] [--seq T] [--json-out FILE]

Output: one JSON object on stdout (progress on stderr), also written to --json-out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPENBLAS_PRELOAD = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
ALL_ROWS = (
    "ours_mlx_ternary_adamw", "ours_mlx_float_adamw",
    "ours_torch_ternary_adamw", "ours_torch_float_adamw",
    "peer_mlx_lm", "peer_transformers",
    "ours_mlx_ternary_muon", "ours_torch_ternary_muon",
)
# issue 12 item 3, both backends: ours >= 1.3x the peer at equal work, ternary costs <= 3% over float
TARGET_TERNARY_OVERHEAD_PCT = 3.0
TARGET_OURS_VS_PEER = 1.3


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---- machine ------------------------------------------------------------------------------------
def blas_libraries() -> list[str]:
    """Shared objects in this process whose name says OpenBLAS (not numpy's suffixed scipy_openblas)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path)
                if base.startswith("libopenblas") or "openblas-pthread" in path or "openblas-openmp" in path:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def mlx_matmul_gflops(n: int = 512, reps: int = 10) -> float:
    import mlx.core as mx
    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    return round(2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9, 1)


def torch_matmul_gflops(n: int = 512, reps: int = 10) -> float:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return round(2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9, 1)


def machine_info() -> dict:
    """The parent's view (it imports neither framework); each worker adds its own in `workers`."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numpy_version": np.__version__,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        info["cpu_model"] = None
    return info


# ---- rows ---------------------------------------------------------------------------------------
def run_config(args, ternary: bool, optimizer: str):
    from shared.spec.config import RunConfig
    return RunConfig().with_overrides([
        f"model.vocab_size={args.vocab}", f"model.hidden_size={args.hidden}",
        f"model.intermediate_size={args.intermediate}", f"model.num_hidden_layers={args.layers}",
        f"model.num_attention_heads={args.heads}", f"model.num_key_value_heads={args.kv_heads}",
        f"model.head_dim={args.head_dim}", f"model.max_position_embeddings={max(2048, args.seq)}",
        "model.tie_word_embeddings=true",
        f"ternary.enabled={'true' if ternary else 'false'}", f"ternary.group_size={args.group}",
        f"train.batch_size={args.batch}", f"train.seq_len={args.seq}", "train.grad_accum=1",
        f"train.optimizer={optimizer}", f"train.grad_clip={args.clip}",
        "train.warmup_steps=0",  # constant LR like the peers' optimizers: same trajectories, same losses
    ])


class Row:
    """setup() builds everything; step(i) runs one training step and syncs; returns (loss, gnorm)."""
    name = ""
    description = ""

    def setup(self) -> None:
        raise NotImplementedError

    def step(self, i: int) -> tuple[float, float]:
        raise NotImplementedError


class OursMLX(Row):
    def __init__(self, name, args, windows, ternary, optimizer):
        self.name, self.args, self.windows = name, args, windows
        self.cfg = run_config(args, ternary, optimizer)
        self.description = (f"ternary_mlx Trainer, {'ternary G=' + str(args.group) if ternary else 'float'}, "
                            f"{optimizer}, mx.compile'd step")

    def setup(self):
        import mlx.core as mx
        from ternary_mlx.model import Model
        from ternary_mlx.train import Trainer
        self.mx = mx
        self.trainer = Trainer(self.cfg, Model(self.cfg, seed=0))

    def step(self, i):
        tr = self.trainer
        h = tr.step(self.windows, i)
        (loss, gn), = tr.fetch([h])
        self.mx.eval(tr.model.state, tr.opt.state)  # the whole update, not only the loss
        return loss, gn


class OursTorch(Row):
    def __init__(self, name, args, windows, ternary, optimizer):
        self.name, self.args, self.windows = name, args, windows
        self.cfg = run_config(args, ternary, optimizer)
        self.description = (f"ternary_cuda Trainer on {args.torch_device}, "
                            f"{'ternary G=' + str(args.group) if ternary else 'float'}, {optimizer}, eager")

    def setup(self):
        import torch
        from ternary_cuda.model import Model
        from ternary_cuda.train import Trainer
        self.torch = torch
        self.trainer = Trainer(self.cfg, Model(self.cfg, seed=0, device=self.args.torch_device))

    def step(self, i):
        h = self.trainer.step(self.windows, i)
        (loss, gn), = self.trainer.fetch([h])
        if self.args.torch_device.startswith("cuda"):
            self.torch.cuda.synchronize()
        return loss, gn


class PeerMLXLM(Row):
    def __init__(self, name, args, windows):
        self.name, self.args, self.windows = name, args, windows
        self.cfg = run_config(args, False, "adamw")
        clip = f", optim.clip_grad_norm({args.peer_clip})" if args.peer_clip else ""
        self.description = ("mlx_lm.models.qwen3.Model (tied) + mlx.optimizers.AdamW(bias_correction=True)"
                            f"{clip}, mx.compile(inputs=state, outputs=state) over nn.value_and_grad "
                            "(mlx_lm/tuner/trainer.py idiom), mean cross-entropy")

    def setup(self):
        from functools import partial

        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx_lm.models.qwen3 import Model, ModelArgs

        from shared.spec.init import init_weights
        a, m, t = self.args, self.cfg.model, self.cfg.train
        self.mx = mx
        model = Model(ModelArgs(
            model_type="qwen3", hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
            intermediate_size=m.intermediate_size, num_attention_heads=m.num_attention_heads,
            rms_norm_eps=m.rms_norm_eps, vocab_size=m.vocab_size, num_key_value_heads=m.num_key_value_heads,
            max_position_embeddings=m.max_position_embeddings, head_dim=m.head_dim, tie_word_embeddings=True,
            rope_theta=m.rope_theta))
        model.load_weights([(k, mx.array(v)) for k, v in init_weights(m, 0).items()], strict=True)
        mx.eval(model.parameters())
        model.train()
        opt = optim.AdamW(learning_rate=t.lr, betas=[t.beta1, t.beta2], eps=t.adam_eps,
                          weight_decay=t.weight_decay, bias_correction=True)

        def loss_fn(model, x, y):
            return nn.losses.cross_entropy(model(x), y, reduction="mean")

        loss_value_and_grad = nn.value_and_grad(model, loss_fn)
        state = [model.state, opt.state, mx.random.state]
        clip = a.peer_clip

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x, y):
            loss, grads = loss_value_and_grad(model, x, y)
            if clip:
                grads, gnorm = optim.clip_grad_norm(grads, clip)
            else:
                gnorm = mx.array(0.0)
            opt.update(model, grads)
            return loss, gnorm

        self.model, self.state, self._step = model, state, step  # model: bench/profile_mlx_step.py

    def step(self, i):
        mx = self.mx
        w = self.windows.reshape(-1, self.windows.shape[-1])
        loss, gn = self._step(mx.array(w[:, :-1]), mx.array(w[:, 1:]))
        mx.eval(self.state, loss, gn)
        return loss.item(), gn.item()


class PeerTransformers(Row):
    def __init__(self, name, args, windows):
        self.name, self.args, self.windows = name, args, windows
        self.cfg = run_config(args, False, "adamw")
        clip = f", clip_grad_norm_({args.peer_clip})" if args.peer_clip else ""
        self.description = ("transformers Qwen3ForCausalLM (float32, attn_implementation='sdpa', tied) + "
                            f"torch.optim.AdamW (default implementation){clip}, F.cross_entropy on .logits, "
                            f"eager, on {args.torch_device}")

    def setup(self):
        import torch
        import torch.nn.functional as F
        import transformers

        from shared.spec.init import init_weights
        a, m, t = self.args, self.cfg.model, self.cfg.train
        self.torch, self.F = torch, F
        hf = transformers.Qwen3Config(
            vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
            max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.rms_norm_eps,
            rope_theta=m.rope_theta, tie_word_embeddings=True, attention_dropout=0.0)
        hf._attn_implementation = "sdpa"
        model = transformers.Qwen3ForCausalLM(hf).to(dtype=torch.float32, device=a.torch_device)
        state = {k: torch.from_numpy(v) for k, v in init_weights(m, 0).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to model.embed_tokens.weight
        if missing or unexpected:
            raise RuntimeError(f"transformers weights: missing {missing}, unexpected {unexpected}")
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "head not tied"
        model.train()
        self.model = model
        self.extra = {"attn_implementation": model.config._attn_implementation}
        self.opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps,
                                     weight_decay=t.weight_decay)
        self.params = [p for p in model.parameters()]
        self.extra["adamw_impl"] = ("fused" if self.opt.defaults.get("fused") else
                                    "foreach" if self.opt.defaults.get("foreach") else
                                    "default (foreach=None: for-loop on CPU, foreach on CUDA)")

    def step(self, i):
        torch = self.torch
        w = self.windows.reshape(-1, self.windows.shape[-1]).astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(w[:, :-1])).to(self.args.torch_device)
        y = torch.from_numpy(np.ascontiguousarray(w[:, 1:])).to(self.args.torch_device)
        logits = self.model(input_ids=x).logits
        loss = self.F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        gn = (torch.nn.utils.clip_grad_norm_(self.params, self.args.peer_clip) if self.args.peer_clip
              else torch.zeros(()))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item(), float(gn)


def make_rows(args, windows) -> list[Row]:
    makers = {
        "ours_mlx_ternary_adamw": lambda n: OursMLX(n, args, windows, True, "adamw"),
        "ours_mlx_float_adamw": lambda n: OursMLX(n, args, windows, False, "adamw"),
        "ours_torch_ternary_adamw": lambda n: OursTorch(n, args, windows, True, "adamw"),
        "ours_torch_float_adamw": lambda n: OursTorch(n, args, windows, False, "adamw"),
        "peer_mlx_lm": lambda n: PeerMLXLM(n, args, windows),
        "peer_transformers": lambda n: PeerTransformers(n, args, windows),
        "ours_mlx_ternary_muon": lambda n: OursMLX(n, args, windows, True, "muon"),
        "ours_torch_ternary_muon": lambda n: OursTorch(n, args, windows, True, "muon"),
    }
    return [makers[n](n) for n in args.rows]


# ---- workers: one process per framework --------------------------------------------------------
# MLX wants Debian's OpenBLAS preloaded; torch (MKL + OpenMP) runs as the CLI runs it, without it
# (with it and 2 threads, a torch step measured 17 s against 0.6-9 s without, on the loaded machine).
# So each framework runs in its own worker process with its own environment.
def backend_of(row: str) -> str:
    return "mlx" if row.startswith("ours_mlx") or row == "peer_mlx_lm" else "torch"


def worker_info(kind: str) -> dict:
    info = {"pid": os.getpid(), "ld_preload": os.environ.get("LD_PRELOAD"),
            "openblas_libraries_mapped": [],
            "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                           if k in os.environ}}
    if kind == "mlx":
        import mlx.core as mx
        info["mlx_version"] = mx.__version__
        try:
            import mlx_lm
            info["mlx_lm_version"] = mlx_lm.__version__
        except Exception as e:  # noqa: BLE001
            info["mlx_lm_version"] = f"unavailable: {e!r}"
        info["mlx_matmul_512_gflops"] = mlx_matmul_gflops()
    else:
        import torch
        info["torch_version"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
        try:
            import transformers
            info["transformers_version"] = transformers.__version__
        except Exception as e:  # noqa: BLE001
            info["transformers_version"] = f"unavailable: {e!r}"
        info["torch_matmul_512_gflops"] = torch_matmul_gflops()
    info["openblas_libraries_mapped"] = blas_libraries()
    info["openblas_preload_active"] = bool(info["openblas_libraries_mapped"])
    return info


def worker_main(args) -> int:
    """Serve JSON-line commands from the parent on stdin; answers on the original stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    kind = args.worker
    if kind == "torch" and args.threads:
        import torch
        torch.set_num_threads(args.threads)
    windows = make_windows(args)
    rows = {r.name: r for r in make_rows(args, windows) if backend_of(r.name) == kind}
    step_no = dict.fromkeys(rows, 0)
    reply.write(json.dumps({"info": worker_info(kind)}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        r = rows[cmd["row"]]
        try:
            if cmd["cmd"] == "setup":
                t0 = time.perf_counter()
                r.setup()
                t1 = time.perf_counter()
                first = None
                for _ in range(cmd["warmup"]):
                    out = r.step(step_no[r.name])
                    step_no[r.name] += 1
                    first = first or out
                ans = {"setup_s": round(t1 - t0, 3), "warmup_s": round(time.perf_counter() - t1, 3),
                       "first_step_loss": round(first[0], 6) if first else None,
                       "first_step_grad_norm": round(first[1], 6) if first else None}
                ans.update(getattr(r, "extra", {}))
            else:  # run
                for _ in range(cmd["untimed"]):
                    r.step(step_no[r.name])
                    step_no[r.name] += 1
                wall, cpu, loss = [], [], None
                for _ in range(cmd["timed"]):
                    t, c = time.perf_counter(), time.process_time()
                    loss, _ = r.step(step_no[r.name])
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
                    step_no[r.name] += 1
                    if not math.isfinite(loss):
                        raise RuntimeError(f"non-finite loss {loss} at step {step_no[r.name]}")
                ans = {"wall": wall, "cpu": cpu, "last_loss": loss}
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            ans = {"error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(ans) + "\n")
    return 0


class Worker:
    def __init__(self, kind: str, argv: list[str], args):
        env = dict(os.environ)
        pre = [p for p in env.get("LD_PRELOAD", "").split() if "openblas" not in p]
        if kind == "mlx" and args.mlx_preload and os.path.exists(args.mlx_preload):
            pre.insert(0, args.mlx_preload)
        elif kind == "torch" and args.torch_preload and os.path.exists(args.torch_preload):
            pre.insert(0, args.torch_preload)
        if pre:
            env["LD_PRELOAD"] = " ".join(pre)
        else:
            env.pop("LD_PRELOAD", None)
        if args.threads:
            env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--worker", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env=env, cwd=str(ROOT))
        self.info = self._read()["info"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker exited (code {self.proc.wait()}); see stderr")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        ans = self._read()
        if "error" in ans:
            raise RuntimeError(f"{self.kind} worker, {cmd}: {ans['error']}")
        return ans

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=60)


def make_windows(args) -> np.ndarray:
    return np.random.default_rng(args.seed).integers(
        0, args.vocab, (1, args.batch, args.seq + 1), dtype=np.int64).astype(np.int32)


# ---- measurement --------------------------------------------------------------------------------
def measure(workers: dict[str, Worker], args) -> tuple[dict[str, dict], list[float]]:
    res: dict[str, dict] = {}
    wall = {r: [] for r in args.rows}
    cpu = {r: [] for r in args.rows}
    for r in args.rows:
        res[r] = workers[backend_of(r)].ask(cmd="setup", row=r, warmup=args.warmup)
        log(f"[setup] {r}: setup {res[r]['setup_s']:.2f}s, warm-up {args.warmup} steps {res[r]['warmup_s']:.2f}s")
    loads = [round(os.getloadavg()[0], 2)]
    chunks = [args.steps // args.rounds + (1 if k < args.steps % args.rounds else 0) for k in range(args.rounds)]
    for k, n in enumerate(chunks):
        for r in (args.rows if k % 2 == 0 else args.rows[::-1]):
            ans = workers[backend_of(r)].ask(cmd="run", row=r, untimed=0, timed=n)
            wall[r] += ans["wall"]
            cpu[r] += ans["cpu"]
            res[r]["last_loss"] = round(ans["last_loss"], 6)
        loads.append(round(os.getloadavg()[0], 2))
        log(f"[round {k + 1}/{args.rounds}] median ms/step so far: "
            + ", ".join(f"{r} {1e3 * statistics.median(wall[r]):.0f}" for r in args.rows))
    tokens = args.batch * args.seq
    for r in args.rows:
        ts = wall[r]
        med = statistics.median(ts)
        res[r].update({
            "tokens_per_s": round(tokens / med, 1),
            "ms_per_step": round(1e3 * med, 2),
            "ms_per_step_min": round(1e3 * min(ts), 2),
            "ms_per_step_iqr": round(1e3 * float(np.percentile(ts, 75) - np.percentile(ts, 25)), 2),
            "tokens_per_s_at_min": round(tokens / min(ts), 1),
            "cpu_ms_per_step": round(1e3 * statistics.median(cpu[r]), 2),
            "step_ms": [round(1e3 * t, 1) for t in ts],
        })
    return res, loads


def derive(res: dict[str, dict], key: str = "tokens_per_s") -> dict:
    """Ratios from `key` (tokens/s; for 'cpu_ms_per_step', tokens per CPU-second)."""
    def tps(name):
        if name not in res:
            return None
        return 1e3 / res[name][key] if key == "cpu_ms_per_step" else res[name][key]

    out: dict = {"ternary_overhead_pct": {}, "ours_vs_peer": {}, "muon_extra_time_pct": {}}
    peers = {"mlx": "peer_mlx_lm", "torch": "peer_transformers"}
    for b in ("mlx", "torch"):
        tern, flt, muon = tps(f"ours_{b}_ternary_adamw"), tps(f"ours_{b}_float_adamw"), tps(f"ours_{b}_ternary_muon")
        peer = tps(peers[b])
        if tern and flt:
            out["ternary_overhead_pct"][b] = round((flt / tern - 1) * 100, 2)
        vs = {}
        if peer and flt:
            vs["float"] = round(flt / peer, 3)
        if peer and tern:
            vs["ternary"] = round(tern / peer, 3)
        if vs:
            out["ours_vs_peer"][b] = vs
        if tern and muon:
            out["muon_extra_time_pct"][b] = round((tern / muon - 1) * 100, 2)  # Muon vs AdamW, both ternary
    return out


def derive_paired(res: dict[str, dict]) -> dict:
    """Ratios per timed-step index (the i-th steps of two rows ran in the same round, close in
    time), then the median over i: robust to the machine's load drifting during the run."""
    def ratio(a, b):  # tokens/s of a over tokens/s of b = time of b over time of a
        if a not in res or b not in res:
            return None
        return statistics.median(tb / ta for ta, tb in zip(res[a]["step_ms"], res[b]["step_ms"]))

    out: dict = {"ternary_overhead_pct": {}, "ours_vs_peer": {}, "muon_extra_time_pct": {}}
    peers = {"mlx": "peer_mlx_lm", "torch": "peer_transformers"}
    for b in ("mlx", "torch"):
        r = ratio(f"ours_{b}_float_adamw", f"ours_{b}_ternary_adamw")
        if r is not None:
            out["ternary_overhead_pct"][b] = round((r - 1) * 100, 2)
        vs = {}
        for kind in ("float", "ternary"):
            r = ratio(f"ours_{b}_{kind}_adamw", peers[b])
            if r is not None:
                vs[kind] = round(r, 3)
        if vs:
            out["ours_vs_peer"][b] = vs
        r = ratio(f"ours_{b}_ternary_adamw", f"ours_{b}_ternary_muon")
        if r is not None:
            out["muon_extra_time_pct"][b] = round((r - 1) * 100, 2)
    return out


def loss_check(res: dict[str, dict]) -> dict:
    """Ours-float and the peer start from the same weights, see the same batch and run the same
    AdamW at a constant LR: equal first and last losses show that the rows do the same work
    (the last one only when both rows ran the same number of steps; ternary rows differ by design)."""
    out = {}
    for b, peer in (("mlx", "peer_mlx_lm"), ("torch", "peer_transformers")):
        ours = f"ours_{b}_float_adamw"
        if ours in res and peer in res and res[ours]["first_step_loss"] is not None:
            d0 = abs(res[ours]["first_step_loss"] - res[peer]["first_step_loss"])
            d1 = abs(res[ours]["last_loss"] - res[peer]["last_loss"])
            out[b] = {"first_loss_abs_diff": round(d0, 7), "last_loss_abs_diff": round(d1, 7),
                      "same_work": d0 < 1e-4 and d1 < 1e-3}
    return out


def targets(derived: dict) -> dict:
    """Issue 12's goals, per backend: ours (float and ternary) >= 1.3x its peer's tokens/s, and the
    ternary row at most 3 % slower than the float row (overhead <= 3 %)."""
    t = {"ternary_overhead_pct_at_most": TARGET_TERNARY_OVERHEAD_PCT,
         "ours_vs_peer_at_least": TARGET_OURS_VS_PEER, "met": {}}
    for b, v in derived["ternary_overhead_pct"].items():  # from the median step time
        t["met"][f"ternary_overhead_{b}"] = v <= TARGET_TERNARY_OVERHEAD_PCT
    for b, vs in derived["ours_vs_peer"].items():
        for kind, v in vs.items():
            t["met"][f"ours_{kind}_vs_peer_{b}"] = v >= TARGET_OURS_VS_PEER
    t["all_met"] = all(t["met"].values()) if t["met"] else None
    t["note"] = ("met/not met compares the top-level (median) numbers with the targets as they are; on a "
                 "shared machine two runs differ by several percent, so compare paired_median and from_min_step "
                 "and each row's ms_per_step_iqr before reading a miss or a pass of a few percent as real")
    return t


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python bench/train_step.py", allow_abbrev=False,
        description="Training-step throughput of ours (MLX/torch, ternary/float) vs mlx-lm and transformers, "
                    "on one tiny Qwen3-shaped model and one random batch. Prints one JSON object. "
                    "MLX rows run in a worker process with Debian's OpenBLAS preloaded (--mlx-preload), "
                    "torch rows in one without it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row before timing (MLX compiles here)")
    p.add_argument("--rounds", type=int, default=0,
                   help="split the timed steps into this many chunks, visiting the rows in alternating order "
                        "(0 = one timed step per row per round: the finest interleaving)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--group", type=int, default=128, help="ternary group size (0 = per tensor)")
    p.add_argument("--clip", type=float, default=1.0, help="ours: train.grad_clip")
    p.add_argument("--peer-clip", type=float, default=None,
                   help="peers: global grad-norm clip (default: same as --clip; 0 = off)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated subset of: " + ", ".join(ALL_ROWS))
    p.add_argument("--threads", type=int, default=1,
                   help="threads per framework worker (OMP/OpenBLAS/MKL_NUM_THREADS and torch.set_num_threads); "
                        "0 = each framework's default (see the module docstring for why 1 is the default)")
    p.add_argument("--mlx-preload", default=OPENBLAS_PRELOAD,
                   help="library LD_PRELOADed into the MLX worker ('' = none)")
    p.add_argument("--torch-preload", default="",
                   help="library LD_PRELOADed into the torch worker ('' = none, as the CLI runs torch)")
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token batch")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--worker", choices=("mlx", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.rows if r not in ALL_ROWS]
    if bad:
        p.error(f"unknown rows {bad}; valid: {', '.join(ALL_ROWS)}")
    if args.peer_clip is None:
        args.peer_clip = args.clip
    if args.rounds == 0:
        args.rounds = args.steps
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1 or args.rounds > args.steps:
        p.error("need --steps >= 1, --warmup >= 1 and 0 <= --rounds <= --steps")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    t_start = time.perf_counter()
    machine = machine_info()
    workers, res, loads = _measure_in_workers(argv, args)
    _add_worker_info(machine, workers, loads)
    derived = _derived(res)
    out = {
        "benchmark": "train_step",
        "command": " ".join(["python", "bench/train_step.py"] + argv),
        "machine": machine,
        "config": _config_section(args),
        "rows": res,
        "derived": derived,
        "targets": targets(derived),
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(out, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


def _measure_in_workers(argv: list[str], args) -> tuple[dict[str, Worker], dict, list]:
    """One worker process per framework the rows need; (workers, rows' results, load per round)."""
    kinds = sorted({backend_of(r) for r in args.rows})
    workers: dict[str, Worker] = {}
    try:
        for k in kinds:
            workers[k] = Worker(k, argv, args)
        mlx_info = workers["mlx"].info if "mlx" in workers else {}
        if "mlx" in workers and not mlx_info["openblas_preload_active"] and sys.platform.startswith("linux"):
            log(f"warning: the MLX worker has no OpenBLAS; MLX CPU matmuls will be far slower "
                f"(--mlx-preload {OPENBLAS_PRELOAD})")
        res, loads = measure(workers, args)
    finally:
        for w in workers.values():
            w.close()
    return workers, res, loads


def _add_worker_info(machine: dict, workers: dict[str, Worker], loads: list) -> None:
    machine["loadavg_1m_per_round"] = loads
    machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    machine["workers"] = {k: w.info for k, w in workers.items()}
    machine["openblas_preload_active"] = {k: w.info["openblas_preload_active"] for k, w in workers.items()}
    for k, w in workers.items():  # the versions and threads at the top level too
        for key in ("mlx_version", "mlx_lm_version", "torch_version", "transformers_version", "torch_threads"):
            if key in w.info:
                machine[key] = w.info[key]


def _derived(res: dict) -> dict:
    derived = derive(res)
    derived["paired_median"] = derive_paired(res)
    derived["loss_check_ours_float_vs_peer"] = loss_check(res)
    derived["from_min_step"] = derive(res, "tokens_per_s_at_min")
    derived["from_cpu_time"] = derive(res, "cpu_ms_per_step")
    derived["note"] = ("top level: from the median wall time per step (the targets use these); paired_median: "
                       "median over rounds of the per-round time ratio (robust to load drift); from_min_step: "
                       "from the fastest step (least disturbed by other load); from_cpu_time: from process CPU time "
                       "per step (includes BLAS/OpenMP threads spin-waiting; meaningful mostly with --threads 1)")
    return derived


def _config_section(args) -> dict:
    cfg = run_config(args, True, "adamw")
    windows = make_windows(args)
    return {
        "model": {k: v for k, v in cfg.model.__dict__.items() if not k.startswith("_")},
        "ternary": {"group_size": args.group, "targets": cfg.ternary.targets},
        "train": {"batch_size": args.batch, "seq_len": args.seq, "grad_accum": 1, "lr_schedule": "constant",
                  "tokens_per_step": args.batch * args.seq, "lr": cfg.train.lr,
                  "betas": [cfg.train.beta1, cfg.train.beta2], "adam_eps": cfg.train.adam_eps,
                  "weight_decay": cfg.train.weight_decay, "grad_clip_ours": args.clip,
                  "grad_clip_peers": args.peer_clip},
        "timing": {"warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds,
                   "statistic": "median wall time per step; cpu_ms_per_step = process CPU time (all threads)",
                   "sync": "host sync of loss, grad norm and the whole updated state after every timed step",
                   "processes": "MLX rows in one worker (OpenBLAS preloaded), torch rows in another (not)"},
        "threads": args.threads or "framework defaults",
        "threads_note": ("--threads 1 (default): single-threaded workers, stable on a shared 2-core machine; "
                         "with more threads MLX's element-wise work (incl. the ternary projection) does not "
                         "scale with the matmuls, so the MLX ternary overhead grows"),
        "data": f"one random int32 batch (seed {args.seed}) of shape {list(windows.shape)}, reused every step",
        "torch_device": args.torch_device,
    }


if __name__ == "__main__":
    raise SystemExit(main())
