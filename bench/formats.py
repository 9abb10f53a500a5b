#!/usr/bin/env python
"""Export formats: bits per ternary weight of every format, and the cost of `ternary import-hf`.

Part 1, sizes. For each model (default: two random ternary Qwen3 checkpoints made in a temporary
folder, hidden 256, 4 layers, intermediate 512, vocab 512, group 128 and group 0; or `--checkpoint
DIR`), every export is written for real and measured:

  packed        convert.formats.packed.to_packed (base-3 codes, fp16 scales and floats, LZMA): PackedStats;
                packed_int8_lzma / packed_fp16_zstd / packed_int8_zstd: the same with --floats int8
                (per-row int8 float matrices) and/or --compress zstd
  hf_bitnet     convert.formats.hf_bitnet.to_hf_bitnet (2-bit packed uint8 + fp32 per-tensor scale)
  mlx_lm        convert.formats.hf_export.to_mlx_lm (uint32 2-bit words + fp32 scales and biases per group)
  gguf_tq2_0    convert.formats.gguf_export.to_gguf TQ2_0 (66 bytes per 256 values)
  gguf_tq1_0    the same, TQ1_0 (54 bytes per 256 values)
  canonical     convert.formats.packed.to_canonical (fp32 latent weights), and bf16 (16 bits) for reference

`ternary_bits_per_weight` = 8 * (bytes of the ternary tensors: codes and their scales/biases) / the
number of ternary weights, read from each written file's tensor table; `file_bits_per_ternary_weight`
divides the whole file (float tensors and headers included). Both sit next to log2(3) = 1.585 (the
bound for independent uniform codes) and the empirical entropy of the model's codes. An export that
refuses the model is listed with its error message.

Part 2, import time. A random Qwen3ForCausalLM written by transformers' save_pretrained (float32;
one model.safetensors, and sharded with max_shard_size) is imported with convert.formats.hf_import.import_hf
(`ternary import-hf`: read, check, ternary config, write a verified checkpoint), and compared with
only reading the same files with safetensors.numpy.load_file. Median of `--repeats` runs.

Output: one JSON object on stdout (progress on stderr). Runtime ~30-60 s on the 2-core dev VM.

  python bench/formats.py
  python bench/formats.py --checkpoint runs/my-run --json-out formats.json
  python bench/formats.py --import-hidden 256 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.spec.checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from shared.spec.config import ConfigError, RunConfig  # noqa: E402
from shared.spec.init import init_weights  # noqa: E402
from shared.spec.params import ternary_parameters  # noqa: E402
from shared.spec.ternary import quantize  # noqa: E402

LOG2_3 = math.log2(3)
MODEL = ["model.vocab_size=512", "model.hidden_size=256", "model.intermediate_size=512",
         "model.num_hidden_layers=4", "model.num_attention_heads=4", "model.num_key_value_heads=2"]


def log(msg: str) -> None:
    print(f"[formats] {msg}", file=sys.stderr, flush=True)


def safetensors_sizes(path: Path) -> dict[str, int]:
    """Tensor name -> bytes, from a safetensors file's header (no data read)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def _bits(tern_bytes: int, file_bytes: int, n: int) -> dict[str, float | int]:
    return {"file_bytes": file_bytes, "ternary_bytes": tern_bytes,
            "ternary_bits_per_weight": round(8 * tern_bytes / n, 4),
            "file_bits_per_ternary_weight": round(8 * file_bytes / n, 4)}


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def measure_formats(ckpt: Path, work: Path) -> dict:
    # imported before any export is timed, as before (the helpers below import them again, free)
    from convert.formats import packed as export
    from convert.formats import hf_bitnet as export_bitnet
    from convert.formats import gguf_export as export_gguf
    from convert.formats import hf_export  # noqa: F401
    config, weights = read_checkpoint(ckpt)
    tern = ternary_parameters(config)
    if not tern:
        raise ConfigError(f"{ckpt}: no ternary weights (ternary disabled): nothing to measure")
    n = sum(int(weights[k].size) for k in tern)
    res = _code_summary(ckpt, config, weights, tern, n)
    f = res["formats"]
    for key, fn in _exports(ckpt, work, tern, n):
        _attempt(f, key, fn)
    total = res["parameters"]
    f["bf16_reference"] = {"ternary_bits_per_weight": 16.0, "file_bits_per_ternary_weight": round(16 * total / n, 4),
                           "note": "computed: every parameter in bf16, no file written"}
    return res


