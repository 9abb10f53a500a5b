"""The peer of bench/qwen_memory.py: mlx-lm's full fine-tune (`mlx_lm lora --fine-tune-type full`)
of the same Qwen3-0.6B-shaped model, at batch 1 x seq, under `/usr/bin/time -v`.

The model directory is a random transformers Qwen3ForCausalLM with Qwen/Qwen3-0.6B's published
config.json, saved in bfloat16 as that checkpoint is, and a small byte-level BPE tokenizer (any
tokenizer will do: the ids only need to lie inside the 151,936 rows); the data is a few jsonl
texts longer than seq tokens, so every batch is exactly 1 x seq after mlx-lm's truncation.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

QWEN3_06B_CONFIG = {  # Qwen/Qwen3-0.6B config.json, as published
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
MARKER = ".written-by-qwen-mlx-lm"  # a directory this script made, so it may reuse it


def _text(n_words: int, seed: int) -> str:
    import numpy as np
    words = "the of a ternary model weight layer token memory step teacher student batch loss".split()
    return " ".join(np.random.default_rng(seed).choice(words, n_words))


def write_model_dir(out: Path) -> Path:
    """The random Qwen3-0.6B directory (reused when this script wrote it before)."""
    if (out / MARKER).exists():
        return out
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"qwen_mlx_lm: error: {out} exists and was not written by this script; choose another")
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    torch.manual_seed(0)
    config = transformers.Qwen3Config(**{k: v for k, v in QWEN3_06B_CONFIG.items() if k != "architectures"})
    model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([_text(20_000, 1)], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    (out / MARKER).write_text("")
    return out


def write_data(out: Path, seq: int) -> Path:
    """train.jsonl / valid.jsonl: texts of about 3 x seq words, cut to seq tokens by mlx-lm."""
    out.mkdir(parents=True, exist_ok=True)
    for name, seeds in (("train", range(8)), ("valid", range(100, 102))):
        lines = [json.dumps({"text": _text(3 * seq, s)}) for s in seeds]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return out


def run(model_dir: Path, seq: int, iters: int, threads: int, grad_checkpoint: bool = False) -> dict:
    """One `mlx_lm lora --fine-tune-type full` run: peak RSS (GiB), mlx-lm's own peak and tokens/s."""
    with tempfile.TemporaryDirectory() as work:
        data = write_data(Path(work) / "data", seq)
        args = [sys.executable, str(Path(__file__).resolve()), "--model", str(model_dir), "--train", "--data", str(data),
                "--fine-tune-type", "full", "--num-layers", "-1", "--optimizer", "adamw", "--batch-size", "1", "--iters", str(iters),
                "--max-seq-length", str(seq), "--steps-per-report", "1", "--steps-per-eval", "100000",
                "--val-batches", "1", "--save-every", "100000", "--adapter-path", str(Path(work) / "adapters")]
        args += ["--grad-checkpoint"] if grad_checkpoint else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        blas = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
        if blas.exists():  # as bench/qwen_memory.py runs our MLX cases
            env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), str(blas)]))
        proc = subprocess.run(["/usr/bin/time", "-v", *args], env=env, capture_output=True, text=True)
    case = {"backend": "mlx-lm", "command": "mlx_lm lora --fine-tune-type full --num-layers -1 --optimizer adamw --batch-size 1 "
            f"--max-seq-length {seq} --iters {iters}" + (" --grad-checkpoint" if grad_checkpoint else ""),
            "weights_dtype": "bfloat16"}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    case["peak_rss_gib"] = round(int(rss.group(1)) / 2 ** 20, 3) if rss else None
    reports = [json.loads(ln[len("REPORT "):]) for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    case["reports"] = [{"iter": r["iteration"], "loss": round(r["train_loss"], 4),
                        "tokens_per_s": round(r["tokens_per_second"], 2), "mlx_peak_memory_gb": round(r["peak_memory"], 3)}
                       for r in reports]
    if reports:
        case["tokens_per_s"] = case["reports"][-1]["tokens_per_s"]  # after the first iteration's warm-up
    if proc.returncode or not reports:
        case["error"] = ((proc.stdout + proc.stderr).strip().splitlines() or ["?"])[-25:]
    return case


def lora_main() -> None:
    """`mlx_lm lora` with these arguments, its training reports printed as JSON lines (its own
    callback hook) instead of parsed from its console table."""
    import mlx_lm.lora as lora
    from mlx_lm.tuner.callbacks import TrainingCallback

    class Report(TrainingCallback):
        def on_train_loss_report(self, train_info: dict):
            print("REPORT " + json.dumps(train_info), flush=True)

    lora.get_reporting_callbacks = lambda *args, **kwargs: Report()  # run() takes its callback from there
    sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
    lora.main()


if __name__ == "__main__":
    lora_main()
