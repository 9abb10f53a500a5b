#!/usr/bin/env python
"""Every stock export of a trained checkpoint, opened in its real tool and compared with ours.

Outside CI; it builds nothing: it uses the clients that are installed and reports each missing
one as skipped, with the reason. The exports are written with `ternary convert`'s own functions into
a work folder, then:

  llama_cpp_tq2_0 / llama_cpp_tq1_0  llama-cpp-python (`Llama(model_path=...)`) on `--to gguf`
                                     (TQ2_0 / TQ1_0): tokenization, logits, greedy tokens
  mlx_lm                             `mlx_lm.load` of `--to mlx-lm`: logits, greedy tokens (and
                                     tokenization when the export holds tokenizer files)
  transformers_hf / transformers_hf_bitnet
                                     AutoModelForCausalLM.from_pretrained of `--to hf` / `--to hf-bitnet`

Ours is the float64 NumPy reference forward pass (shared/spec/reference_model.py) on the checkpoint's
latent weights, which every backend is tested against. The text is held-out text of the run's own
corpus (the synthetic corpus's validation stream, or the first --text-bytes of --text), plus a few
strings with newlines, repeated spaces and non-ASCII characters for the tokenizer check.

Per client: `tokenization` (strings compared, how many give our ids, the first that does not),
`max_abs_logit_diff` / `mean_abs_logit_diff` over the positions of one window, `argmax_agreement`
(the fraction of positions with our top token), `greedy_equal` (how many of --new-tokens greedy tokens
after the prompt equal ours, counting from the first); or `skipped` / `refused` / `error` with the
reason. One JSON object on stdout, progress on stderr.

  python bench/real_clients.py runs/smoke
  python bench/real_clients.py runs/smoke --window 64 --new-tokens 32 --json-out clients.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.data.tokenizers import get_tokenizer  # noqa: E402
from shared.spec.checkpoint import read_checkpoint  # noqa: E402
from shared.spec.config import ConfigError  # noqa: E402
from shared.spec.reference_model import reference_logits  # noqa: E402

EDGE_STRINGS = ["the end.\nA new line", "two  spaces and   three", "caf\u00e9 na\u00efve \u6f22\u5b57", " leading space"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- ours -----------------------------------------------------------------------------------------
class Ours:
    """The checkpoint's reference forward pass: logits for a window and greedy continuations."""

    def __init__(self, ckpt: Path):
        self.config, self.weights = read_checkpoint(ckpt)
        self.tok = get_tokenizer(self.config.data.tokenizer)

    def ids(self, text: str) -> list[int]:
        """[BOS] + the encoding, as training and `ternary generate` see a document."""
        bos = [] if self.tok.bos_id is None else [int(self.tok.bos_id)]
        return bos + [int(i) for i in self.tok.encode(text)]

    def logits(self, ids: list[int]) -> np.ndarray:
        return reference_logits(self.config, self.weights, np.array([ids], np.int64))[0]

    def greedy(self, ids: list[int], n: int) -> list[int]:
        return greedy(lambda seq: self.logits(seq)[-1], ids, n)


