"""`ternary demo`: a forward pass on random tokens in MLX and/or torch, checking the loss at
initialisation, the ternary codes against the NumPy reference, and (with both) the logits' parity."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from convert import runtime
from convert.backends import NAMES
from convert.common import (CliError, config_sizes, counts, describe, human, non_negative_float, resolve,
                            source_args, sub, threads_arg)


def _loss(logits, ids) -> float:
    """Mean next-token cross-entropy (nats) in float64, one batch row at a time."""
    import numpy as np
    total = 0.0
    for z, t in zip(logits, ids):
        z = z[:-1].astype(np.float64)
        m = z.max(axis=-1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=-1))
        total += float((lse - z[np.arange(len(t) - 1), t[1:]]).sum())
    return total / (ids.shape[0] * (ids.shape[1] - 1))


@dataclass
class _Backend:
    """One backend's model, seen the same way by the demo."""
    info: str                              # framework version and device
    forward: Callable[[], Any]             # one forward pass on the demo's ids, finished
    to_numpy: Callable[[Any], Any]         # logits -> float32 NumPy
    params: dict[str, Any]                 # canonical name -> the backend's own tensor
    codes: Callable[[Any], Any]            # the backend's ternarize on one of its tensors -> int8 NumPy


def _demo_backend(backend, cfg, weights, ids) -> _Backend:
    model = backend.new_model(cfg, weights)
    threads = f", {backend.cpu_threads} threads" if backend.cpu_threads else ""
    return _Backend(backend.describe() + threads, backend.forward_fn(model, ids), backend.to_numpy,
                    backend.parameters(model),
                    lambda w: backend.ternary_codes(w, cfg.ternary.group_size, cfg.ternary.eps))


