"""One rank of tests/distributed/test_eval_sharded.py (also a timing tool): build a Trainer on a
seeded model and evaluate it through Trainer.evaluate, the path training takes.

    torchrun --standalone --nproc_per_node=2 -m tests.distributed.eval_sharded_worker torch OUT --modes ddp,fsdp2 --set ...
    mlx.launch --backend ring -n 2 -- python -m tests.distributed.eval_sharded_worker mlx OUT --set ...
    python -m tests.distributed.eval_sharded_worker mlx OUT --preset smoke --repeat 3     # one process

writes OUT/<backend>-rank<r>.json: per mode, the metrics, the (batch, length) shape of every
forward call this rank made (token_nll is counted where the evaluation looks it up) and the
evaluation time of each repeat.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from shared.spec.config import RunConfig
from shared.data.dataset import load_token_dataset
from shared.spec.presets import get_preset
from shared.data.tokenizers import get_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backend", choices=["torch", "mlx"])
    p.add_argument("out", type=Path)
    p.add_argument("--preset")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--modes", default="ddp", help="torch: train.parallel values, comma-separated")
    p.add_argument("--max-tokens", type=int, help="default: train.eval_tokens")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    base = get_preset(args.preset) if args.preset else RunConfig()
    pkg = "ternary_mlx" if args.backend == "mlx" else "ternary_cuda"
    parallel = importlib.import_module(f"{pkg}.parallel")
    evaluate = importlib.import_module(f"{pkg}.evaluate")
    model_mod = importlib.import_module(f"{pkg}.model")
    train_mod = importlib.import_module(f"{pkg}.train")
    rank, world = parallel.setup()
    calls: list[list[int]] = []
    token_nll = evaluate.token_nll

    def counted(model, inputs, targets, *temperature):
        calls.append(list(inputs.shape))
        return token_nll(model, inputs, targets, *temperature)

    evaluate.token_nll = counted  # evaluate()'s lambda looks the name up at call time
    results = {}
    try:
        for mode in (args.modes.split(",") if args.backend == "torch" else ["ring"]):
            cfg = base.with_overrides(list(args.set) + ([f"train.parallel={mode}"] if args.backend == "torch" else []))
            tok = get_tokenizer(cfg.data.tokenizer)
            val = load_token_dataset(cfg.data.source, tok, synthetic_train_bytes=cfg.data.synthetic_train_bytes,
                                     synthetic_val_bytes=cfg.data.synthetic_val_bytes, seed=cfg.data.seed).val
            trainer = train_mod.Trainer(cfg, model_mod.Model(cfg, seed=0))
            times = []
            for _ in range(args.repeat):
                calls.clear()
                t0 = time.perf_counter()
                ev = trainer.evaluate(val, tok, args.max_tokens or cfg.train.eval_tokens)
                times.append(time.perf_counter() - t0)
            results[mode] = {"metrics": ev, "calls": list(calls), "eval_s": times}
            if rank == 0:
                print(f"{args.backend} {mode} x{world}: val_loss {ev['val_loss']!r} val_bpb {ev['val_bpb']!r}; "
                      f"eval {', '.join(f'{t:.2f}' for t in times)} s; rank 0 made {len(calls)} forward calls",
                      flush=True)
    finally:
        evaluate.token_nll = token_nll
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.backend}-rank{rank}.json").write_text(json.dumps({"world": world, **results}))
    parallel.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
