"""Helpers of bench/pg_step.py: parameter-golf-format shards from a text file, the patched copy of the
peer script, and a parser of the peer's log lines. Pure Python + NumPy (sentencepiece for the data).

Shard format (parameter-golf's data/download_hf_docs_and_tokenize.py, as its loaders read it): a
header of 256 little-endian int32 (magic 20240520, version 1, token count, zeros), then the tokens
as little-endian uint16. Each document is its BOS id followed by its tokens (no EOS); the first
documents are the validation split, as in parameter-golf's export.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
TRAIN_SHARD = "fineweb_train_000000.bin"
VAL_SHARD = "fineweb_val_000000.bin"
PEER_SCRIPT = "train_gpt_mlx.py"
DTYPE_LINE = "COMPUTE_DTYPE = mx.bfloat16"
DTYPE_PATCH = "COMPUTE_DTYPE = mx.float32"


def write_shard(path: Path, tokens) -> None:
    """Write `tokens` (ids in [0, 65536)) as one parameter-golf shard, atomically."""
    toks = np.asarray(tokens)
    if toks.ndim != 1 or (toks.size and (toks.min() < 0 or toks.max() >= 2 ** 16)):
        raise ValueError(f"{path}: shard tokens must be a 1-D array of ids in [0, 65536)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, toks.size)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())
    os.replace(tmp, path)


def documents(text: str) -> list[str]:
    """Blank-line separated blocks of `text` (a play's speeches, a book's paragraphs), stripped."""
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


def build_dataset(text_path: Path, work: Path, vocab_size: int, val_frac: float, log) -> dict:
    """In `work`: a SentencePiece model of `vocab_size` pieces trained on `text_path` with the
    parameter-golf settings (shared.data.tokenizers.train_sentencepiece, as `ternary tokenizer train`),
    and `work/data/{TRAIN_SHARD,VAL_SHARD}` of its documents. Returns the paths and counts."""
    import sentencepiece as spm

    from shared.data.tokenizers import train_sentencepiece
    docs = documents(text_path.read_text(encoding="utf-8"))
    n_val = max(1, int(round(len(docs) * val_frac)))
    if len(docs) < 2 or n_val >= len(docs):
        raise ValueError(f"{text_path}: {len(docs)} blank-line separated documents; need at least 2")
    model = train_sentencepiece([text_path], vocab_size, work / "tokenizer" / f"sp{vocab_size}")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    if sp.vocab_size() != vocab_size:
        raise ValueError(f"{text_path}: the tokenizer reached {sp.vocab_size()} pieces, not {vocab_size} "
                         "(the peer requires exactly VOCAB_SIZE); use a larger text")
    bos = sp.bos_id()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, split in ((VAL_SHARD, docs[:n_val]), (TRAIN_SHARD, docs[n_val:])):
        toks = np.concatenate([np.array([bos] + ids, dtype=np.int64) for ids in sp.encode(split)])
        write_shard(data / name, toks)
        counts[name] = int(toks.size)
    log(f"data: {len(docs)} documents ({n_val} val), {counts[TRAIN_SHARD]:,} train / {counts[VAL_SHARD]:,} val "
        f"tokens, tokenizer {model}")
    return {"dir": str(data), "tokenizer": str(model), "documents": len(docs), "val_documents": n_val,
            "train_tokens": counts[TRAIN_SHARD], "val_tokens": counts[VAL_SHARD], "text": str(text_path)}


def patched_peer(pg_repo: Path, work: Path) -> tuple[Path, str]:
    """Copy the peer's train_gpt_mlx.py into `work` with its compute dtype set to float32 (the one
    line `COMPUTE_DTYPE = mx.bfloat16`); returns the copy and a sentence saying what was changed."""
    src = pg_repo / PEER_SCRIPT
    if not src.is_file():
        raise FileNotFoundError(f"--pg-repo {pg_repo}: no {PEER_SCRIPT} (want a checkout of openai/parameter-golf)")
    code = src.read_text(encoding="utf-8")
    lines = [i for i, line in enumerate(code.splitlines()) if line.strip() == DTYPE_LINE]
    if len(lines) != 1:
        raise ValueError(f"{src}: expected exactly one line `{DTYPE_LINE}`, found {len(lines)}; the peer "
                         "script changed and the float32 patch would not apply")
    dst = work / PEER_SCRIPT
    fd, tmp = tempfile.mkstemp(dir=work, prefix=".peer.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(code.replace(DTYPE_LINE, DTYPE_PATCH, 1))
    shutil.copymode(src, tmp)
    os.replace(tmp, dst)
    return dst, f"copied {src} to {dst}, line {lines[0] + 1} `{DTYPE_LINE}` -> `{DTYPE_PATCH}`; nothing else changed"


_TRAIN = re.compile(r"^step:(\d+)/(\d+) train_loss:(\S+) train_time:([\d.]+)ms step_avg:([\d.]+)ms tok_s:(\d+)")
_VAL = re.compile(r"^step:(\d+)/(\d+) val_loss:(\S+) val_bpb:(\S+) train_time:([\d.]+)ms")
_INT8 = re.compile(r"^final_int8_zlib_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)")


def parse_peer_log(lines) -> dict:
    """The peer's stdout lines -> {"train": [{step, train_loss, train_time_ms, step_avg_ms, tok_s}],
    "val": [{step, val_loss, val_bpb, train_time_ms}], "int8_roundtrip": {val_loss, val_bpb} | None,
    "iterations": M | None}. Other lines are ignored."""
    out: dict = {"train": [], "val": [], "int8_roundtrip": None, "iterations": None}
    for line in lines:
        line = line.strip()
        if m := _TRAIN.match(line):
            out["iterations"] = int(m[2])
            out["train"].append({"step": int(m[1]), "train_loss": float(m[3]), "train_time_ms": float(m[4]),
                                 "step_avg_ms": float(m[5]), "tok_s": int(m[6])})
        elif m := _VAL.match(line):
            out["iterations"] = int(m[2])
            out["val"].append({"step": int(m[1]), "val_loss": float(m[3]), "val_bpb": float(m[4]),
                               "train_time_ms": float(m[5])})
        elif m := _INT8.match(line):
            out["int8_roundtrip"] = {"val_loss": float(m[1]), "val_bpb": float(m[2])}
    return out


def our_step_rates(records: list[dict], steps: int, batch_tokens: int) -> list[float]:
    """Tokens/s of each step of our run from its metrics.jsonl records (step records must be 1..steps,
    each with the cumulative train_time_s of a run synced every step)."""
    train = [r for r in records if "eval" not in r]
    if [r.get("step") for r in train] != list(range(1, steps + 1)):
        raise ValueError(f"metrics.jsonl: want step records 1..{steps}, got {[r.get('step') for r in train][:8]}...")
    if any("train_time_s" not in r for r in train):
        raise ValueError("metrics.jsonl: step records without train_time_s (a trainer older than this bench)")
    times = [0.0] + [float(r["train_time_s"]) for r in train]
    deltas = [b - a for a, b in zip(times, times[1:])]
    if any(d <= 0 for d in deltas):
        raise ValueError("metrics.jsonl: train_time_s does not increase every step; run with train.log_every=1")
    return [batch_tokens / d for d in deltas]


def timing_summary(tokens_per_s: list[float], skip: int) -> dict:
    """Median / min / max tokens/s over the steps after the first `skip`."""
    kept = tokens_per_s[skip:]
    if not kept:
        raise ValueError(f"--skip-steps {skip} leaves no timed step of {len(tokens_per_s)}")
    return {"tokens_per_s_median": round(statistics.median(kept), 1), "tokens_per_s_min": round(min(kept), 1),
            "tokens_per_s_max": round(max(kept), 1), "timed_steps": len(kept), "excluded_first_steps": skip}
