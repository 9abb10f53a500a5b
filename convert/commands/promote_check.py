"""`ternary promote --check`: the promoted config made runnable on this machine's CPU (batch 1, two
steps; shorter windows for speed and, only if RAM is short, a smaller model), then two real steps of
the torch trainer on it, reported as PASS or FAIL."""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from convert.common import CliError

# The check's RAM estimate: fp32 CPU training keeps weights, grads and optimizer state, then the
# checkpoint writer holds NumPy copies of the weights and optimizer state; activations are fp32
# (twice the bf16 planning constant). Use at most this fraction of the RAM available now.
CHECK_RAM_FRACTION = 0.6
# Seconds the check's two steps may take by estimate before it uses shorter windows (never a
# smaller model); keeps `--check` to about half a minute on a laptop CPU. --check-full turns this off.
CHECK_TARGET_S = 20.0


def gb(x: float) -> str:
    """Bytes as GB, for the preflight table (promote.py) and the check's notes."""
    return f"{x / 1e9:.2f} GB"


def available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_ram_bytes(cfg) -> float:
    from shared.train.loop import count_parameters
    from shared.train.promote import ACT_BYTES_PER_HIDDEN, LOGIT_BYTES_PER_VOCAB, optimizer_state_bytes
    n = count_parameters(cfg)[0]
    opt = optimizer_state_bytes(cfg)
    tokens = cfg.train.batch_size * cfg.train.seq_len
    m = cfg.model
    return (2 * (4 * n + opt) + 4 * n + 2 * tokens * m.num_hidden_layers * ACT_BYTES_PER_HIDDEN * m.hidden_size
            + tokens * m.vocab_size * LOGIT_BYTES_PER_VOCAB)


