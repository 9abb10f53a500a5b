"""Peak memory and time of `prepare_data` (`ternary data prepare`) on large text files: this tree's
streaming version against an older tree's (default: git ref `main`), side by side in one run.

    python bench/data_prepare.py                                   # bytes at 50 and 200 MB
    python bench/data_prepare.py --mb 8 32 --tokenizer synthetic-bpe-512 --json-out out.json

The text file is /work/shared/data's text (or --source files) repeated to each size, one document
(documents="file": a whole file is one document, the worst case for memory), written under --tmp
and deleted afterwards. Each side runs in a fresh process (PYTHONPATH = its tree) and reports its
wall time and peak resident set (VmHWM of /proc/self/status). The shards both sides wrote are
compared byte for byte (`same_shards`). Output: one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_stream import REPO, old_tree  # noqa: E402

SOURCES = ["/work/shared/data/tinyshakespeare.txt", "/work/shared/data/wikitext2_valid.txt"]

CHILD = r"""
import json, sys, time
def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
from shared.data.dataset import prepare_data
from shared.data.tokenizers import get_tokenizer
text, tok_name, out = sys.argv[1:4]
tok = get_tokenizer(tok_name)
t0 = time.perf_counter()
man = prepare_data([text], tok, out, log=lambda m: None)
print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss_mib": status_mib("VmHWM"),
                  "tokens": man["splits"]["train"]["tokens"] + man["splits"]["val"]["tokens"],
                  "shards": len(man["splits"]["train"]["files"]) + len(man["splits"]["val"]["files"])}))
"""


def write_text(path: Path, mb: float, sources: list[str]) -> int:
    """`mb` MB (1e6 bytes) of the sources' text repeated, cut at a line end; returns its size."""
    base = "".join(Path(s).read_text(encoding="utf-8") for s in sources)
    target = int(mb * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < target:
            part = base[:target - written] if written + len(base) > target else base
            f.write(part)
            written += len(part.encode("utf-8"))
    return path.stat().st_size


def shard_digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.bin"))}


def run_side(tree: Path, text: Path, tok: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(text), tok, str(out)], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    res = json.loads(done.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[50, 200], help="text sizes in MB (default 50 200)")
    ap.add_argument("--tokenizer", default="bytes")
    ap.add_argument("--source", nargs="+", default=SOURCES, help="text repeated to each size")
    ap.add_argument("--old-ref", default="main", help="git ref of the old prepare ('' to skip it)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    result = {"config": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="data-prepare-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        old = old_tree(args.old_ref, tmp / "old") if args.old_ref else None
        for mb in args.mb:
            text = tmp / f"text-{mb:g}mb.txt"
            run = {"mb": mb, "text_bytes": write_text(text, mb, args.source), "tokenizer": args.tokenizer}
            for side, tree in (("new", REPO), ("old", old)):
                if tree is not None:
                    print(f"{mb:g} MB: {side} ...", file=sys.stderr, flush=True)
                    run[side] = run_side(tree, text, args.tokenizer, tmp / f"out-{side}")
            if old is not None and "error" not in run["old"] and "error" not in run["new"]:
                run["same_shards"] = shard_digests(tmp / "out-old") == shard_digests(tmp / "out-new")
            for side in ("old", "new"):
                shutil.rmtree(tmp / f"out-{side}", ignore_errors=True)
            text.unlink()
            result["runs"].append(run)
    out = json.dumps(result, indent=2)
    print(out)
    if args.json_out:
        Path(args.json_out).write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