def _code_summary(ckpt: Path, config, weights: dict, tern: list[str], n: int) -> dict:
    """The checkpoint's code fractions and entropy, with an empty "formats" table to fill."""
    t = config.ternary
    counts = np.zeros(3, np.int64)
    for k in tern:
        counts += np.bincount((quantize(weights[k], t.group_size, t.eps)[0].reshape(-1) + 1).astype(np.int64),
                              minlength=3)
    p = counts / counts.sum()
    entropy = float(-sum(x * math.log2(x) for x in p if x > 0))
    return {"checkpoint": str(ckpt), "group_size": t.group_size, "ternary_weights": n,
            "parameters": int(sum(v.size for v in weights.values())),
            "code_fractions": {"-1": round(float(p[0]), 4), "0": round(float(p[1]), 4), "+1": round(float(p[2]), 4)},
            "code_entropy_bits": round(entropy, 4), "log2_3": round(LOG2_3, 4), "formats": {}}


def _attempt(f: dict, key: str, fn) -> None:
    """f[key] = fn() with its export time, or why the export refused the model."""
    t0 = time.perf_counter()
    try:
        f[key] = fn()
        f[key]["export_s"] = round(time.perf_counter() - t0, 3)
    except ConfigError as e:
        f[key] = {"refused": str(e)}
    log(f"  {key}: {f[key].get('ternary_bits_per_weight', 'refused')}")


def _exports(ckpt: Path, work: Path, tern: list[str], n: int) -> list[tuple[str, Callable[[], dict]]]:
    """(key, export-and-measure) for every format, in the order of the table."""
    return [
        ("packed", lambda: _packed(ckpt, work, n)),
        ("packed_int8_lzma", lambda: _packed(ckpt, work, n, "int8", "lzma")),
        ("packed_fp16_zstd", lambda: _packed(ckpt, work, n, "fp16", "zstd")),
        ("packed_int8_zstd", lambda: _packed(ckpt, work, n, "int8", "zstd")),
        ("hf_bitnet", lambda: _hf_bitnet(ckpt, work, tern, n)),
        ("mlx_lm", lambda: _mlx_lm(ckpt, work, tern, n)),
        ("gguf_tq2_0", lambda: _gguf(ckpt, work, n, "TQ2_0")),
        ("gguf_tq1_0", lambda: _gguf(ckpt, work, n, "TQ1_0")),
        ("canonical_fp32", lambda: _canonical(ckpt, work, n)),
    ]


def _packed(ckpt: Path, work: Path, n: int, floats: str = "fp16", compress: str = "lzma") -> dict:
    from convert.formats import packed as export
    st = export.to_packed(ckpt, work / f"m-{floats}-{compress}.tpk", floats=floats, compress=compress)
    out = _bits(st.codes_bytes + st.scales_bytes, st.bytes, n)
    out["codes_bits_per_weight_uncompressed"] = round(st.code_bits_per_weight, 4)
    out[f"codes_bits_per_weight_{compress}"] = round(st.code_bits_per_weight_compressed, 4)
    out["float_bytes_uncompressed"] = st.floats_bytes
    out["note"] = (f"ternary_bytes = base-3 codes + fp16 scales before {compress}; floats {floats}; "
                   f"the file is {compress}-compressed")
    return out


def _hf_bitnet(ckpt: Path, work: Path, tern: list[str], n: int) -> dict:
    from convert.formats import hf_bitnet as export_bitnet
    export_bitnet.to_hf_bitnet(ckpt, work / "bitnet")
    sizes = safetensors_sizes(work / "bitnet" / "model.safetensors")
    tb = sum(sizes[k] + sizes[k[:-len("weight")] + "weight_scale"] for k in tern if k in sizes
             and k[:-len("weight")] + "weight_scale" in sizes)
    return _bits(tb, _dir_bytes(work / "bitnet"), n)


def _mlx_lm(ckpt: Path, work: Path, tern: list[str], n: int) -> dict:
    from convert.formats import hf_export as export_hf
    export_hf.to_mlx_lm(ckpt, work / "mlxlm")
    sizes = safetensors_sizes(work / "mlxlm" / "model.safetensors")
    tb = sum(sizes[k] + sizes[k[:-len(".weight")] + ".scales"] + sizes[k[:-len(".weight")] + ".biases"]
             for k in tern)
    return _bits(tb, _dir_bytes(work / "mlxlm"), n)