def _shrink_to(run_cfg, fits, what: str) -> tuple[object, str | None]:
    """Halve depth, then step width down, until `fits(cfg)`; None note if nothing was shrunk."""
    from shared.train.promote import WIDTH_STEP, shape_at
    if fits(run_cfg):
        return run_cfg, None
    m = run_cfg.model
    width, depth, cfg = m.hidden_size, m.num_hidden_layers, run_cfg
    while not fits(cfg):
        if depth > 1:
            depth = max(1, depth // 2)
        else:
            smaller = [w for w in range(WIDTH_STEP, width, WIDTH_STEP) if shape_at(run_cfg, w, 1) is not None]
            if not smaller:
                raise CliError(f"--check: even 1 layer at width {width} does not fit ({what})")
            width = smaller[-1]
        cfg = shape_at(run_cfg, width, depth).with_overrides([])  # validated
    return cfg, (f"MODEL SHRUNK ({what}): checking {depth} layers x {width} instead of the promoted "
                 f"{m.num_hidden_layers} x {m.hidden_size}; every other setting is the promoted one")


def cpu_speed() -> tuple[float, float]:
    """(matmul FLOP/s, seconds per element of one elementwise op) of torch on this CPU, measured now."""
    import torch
    a, b = torch.randn(256, 768), torch.randn(768, 768)
    x, y = torch.randn(1 << 22), torch.randn(1 << 22)
    a @ b, x * y  # warm-up
    rates = []
    for fn, work in ((lambda: a @ b, 2 * 256 * 768 * 768), (lambda: x * y, 1 << 22)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.15:
            fn()
            n += 1
        rates.append(n * work / (time.perf_counter() - t0))
    return rates[0], 1 / rates[1]


def check_step_seconds(cfg, flops: float, s_per_elem: float) -> float:
    """Estimated seconds of one CPU training step at batch 1: matmuls (6N per token, x1.5 for the
    less efficient shapes) + ~30 elementwise passes over every parameter (ternary projection forward
    and backward, AdamW, clipping; counted from a torch profile of this trainer)."""
    from shared.train.loop import count_parameters
    from shared.train.promote import flops_per_token
    fpt, _ = flops_per_token(cfg, cfg.train.seq_len)
    return 1.5 * fpt * cfg.train.seq_len / flops + 30 * count_parameters(cfg)[0] * s_per_elem


def check_config(cfg, full: bool = False) -> tuple[object, list[str]]:
    """The promoted config made runnable here: what was changed, one line each."""
    from shared.data.tokenizers import BUILTIN_TOKENIZERS
    from shared.spec.config import TrainConfig
    import dataclasses
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    t = cfg.train
    sets = ["train.steps=2", "train.batch_size=1", "train.grad_accum=1", "train.eval_every=0",
            "train.log_every=1", "train.checkpoint_every=0", "train.time_budget_s=none", "train.patience=none"]
    notes = [f"batch {t.batch_size} x {t.grad_accum} accum -> 1 x 1, 2 steps, evaluation on one window"]
    for key, value in (("compile", "false"), ("precision", "float32"), ("tf32", "false")):
        if key in fields:
            sets.append(f"train.{key}={value}")
            notes.append(f"train.{key}={value} (CPU)")
    d = cfg.data
    if d.source != "synthetic" and not Path(d.source).is_dir():
        sets.append("data.source=synthetic")
        notes.append(f"data.source {d.source} does not exist here: the check trains on the synthetic corpus")
        if d.tokenizer not in BUILTIN_TOKENIZERS and not Path(d.tokenizer).exists():
            tok = "synthetic-bpe-512" if cfg.model.vocab_size >= 512 else "bytes"
            sets.append(f"data.tokenizer={tok}")
            notes.append(f"data.tokenizer {d.tokenizer} does not exist here: the check uses {tok}")
    run_cfg = cfg.with_overrides(sets)
    # 1. RAM: a model that cannot be held here is shrunk (depth first), and the output says so.
    avail = available_ram() * CHECK_RAM_FRACTION
    full_ram = check_ram_bytes(run_cfg)
    run_cfg, note = _shrink_to(run_cfg, lambda c: check_ram_bytes(c) <= avail,
                               f"the full model needs ~{gb(full_ram)} of RAM for a CPU step, "
                               f"{gb(avail)} is available")
    notes += [note] if note else []
    # 2. Time: shorter windows (down to 64 tokens); the model itself is never shrunk for speed.
    if not full:
        flops, s_elem = cpu_speed()
        est = lambda c: 2 * check_step_seconds(c, flops, s_elem)  # noqa: E731
        seq = run_cfg.train.seq_len
        full_s = est(run_cfg)
        while seq > 64 and est(run_cfg.with_overrides([f"train.seq_len={seq}"])) > CHECK_TARGET_S:
            seq //= 2
        if seq != run_cfg.train.seq_len:
            notes.append(f"seq_len {run_cfg.train.seq_len} -> {seq} for speed: 2 steps at the full window would "
                         f"take ~{full_s:.0f} s on this CPU (measured {flops / 1e9:.0f} GFLOP/s matmul), "
                         f"~{est(run_cfg.with_overrides([f'train.seq_len={seq}'])):.0f} s at {seq}; the model and "
                         "every shape in it are the promoted ones (--check-full keeps the window)")
            run_cfg = run_cfg.with_overrides([f"train.seq_len={seq}"])
        else:
            notes.append(f"seq_len {seq} kept (2 steps estimated at ~{full_s:.0f} s on this CPU)")
    run_cfg = run_cfg.with_overrides([f"train.eval_tokens={run_cfg.train.seq_len}"])
    return run_cfg, notes


def run_check(out: Path, full: bool = False) -> bool:
    """Validate the written TOML, then two real torch steps on CPU; prints PASS or FAIL."""
    from shared.spec.config import RunConfig
    cfg = RunConfig.load_toml(out)  # what torchrun will read, through validation
    print(f"check: {out} loads and validates; running 2 steps of the torch trainer on CPU")
    import torch
    threads = torch.get_num_threads()
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load > cores and threads > 1:
        # On an oversubscribed machine torch's OpenMP threads spin-wait for cores: a 2-step check
        # measured ~5x slower with 2 threads than with 1 at load 11 on 2 cores.
        torch.set_num_threads(1)
        print(f"check:   this machine is busy (load {load:.1f} on {cores} cores): torch runs on 1 thread")
    try:
        return _run_check(cfg, full)
    finally:
        torch.set_num_threads(threads)


def _run_check(cfg, full: bool) -> bool:
    import json

    run_cfg, notes = check_config(cfg, full)
    for n in notes:
        print(f"check:   {n}")
    from convert.backends import load_backend
    from shared.train.runner import train
    backend = load_backend("torch")
    lines: list[str] = []
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="ternary-promote-check-") as tmp:
            result, summary = train(run_cfg, backend, Path(tmp) / "run", log=lines.append, progress=False)
            records = [json.loads(s) for s in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in records if "eval" not in r]
    except Exception as e:  # the point of the check: report any failure, with its message
        for s in lines:
            print(f"check | {s}")
        print(f"check: FAIL after {time.perf_counter() - t0:.1f} s: {type(e).__name__}: {e}")
        return False
    for s in lines:
        if s.strip():
            print(f"check | {s}")
    limit = math.log(run_cfg.model.vocab_size) + 1
    problems = []
    if result.step != 2:
        problems.append(f"stopped at step {result.step} ({result.stopped_because}), expected 2")
    if not losses or not all(math.isfinite(x) for x in losses):
        problems.append(f"losses {losses} are not all finite")
    elif losses[0] > limit:
        problems.append(f"initial loss {losses[0]:.3f} is above ln(vocab) + 1 = {limit:.3f} (SEEDS S1)")
    took = time.perf_counter() - t0
    if problems:
        print(f"check: FAIL after {took:.1f} s: " + "; ".join(problems))
        return False
    print(f"check: PASS in {took:.1f} s: 2 steps, losses {', '.join(f'{x:.4f}' for x in losses)} "
          f"(ln vocab = {math.log(run_cfg.model.vocab_size):.3f}), val_bpb {summary['val_bpb']:.4f}; "
          "its temporary run directory is removed")
    return True