def greedy(last_logits: Callable[[list[int]], np.ndarray], ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ids (no cache: the whole sequence each step, fine for small models)."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(last_logits(seq))))
    return seq[len(ids):]


def compare(ours: Ours, window: list[int], prompt: list[int], n_new: int, want_greedy: list[int],
            logits_fn: Callable[[list[int]], np.ndarray]) -> dict:
    """Logit and greedy-token agreement of a client's `logits_fn(ids) -> (T, vocab)` with ours."""
    mine, theirs = ours.logits(window), np.asarray(logits_fn(window), np.float64)
    if theirs.shape != mine.shape:
        return {"error": f"logits of shape {theirs.shape}, ours {mine.shape}"}
    diff = np.abs(theirs - mine)
    got = greedy(lambda seq: np.asarray(logits_fn(seq))[-1], prompt, n_new)
    same = next((i for i, (a, b) in enumerate(zip(got, want_greedy)) if a != b), len(got))
    return {"positions": len(window), "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()), "logit_scale": float(np.abs(mine).max()),
            "argmax_agreement": float((theirs.argmax(-1) == mine.argmax(-1)).mean()),
            "greedy_equal": same, "greedy_tokens": n_new, "greedy_theirs": got[:same + 1]}


def tokenization(ours: Ours, texts: list[str], encode: Callable[[str], list[int]]) -> dict:
    """How many of `texts` a client's `encode` (with BOS, as ours) turns into our ids."""
    out = {"strings": len(texts), "equal": 0, "first_mismatch": None}
    for t in texts:
        a, b = ours.ids(t), [int(i) for i in encode(t)]
        if a == b:
            out["equal"] += 1
        elif out["first_mismatch"] is None:
            out["first_mismatch"] = {"text": t[:80], "ours": a[:24], "theirs": b[:24]}
    return out


# ---- the clients ----------------------------------------------------------------------------------
def llama_cpp(path: Path, ours: Ours, job: dict) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return {"skipped": f"llama-cpp-python is not installed ({e}); `pip install llama-cpp-python` "
                           "(builds llama.cpp from source unless a wheel fits this platform)"}
    llm = Llama(model_path=str(path), n_ctx=job["n_ctx"], logits_all=True, verbose=False)

    def logits(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], np.float64)

    out = {"tokenization": tokenization(ours, job["texts"], lambda t: llm.tokenize(t.encode("utf-8"), add_bos=True,
                                                                                       special=False))}
    out.update(compare(ours, job["window"], job["prompt"], job["new_tokens"], job["greedy"], logits))
    return out


def mlx_lm(path: Path, ours: Ours, job: dict) -> dict:
    try:
        import mlx.core as mx
        import mlx_lm as lm
    except ImportError as e:
        return {"skipped": f"mlx-lm is not installed ({e}); `pip install mlx-lm`"}
    out: dict = {}
    try:
        model, tokenizer = lm.load(str(path))
        out["load"] = "mlx_lm.load"
    except Exception as e:  # no tokenizer files: mlx_lm.load gives up; the weights alone still load
        from mlx_lm.utils import load_model
        model, _ = load_model(path)
        tokenizer = None
        out["load"] = f"mlx_lm.load failed ({type(e).__name__}: {str(e)[:160]}); weights via mlx_lm.utils.load_model"

    def logits(ids: list[int]) -> np.ndarray:
        return np.array(model(mx.array([ids])).astype(mx.float32))[0]

    if tokenizer is None:
        out["tokenization"] = {"skipped": "no tokenizer loaded"}
    elif not _has_tokenizer_files(path):  # mlx_lm.load then builds an empty tokenizer: say so, do not score it
        out["tokenization"] = {"skipped": "the export holds no tokenizer files; mlx_lm.load built a "
                                          f"{type(getattr(tokenizer, '_tokenizer', tokenizer)).__name__} that "
                                          f"encodes 'hello world' as {list(tokenizer.encode('hello world'))}"}
    else:
        out["tokenization"] = _hf_tokenization(ours, job["texts"], tokenizer)
    out.update(compare(ours, job["window"], job["prompt"], job["new_tokens"], job["greedy"], logits))
    return out