def _gguf(ckpt: Path, work: Path, n: int, kind: str) -> dict:
    from convert.formats import gguf_export as export_gguf
    r = export_gguf.to_gguf(ckpt, work / f"{kind}.gguf", gguf_type=kind)
    out = _bits(r["ternary_bytes"], r["bytes"], n)
    out.update(exact_scales=r["exact_scales"], max_rel_weight_error=r["max_rel_weight_error"])
    return out


def _canonical(ckpt: Path, work: Path, n: int) -> dict:
    from convert.formats import packed as export
    r = export.to_canonical(ckpt, work / "canonical")
    return _bits(4 * n, r["bytes"], n)


def _hf_qwen3(out: Path, hidden: int, layers: int, vocab: int, shard: str | None) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                      head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(cfg).float()
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(str(out), **kw)


def measure_import(work: Path, hidden: int, layers: int, vocab: int, repeats: int) -> dict:
    from safetensors.numpy import load_file

    from convert.formats.hf_import import import_hf
    res: dict = {"model": {"hidden_size": hidden, "num_hidden_layers": layers, "vocab_size": vocab,
                           "intermediate_size": 3 * hidden, "dtype": "float32", "tied": True}}
    import warnings
    for kind, shard in (("single_file", None), ("sharded", "2MB")):
        src = work / f"hf-{kind}"
        _hf_qwen3(src, hidden, layers, vocab, shard)
        files = sorted(src.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in files)
        imp, load = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            for f in files:
                load_file(str(f))
            load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import_hf(str(src), work / f"imported-{kind}", force=True)
            imp.append(time.perf_counter() - t0)
        mi, ml = statistics.median(imp), statistics.median(load)
        res[kind] = {"files": len(files), "bytes": size, "import_hf_s": round(mi, 4),
                     "load_file_s": round(ml, 4), "import_over_load": round(mi / ml, 2),
                     "import_hf_runs_s": [round(x, 4) for x in imp], "load_file_runs_s": [round(x, 4) for x in load]}
        log(f"  import {kind}: {len(files)} file(s), import_hf {mi:.3f} s vs load_file {ml:.3f} s")
    res["note"] = ("import_hf reads and checks every tensor, converts to float32, writes a checkpoint with a "
                   "hashed manifest (and verifies it); load_file only reads")
    return res


def machine() -> dict:
    import importlib.metadata as md
    versions = {}
    for pkg in ("numpy", "safetensors", "gguf", "transformers", "torch", "mlx"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "versions": versions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                 epilog="examples:\n  python bench/formats.py\n"
                                        "  python bench/formats.py --checkpoint runs/my-run --json-out f.json")
    ap.add_argument("--checkpoint", metavar="DIR", help="measure this checkpoint instead of the two random ones")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON to FILE")
    ap.add_argument("--no-import", action="store_true", help="skip the import-hf timing")
    ap.add_argument("--import-hidden", type=int, default=512, help="hidden size of the imported model (default 512)")
    ap.add_argument("--import-layers", type=int, default=4, help="layers of the imported model (default 4)")
    ap.add_argument("--import-vocab", type=int, default=4096, help="vocab of the imported model (default 4096)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per import case (median; default 5)")
    args = ap.parse_args(argv)
    from convert.common import checkpoint_dir
    out: dict = {"machine": machine(), "log2_3": round(LOG2_3, 4), "models": []}
    with tempfile.TemporaryDirectory(prefix="ternary-formats-") as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            ckpts = [checkpoint_dir(args.checkpoint)]
        else:
            ckpts = []
            for g in (128, 0):
                cfg = RunConfig().with_overrides(MODEL + [f"ternary.group_size={g}"])
                ckpts.append(write_checkpoint(tmp / f"random-g{g}", cfg, init_weights(cfg.model, seed=0),
                                              writer={"backend": "bench/formats.py"}))
        for i, ck in enumerate(ckpts):
            log(f"sizes: {ck}")
            work = tmp / f"work-{i}"
            work.mkdir()
            out["models"].append(measure_formats(ck, work))
        if not args.no_import:
            log("import-hf timing")
            out["import_hf"] = measure_import(tmp, args.import_hidden, args.import_layers, args.import_vocab,
                                              args.repeats)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
