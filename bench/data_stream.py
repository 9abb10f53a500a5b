"""Startup time and peak memory of loading a token-shard corpus and sampling training batches: this
tree's streaming loader against an older tree's (default: git ref `main`), side by side in one run.

    python bench/data_stream.py                          # 2.2 GB corpus in /tmp, deleted afterwards
    python bench/data_stream.py --gb 0.5 2.2 --layout ours pg --batches 200 --json-out out.json

For each corpus size and layout it writes a directory of uint16 shards of random ids (`ours`: a
`ternary data prepare` directory with manifest.json for the `bytes` tokenizer; `pg`: parameter-golf's
fineweb_train_*.bin / fineweb_val_*.bin for the synthetic-bpe-512 SentencePiece model), then runs, in
a fresh process per side, `load_token_dataset` + `TokenLoader(..., vocab_size=...)` (the training
run's id check) + `--batches` batches of `--rows` x `--seq` + the first `--eval-windows` evaluation
windows. Each process reports its startup (loading and the loader's construction) and sampling time
and its peak resident set (VmHWM of /proc/self/status, Linux; file pages mapped into the process
count too; getrusage's ru_maxrss would carry over the parent's peak across exec). The
old side is `git archive REF shared` unpacked into a temporary directory. Output: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARD_TOKENS = 100_000_000  # `ternary data prepare`'s default
VAL_TOKENS = 2_000_000
MAGIC, VERSION_UINT16, HEADER_INTS = 20240520, 1, 256
LAYOUTS = {"ours": ("bytes", 256), "pg": ("synthetic-bpe-512", 512)}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()

def status_mib(key):  # VmHWM (peak) / VmRSS (now) of this process; unlike ru_maxrss, reset by exec
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

from shared.data.dataset import load_token_dataset
from shared.data.loader import TokenLoader, val_windows
from shared.data.tokenizers import get_tokenizer
root, tok_name, rows, seq, batches, eval_windows = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
tok = get_tokenizer(tok_name)
t_import = time.perf_counter()
ds = load_token_dataset(root, tok)
loader = TokenLoader(ds.train, rows, seq, seed=0, vocab_size=tok.vocab_size, log=lambda m: None)
t_ready = time.perf_counter()
rss_ready = status_mib("VmHWM")
digest = 0
for _ in range(batches):
    digest = (digest * 31 + int(loader.next_batch().astype("int64").sum())) % (1 << 61)
t_batches = time.perf_counter()
for i, (x, y, m) in enumerate(val_windows(ds.val, seq)):
    if i + 1 == eval_windows:
        break
t_end = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "startup_s": t_ready - t_import,
                  "sampling_s": t_batches - t_ready, "ms_per_batch": 1000 * (t_batches - t_ready) / batches,
                  "eval_windows_s": t_end - t_batches,
                  "peak_rss_after_startup_mib": rss_ready,
                  "peak_rss_mib": status_mib("VmHWM"), "rss_at_end_mib": status_mib("VmRSS"),
                  "train_tokens": len(ds.train), "train_type": type(ds.train).__name__,
                  "batch_digest": digest}))
"""


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """One uint16 shard in the common format (written here, independent of the code under test)."""
    header = np.zeros(HEADER_INTS, "<i4")
    header[:3] = (MAGIC, VERSION_UINT16, tokens.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())


def make_corpus(root: Path, layout: str, gb: float, seed: int = 0) -> dict:
    """`gb` GB (1e9 bytes) of train tokens in SHARD_TOKENS shards plus a val shard; returns its sizes."""
    tok_name, vocab = LAYOUTS[layout]
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_train = int(gb * 1e9 / 2)
    names = {"train": [], "val": []}
    for split, n in (("val", VAL_TOKENS), ("train", n_train)):
        for i, s in enumerate(range(0, n, SHARD_TOKENS)):
            name = f"fineweb_{split}_{i:06d}.bin" if layout == "pg" else f"{split}_{i:06d}.bin"
            write_shard(root / name, rng.integers(0, vocab, min(SHARD_TOKENS, n - s), dtype=np.uint16))
            names[split].append(name)
    if layout == "ours":
        from shared.data.tokenizers import get_tokenizer
        tok = get_tokenizer(tok_name)
        splits = {s: {"files": names[s], "tokens": n, "bytes": n - 1, "text_bytes": n, "documents": 1}
                  for s, n in (("train", n_train), ("val", VAL_TOKENS))}
        man = {"format": "ternary-token-shards", "version": 1, "splits": splits, "shard_version": 1,
               "tokenizer": {"name": tok.name, "kind": tok.kind, "vocab_size": tok.vocab_size, "sha256": tok.sha256}}
        (root / "manifest.json").write_text(json.dumps(man))
    return {"train_tokens": n_train, "train_shards": len(names["train"]),
            "bytes_on_disk": sum(f.stat().st_size for f in root.iterdir())}


def old_tree(ref: str, where: Path) -> Path:
    """`shared/` of git ref `ref`, unpacked under `where`."""
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "shared"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def run_side(tree: Path, root: Path, tok_name: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", CHILD, str(root), tok_name, str(args.rows), str(args.seq), str(args.batches),
           str(args.eval_windows)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[2.2], help="train corpus sizes in GB (default 2.2)")
    ap.add_argument("--layout", nargs="+", choices=sorted(LAYOUTS), default=["ours"])
    ap.add_argument("--old-ref", default="main", help="git ref of the old loader ('' to skip it)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--eval-windows", type=int, default=100)
    ap.add_argument("--tmp", default="/tmp", help="where the corpus is written (and deleted afterwards)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    result = {"config": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="data-stream-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        old = old_tree(args.old_ref, tmp / "old") if args.old_ref else None
        for layout in args.layout:
            for gb in args.gb:
                root = tmp / f"{layout}-{gb:g}gb"
                print(f"writing {gb:g} GB ({layout}) to {root} ...", file=sys.stderr, flush=True)
                run = {"layout": layout, "gb": gb, **make_corpus(root, layout, gb)}
                for side, tree in (("new", REPO), ("old", old)):
                    if tree is not None:
                        print(f"  {side} ...", file=sys.stderr, flush=True)
                        run[side] = run_side(tree, root, LAYOUTS[layout][0], args)
                if "old" in run and "batch_digest" in run["old"]:
                    run["same_batches"] = run["old"]["batch_digest"] == run["new"].get("batch_digest")
                result["runs"].append(run)
                shutil.rmtree(root)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