def transformers(path: Path, ours: Ours, job: dict) -> dict:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        return {"skipped": f"transformers / torch is not installed ({e}); `pip install transformers torch`"}
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    def logits(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    out = {"tokenization": (_hf_tokenization(ours, job["texts"], AutoTokenizer.from_pretrained(str(path)))
                            if _has_tokenizer_files(path) else {"skipped": "the export holds no tokenizer files"})}
    out.update(compare(ours, job["window"], job["prompt"], job["new_tokens"], job["greedy"], logits))
    return out


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _hf_tokenization(ours: Ours, texts: list[str], tok) -> dict:
    """A Hugging Face tokenizer's ids for the text (no special tokens), after our BOS."""
    bos = [] if ours.tok.bos_id is None else [int(ours.tok.bos_id)]
    return tokenization(ours, texts, lambda t: bos + list(tok.encode(t, add_special_tokens=False)))


# ---- exports and the run --------------------------------------------------------------------------
def _export(fmt: str, ckpt: Path, out: Path) -> None:
    if fmt.startswith("gguf"):
        from convert.formats.gguf_export import to_gguf
        to_gguf(ckpt, out, gguf_type=fmt.split("-")[1])
    elif fmt == "mlx-lm":
        from convert.formats.hf_export import to_mlx_lm
        to_mlx_lm(ckpt, out)
    elif fmt == "hf":
        from convert.formats.hf_export import to_hf
        to_hf(ckpt, out)
    else:
        from convert.formats.hf_bitnet import to_hf_bitnet
        to_hf_bitnet(ckpt, out)


# client name -> (export format, file or folder name, client)
CLIENTS = {
    "llama_cpp_tq2_0": ("gguf-TQ2_0", "model-tq2_0.gguf", llama_cpp),
    "llama_cpp_tq1_0": ("gguf-TQ1_0", "model-tq1_0.gguf", llama_cpp),
    "mlx_lm": ("mlx-lm", "mlx-lm", mlx_lm),
    "transformers_hf": ("hf", "hf", transformers),
    "transformers_hf_bitnet": ("hf-bitnet", "hf-bitnet", transformers),
}


def held_out_text(ours: Ours, n_bytes: int, text_file: str | None) -> str:
    if text_file:
        return Path(text_file).read_text(encoding="utf-8")[:n_bytes]
    d = ours.config.data
    if d.source != "synthetic":
        raise SystemExit("bench/real_clients.py: this run was not trained on the synthetic corpus; pass --text FILE")
    from shared.data.corpus import SyntheticCorpus
    return SyntheticCorpus(d.seed).generate(n_bytes, "val")


def job_for(ours: Ours, args) -> dict:
    text = held_out_text(ours, args.text_bytes, args.text)
    ids = ours.ids(text)
    if len(ids) < args.window:
        raise SystemExit(f"bench/real_clients.py: {len(ids)} tokens of text, fewer than --window {args.window}")
    window, prompt = ids[:args.window], ids[:args.prompt_tokens]
    cut = len(text) // 8  # eight held-out pieces and the edge cases for the tokenizers
    texts = [text[i * cut:(i + 1) * cut].strip() for i in range(8)] + EDGE_STRINGS
    log(f"ours: reference logits of {len(window)} tokens, {args.new_tokens} greedy tokens")
    return {"window": window, "prompt": prompt, "new_tokens": args.new_tokens, "texts": texts,
            "greedy": ours.greedy(prompt, args.new_tokens), "n_ctx": max(args.window, args.prompt_tokens + args.new_tokens)}


def run_client(name: str, ckpt: Path, work: Path, ours: Ours, job: dict) -> dict:
    fmt, fname, client = CLIENTS[name]
    out = work / fname
    if not out.exists():
        try:
            _export(fmt, ckpt, out)
        except ConfigError as e:
            return {"refused": str(e)}
    try:
        return {"export": str(out), **client(out, ours, job)}
    except Exception as e:  # a client that fails is a finding, reported with its cause
        return {"export": str(out), "error": f"{type(e).__name__}: {e}",
                "where": traceback.format_exc().strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory or checkpoint directory")
    ap.add_argument("--work", help="folder for the exports (default: a temporary one, removed)")
    ap.add_argument("--text", help="held-out UTF-8 text (default: the synthetic corpus's validation stream)")
    ap.add_argument("--text-bytes", type=int, default=4000, help="bytes of held-out text (default 4000)")
    ap.add_argument("--window", type=int, default=64, help="tokens whose logits are compared (default 64)")
    ap.add_argument("--prompt-tokens", type=int, default=8, help="prompt of the greedy continuation (default 8)")
    ap.add_argument("--new-tokens", type=int, default=24, help="greedy tokens compared (default 24)")
    ap.add_argument("--only", nargs="+", choices=list(CLIENTS), help="run these clients only")
    ap.add_argument("--json-out", help="also write the JSON here")
    args = ap.parse_args(argv)
    from convert.common import checkpoint_dir
    ckpt = checkpoint_dir(args.run)
    ours = Ours(ckpt)
    job = job_for(ours, args)
    with tempfile.TemporaryDirectory(prefix="real-clients-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = {}
        for name in args.only or CLIENTS:
            log(f"{name} ...")
            res[name] = run_client(name, ckpt, work, ours, job)
            log(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in res[name].items()
                                          if k in ("skipped", "refused", "error", "max_abs_logit_diff",
                                                   "argmax_agreement", "greedy_equal")))
    out = {"checkpoint": str(ckpt), "tokenizer": ours.tok.describe(), "config": {
        "model": ours.config.to_dict()["model"], "ternary": ours.config.to_dict()["ternary"]},
        "window": len(job["window"]), "ours_greedy": job["greedy"], "clients": res}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
