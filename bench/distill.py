#!/usr/bin/env python
"""Teacher / ternarized / fine-tuned val_bpb: how much of a float model distillation brings back.

The whole user path, through the `ternary` command line (each step a subprocess, as a user runs it):

  1. `data prepare`   a text file (default: ../shared/data/tinyshakespeare.txt) with the bytes
                      tokenizer into train/val shards (10% held out).
  2. `train`          a small float Qwen3-shaped model on it: the teacher.
  3. `convert --to hf`, then transformers `from_pretrained` + `save_pretrained`: a directory written
                      by transformers, as a model from the hub would be.
  4. `import-hf`      that directory twice: `--no-ternary` (the teacher) and ternary (the student).
  5. `eval`           the teacher, and the ternarized model before any training.
  6. `train --init`   the ternarized model for the same steps, three ways: cross-entropy only;
                      distillation from the teacher (`--teacher`); distillation with SubLN and the
                      lambda warm-up (`model.subln=true ternary.warmup_steps=...`). And a control:
                      the float teacher itself trained on for the same steps, which shows how much
                      of a fine-tune's gain is just more training of a not fully converged teacher.
  7. `eval`           each model on the same held-out tokens, in windows of the training length.

Prints one JSON object: val_bpb of every model, and for each fine-tune the fraction of the
ternarization loss it recovered, (bpb_ternarized - bpb_finetuned) / (bpb_ternarized - bpb_teacher),
also against the control (the teacher trained on for the same steps).

  python bench/distill.py                        # ~20 min on the 2-core dev VM
  python bench/distill.py --teacher-steps 300 --finetune-steps 40 --json-out out.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SEQ_LEN = 128

MODEL = ["model.vocab_size=256", "model.hidden_size=128", "model.intermediate_size=384",
         "model.num_hidden_layers=4", "model.num_attention_heads=4", "model.num_key_value_heads=2",
         "model.head_dim=32", "model.hidden_act=silu", "model.max_position_embeddings=512"]


def cli(*args: str, log: list) -> str:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "convert.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    log.append({"command": "ternary " + " ".join(args), "seconds": round(time.perf_counter() - t0, 1)})
    print(f"[{log[-1]['seconds']:7.1f}s] ternary {' '.join(args)}", file=sys.stderr)
    if p.returncode != 0:
        sys.exit(f"failed: ternary {' '.join(args)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def val_bpb(ckpt: Path, data: Path, max_tokens: int, log: list) -> float:
    # --seq-len: an imported checkpoint's config has the import default (256), not the training length
    out = cli("eval", str(ckpt), "--data", str(data), "--max-tokens", str(max_tokens), "--seq-len", str(SEQ_LEN),
              "--json", log=log)
    return json.loads(out.strip().splitlines()[-1])["val_bpb"]


def transformers_rewrite(src: Path, dst: Path) -> None:
    """Load our HF export with stock transformers and save it again: a transformers-written dir."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(dst)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training/held-out text (UTF-8)")
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--backend", choices=["mlx", "torch"], default="mlx")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="held-out tokens scored per model")
    ap.add_argument("--work", type=Path, help="keep the intermediate files here (default: a temp dir)")
    ap.add_argument("--json-out", type=Path)
    return ap.parse_args()


def main() -> None:
    args = _args()
    if not args.text.exists():
        sys.exit(f"{args.text}: not found; pass --text FILE (any UTF-8 text of ~1 MB)")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ternary-distill-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    t_start = time.perf_counter()
    data = work / "data"
    if not (data / "manifest.json").exists():
        cli("data", "prepare", str(args.text), "--tokenizer", "bytes", "--out", str(data), "--val-fraction", "0.1",
            "--no-bos", log=log)
    runs = _train_all(args, work, data, log)
    bpb = {name: val_bpb(work / name, data, args.eval_tokens, log)
           for name in ("teacher", "teacher_continued", "ternarized", *runs)}
    text = json.dumps(_result(args, bpb, runs, t_start, log), indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()


def _train_all(args: argparse.Namespace, work: Path, data: Path, log: list) -> dict[str, list[str]]:
    """The float teacher, its HF round trip and imports, the continued teacher (control) and the
    ternarized fine-tunes; the fine-tunes' names and extra arguments."""
    run = ["--backend", args.backend, "--no-progress", "--overwrite"]  # a reused --work: its own runs, afresh
    common = [f"data.source={data}", "data.tokenizer=bytes", f"train.seq_len={SEQ_LEN}", "train.batch_size=16",
              "train.eval_every=0", f"train.eval_tokens={args.eval_tokens}", "train.log_every=20"]
    cli("train", *run, "--out", str(work / "teacher-run"), "--set", *MODEL, *common, "ternary.enabled=false",
        f"train.steps={args.teacher_steps}", "train.lr=3e-3", "train.schedule=cosine", "train.warmup_steps=20",
        log=log)
    cli("convert", str(work / "teacher-run"), "--to", "hf", "--out", str(work / "hf-ours"), "--force", log=log)
    transformers_rewrite(work / "hf-ours", work / "hf")
    for name, flag in (("teacher", "--no-ternary"), ("ternarized", "--ternary")):
        cli("import-hf", str(work / "hf"), "--out", str(work / name), flag, "--force", "--set",
            f"data.source={data}", "data.tokenizer=bytes", log=log)
    ft = [f"train.steps={args.finetune_steps}", "train.lr=1e-3", "train.warmup_steps=10", "train.schedule=cosine",
          *common]
    cli("train", *run, "--init", str(work / "teacher"), "--out", str(work / "teacher_continued"), "--set", *ft,
        log=log)
    runs = {
        "finetuned_ce": [],
        "finetuned_distill": ["--teacher", str(work / "teacher")],
        "finetuned_distill_subln_warmup": ["--teacher", str(work / "teacher"), "--set", "model.subln=true",
                                           f"ternary.warmup_steps={max(1, args.finetune_steps // 4)}"],
    }
    for name, extra in runs.items():
        flags, sets = (extra[:2], extra[3:]) if extra else ([], [])
        cli("train", *run, "--init", str(work / "ternarized"), *flags, "--out", str(work / name), "--set", *ft,
            *sets, log=log)
    return runs


def _result(args: argparse.Namespace, bpb: dict[str, float], runs: dict, t_start: float, log: list) -> dict:
    lost = bpb["ternarized"] - bpb["teacher"]
    lost_control = bpb["ternarized"] - bpb["teacher_continued"]
    return {
        "benchmark": "distill",
        "text": str(args.text), "backend": args.backend, "tokenizer": "bytes",
        "model": " ".join(MODEL), "teacher_steps": args.teacher_steps, "finetune_steps": args.finetune_steps,
        "tokens_per_step": 16 * SEQ_LEN, "eval_tokens": args.eval_tokens,
        "val_bpb": {k: round(v, 4) for k, v in bpb.items()},
        "recovered_fraction": {k: round((bpb["ternarized"] - bpb[k]) / lost, 3) if lost > 0 else None
                               for k in runs},
        "recovered_fraction_vs_teacher_continued": {
            k: round((bpb["ternarized"] - bpb[k]) / lost_control, 3) if lost_control > 0 else None for k in runs},
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "steps": log,
    }


if __name__ == "__main__":
    main()