def _check_memory(n_params: int, n_backends: int, logits_elems: int) -> None:
    """Refuse up front what would be killed for memory half-way: the weights live in NumPy and in
    one backend at a time (plus the int8 reference codes); logits in NumPy and in each backend."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return
    need = 4 * (2.25 * n_params + (2 + n_backends) * logits_elems)
    if need > 0.8 * ram:
        raise CliError(f"this demo needs about {need / 2**30:.1f} GiB of memory (float32 weights and "
                       f"logits); this machine has {ram / 2**30:.1f} GiB: use a smaller preset, "
                       "--batch or --seq-len")


def run(args) -> int:
    import numpy as np
    from shared.spec.init import init_weights
    from shared.spec.params import ternary_parameters
    from shared.spec.ternary import quantize

    cfg, source, weights = resolve(args)
    m, t = cfg.model, cfg.ternary
    batch = args.batch
    seq = args.seq_len or min(cfg.train.seq_len, m.max_position_embeddings)
    if batch < 1 or not 2 <= seq <= m.max_position_embeddings:
        raise CliError(f"--batch must be >= 1 and --seq-len in [2, {m.max_position_embeddings}] "
                       f"(model.max_position_embeddings); got {batch} and {seq}")
    backends = list(NAMES) if args.backend == "both" else [args.backend]
    _check_memory(sum(config_sizes(cfg).values()), len(backends), batch * seq * m.vocab_size)

    loaded = {name: runtime.start(args.runtime, name) for name in backends}  # a first line per backend
    print(f"ternary demo: {source}: {describe(cfg)}")
    print(f"input: {batch} x {seq} random token ids (seed {cfg.train.seed}); a parity check of the "
          "backends (training is `ternary train`)")
    if weights is None:
        weights = init_weights(m, cfg.train.seed)
    ids = np.random.default_rng(cfg.train.seed).integers(0, m.vocab_size, (batch, seq), dtype=np.int64)
    reference = {n: quantize(weights[n], t.group_size, t.eps)[0] for n in ternary_parameters(cfg)}
    failures, logits = [], {}
    for name in backends:
        logits[name] = _demo_one(name, loaded[name], cfg, weights, ids, reference, failures)
    if len(backends) == 2:
        _compare_backends(*backends, logits, t, args.tolerance, failures)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    print("result: " + ("FAILED" if failures else "ok"))
    return 1 if failures else 0


def _demo_one(name: str, backend, cfg, weights, ids, reference: dict, failures: list[str]):
    """Time two forward passes of one backend and check its loss and ternary codes (a failure is
    appended to `failures`); its logits as NumPy."""
    import numpy as np
    names = list(reference)
    ln_v = math.log(cfg.model.vocab_size)
    b = _demo_backend(backend, cfg, weights, ids)
    t0 = time.perf_counter()
    b.forward()  # warm-up
    t1 = time.perf_counter()
    out = b.forward()
    t2 = time.perf_counter()
    logits, info = b.to_numpy(out), b.info
    total, tern = counts(cfg, {n: math.prod(p.shape) for n, p in b.params.items()})
    bad = [n for n in names if not np.array_equal(b.codes(b.params[n]), reference[n])]
    del b, out  # free this backend's model before the next one is built
    loss = _loss(logits, ids)
    flag = "ok" if loss <= ln_v + 1 else "RED FLAG"
    print(f"{name:<5} ({info}): {human(total)} parameters ({human(tern)} ternary); "
          f"loss {loss:.4f} vs ln(vocab) {ln_v:.4f} {flag}; forward {1e3 * (t2 - t1):.1f} ms "
          f"(first call {1e3 * (t1 - t0):.1f} ms)")
    print(f"{'':<5} ternary codes: {len(names) - len(bad)}/{len(names)} ternary weights "
          "bit-identical to the NumPy reference" + (f"; differ: {', '.join(bad[:5])}" if bad else ""))
    if loss > ln_v + 1:
        failures.append(f"{name}: loss {loss:.4f} at initialisation is above ln(vocab) + 1 = "
                        f"{ln_v + 1:.4f} (SEEDS S1: missing residuals look like this)")
    if bad:
        failures.append(f"{name}: ternary codes of {len(bad)} weight(s) differ from the NumPy reference")
    return logits


def _compare_backends(first: str, second: str, logits: dict, t, tolerance: float, failures: list[str]) -> None:
    """The largest logit difference between the two backends, checked unless activations are quantized."""
    import numpy as np
    diff = float(np.abs(logits[first] - logits[second]).max())
    if t.enabled and t.activation_bits:
        print(f"{first} vs {second}: max |logit difference| {diff:.3g} (not checked: with "
              f"{t.activation_bits}-bit activations, rounding to the activation grid amplifies "
              "float32 ulp differences between the backends)")
    else:
        ok = diff <= tolerance
        print(f"{first} vs {second}: max |logit difference| {diff:.3g} "
              f"({'within' if ok else 'ABOVE'} tolerance {tolerance:g})")
        if not ok:
            failures.append(f"backends disagree: max |logit difference| {diff:.3g} > {tolerance:g}")


def register(subs) -> None:
    d = sub(subs, "demo", "Forward pass on random tokens in MLX and/or torch: loss, speed, parity.",
            "  ternary demo --preset smoke\n"
            "  ternary demo --ckpt runs/smoke-init --backend both\n"
            "  ternary demo --preset pg-ternary --backend mlx --batch 1 --seq-len 256\n"
            "  ternary demo --set model.num_hidden_layers=2 ternary.activation_bits=8\n\n"
            "Exits 1 if the loss at initialisation is above ln(vocab) + 1 or, with both\n"
            "backends, their logits differ by more than --tolerance.", run)
    source_args(d, ckpt=True)
    d.add_argument("--backend", choices=(*runtime.CHOICES, "both"), default="both",
                   help="which backend(s) to run (default: both, compared with each other; auto: MLX on "
                        "Apple silicon, torch elsewhere)")
    threads_arg(d)
    d.add_argument("--seq-len", type=int, metavar="N", help="tokens per row (default: train.seq_len)")
    d.add_argument("--batch", type=int, default=2, metavar="N", help="rows (default: 2)")
    d.add_argument("--seed", type=int, metavar="N",
                   help="seed of the token ids and, without --ckpt, the weights (default: train.seed)")
    d.add_argument("--tolerance", type=non_negative_float, default=1e-4, metavar="X",
                   help="largest allowed |logit difference| between the backends (default: 1e-4)")
