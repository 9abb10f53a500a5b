"""`ternary convert`: export a checkpoint as canonical, packed (convert/formats/packed.py), hf or mlx-lm
(hf_export.py), hf-bitnet (hf_bitnet.py) or gguf (gguf_export.py)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from convert.backends import NAMES
from convert.common import CliError, checkpoint_dir, positive_int, sub, threads_arg
from convert.formats.replace import FORCE_HELP
from shared.spec.checkpoint import MODEL_FILE


def run(args) -> int:
    from convert.formats import packed as export
    src = checkpoint_dir(args.src)
    if args.to != "gguf" and (args.gguf_type is not None or args.gguf_float is not None or args.no_tokenizer):
        raise CliError("--gguf-type, --gguf-float and --no-tokenizer apply to --to gguf only")
    if args.to != "packed" and (args.artifact != "default" or args.backend is not None or args.eval_tokens is not None
                                or args.hadamard or args.hadamard_seed is not None):
        raise CliError("--artifact, --hadamard, --hadamard-seed, --backend and --eval-tokens apply to --to packed only")
    if args.to != "packed" and args.threads is not None:  # the other exports have no thread setting
        raise CliError("--threads applies to --to packed only (zstd's workers and the round trip)")
    if args.to in ("hf", "mlx-lm"):
        from convert.formats import hf_export as export_hf
        if args.compress is not None or args.floats is not None or args.dtype != "float32":
            raise CliError(f"--compress, --floats and --dtype do not apply to --to {args.to}")
        fn = export_hf.to_hf if args.to == "hf" else export_hf.to_mlx_lm
        r = fn(src, args.out, force=args.force)
        kind = "float32 Qwen3 (transformers)" if args.to == "hf" else f"2-bit MLX (mlx-lm, group {r['group_size']})"
        print(f"wrote {kind} model {r['out']}: {r['bytes']:,d} bytes, {r['tensors']} tensors "
              f"({r['ternary']} ternary weights dequantized/packed); tokenizer {r['tokenizer']}")
        return 0
    if args.to in ("hf-bitnet", "gguf"):
        return _convert_quantized(args, src)
    if args.to == "canonical":
        if args.compress is not None or args.floats is not None:
            raise CliError("--compress and --floats apply to --to packed only")
        r = export.to_canonical(src, args.out, dtype=args.dtype, force=args.force)
        print(f"wrote canonical checkpoint {r['out']}: {r['bytes']:,d} bytes ("
              + ", ".join(f"{k} {v:,d}" for k, v in sorted(r["files"].items())) + ")"
              + (f"; dropped {', '.join(r['dropped'])}" if r["dropped"] else "") + "; verified")
        return 0
    if args.dtype != "float32":
        raise CliError("--dtype applies to --to canonical only")
    return _convert_packed(args, src)


def _convert_packed(args, src) -> int:
    """--to packed: the default layout (--floats, --compress, --hadamard) or --artifact pg-record; the
    round trip for pg-record and for the lossy additions of issue 11 (int6/int5/mixed, --hadamard)."""
    from convert.formats import packed as export
    record = args.artifact == "pg-record"
    if record and (args.compress is not None or args.floats is not None or args.hadamard):
        raise CliError("--artifact pg-record fixes the storage (LZMA; fp8 and fp16 floats; no rotation); leave out "
                       "--compress, --floats and --hadamard")
    if args.hadamard_seed is not None and not args.hadamard:
        raise CliError("--hadamard-seed applies to --hadamard only")
    if args.hadamard_seed is not None and args.hadamard_seed < 0:
        raise CliError(f"--hadamard-seed {args.hadamard_seed}: expected a non-negative integer")
    round_trip = record or args.hadamard or args.floats in ("int6", "int5", "mixed")
    if not round_trip and (args.backend is not None or args.eval_tokens is not None):
        raise CliError("--backend and --eval-tokens apply to the exports that measure a round trip only "
                       "(--artifact pg-record, --floats int6|int5|mixed, --hadamard)")
    seed = (args.hadamard_seed or 0) if args.hadamard else None
    if seed is not None:  # before the round trip's (slow) scoring of the checkpoint
        from shared.spec.checkpoint import read_config
        export.check_hadamard_model(read_config(src))
    trip = None
    if round_trip:  # the data and the checkpoint's own score first: a run without its data writes nothing
        from convert.commands.convert_roundtrip import RoundTrip
        trip = RoundTrip(src, args.backend or "torch", args.eval_tokens, args.runtime.threads)
    st = export.to_packed(src, args.out, compress=args.compress or ("lzma" if record else "auto"),
                          floats=args.floats or "fp16", force=args.force, artifact=args.artifact, hadamard=seed,
                          progress=_progress(src), threads=args.runtime.threads)
    if record:
        from convert.formats.packed_pgrecord import budget_lines
        print(f"wrote packed file {args.out} (--artifact pg-record): {st.bytes:,d} bytes (raw payload "
              f"{st.raw_payload:,d}: codes {st.codes_bytes:,d}, fp16 scales {st.scales_bytes:,d}, fp8 "
              f"{st.float_codes_bytes:,d}, fp16 {st.plain_floats_bytes:,d})")
        print("\n".join(budget_lines(st.bytes, st.header_bytes, st.payload_bytes) + trip.lines(trip.after(Path(args.out)))))
        return 0
    lines = _packed_lines(args.out, st)
    if trip is not None:
        lines += trip.lines(trip.after(Path(args.out)))
    print("\n".join(lines))
    return 0


def _progress(src: Path):
    """A timed progress line on stderr per long step, for checkpoints big enough to have long steps
    (a raw payload over LARGE_PAYLOAD: about 4 bytes of float32 checkpoint per packed byte); None else."""
    from convert.formats import packed_codecs
    model = src / MODEL_FILE
    if not (model.is_file() and model.stat().st_size > 4 * packed_codecs.LARGE_PAYLOAD):
        return None
    t0 = time.monotonic()
    return lambda msg: print(f"ternary: [{time.monotonic() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def _packed_lines(out, st) -> list[str]:
    """The size breakdown of a default-layout packed file."""
    codes = "row codes" if st.floats == "mixed" else f"{st.floats}"
    floats = (f"floats {st.floats_bytes:,d}" if st.floats == "fp16" else
              f"floats {st.floats_bytes:,d} = {codes} {st.float_codes_bytes:,d} + row scales "
              f"{st.float_scales_bytes:,d} + fp16 {st.plain_floats_bytes:,d}")
    rot = f", rotation signs {st.rotation_bytes:,d}" if st.hadamard_seed is not None else ""
    lines = [f"wrote packed file {out}: {st.bytes:,d} bytes (header {st.header_bytes:,d}, payload "
             f"{st.payload_bytes:,d} {st.compress}{_detail(st)}; raw payload {st.raw_payload:,d}: codes {st.codes_bytes:,d}, "
             f"scales {st.scales_bytes:,d}, {floats}{rot})"]
    if st.floats != "fp16" and st.float_kinds:
        lines.append("  float matrices: " + ", ".join(f"{n} {k}" for k, n in sorted(st.float_kinds.items()))
                     + f" (--floats {st.floats})")
    if st.hadamard_seed is not None:
        lines.append(f"  ternary weights ternarized after a seeded Hadamard rotation (seed {st.hadamard_seed}); "
                     "loaded as T(W R) R^T in float32")
    if st.ternary_weights:
        line = (f"  {st.ternary_weights:,d} ternary weights: {st.bits_per_ternary_weight:.3f} bits each for the whole "
                f"file; codes alone {st.code_bits_per_weight:.3f} (base 3)")
        if st.code_bits_per_weight_compressed is not None:
            line += f", {st.code_bits_per_weight_compressed:.3f} compressed"
        lines.append(line)
    else:
        lines.append(f"  no ternary weights (ternary disabled): floats stored as {st.floats}")
    return lines


def _detail(st) -> str:
    """The compressor's level where the payload's size chose it (packed_codecs.zstd_level): else ""."""
    if st.compress in ("zstd", "zstd-22") and "multi" in st.compression:
        return f" ({st.compression.removeprefix('zstd ')}: raw payload over 16 MiB)"
    return ""


def _convert_quantized(args, src) -> int:
    """--to hf-bitnet (transformers BitNet, 2-bit packed) and --to gguf (llama.cpp TQ2_0 / TQ1_0)."""
    if args.compress is not None or args.floats is not None or args.dtype != "float32":
        raise CliError(f"--compress, --floats and --dtype do not apply to --to {args.to}")
    if args.to == "hf-bitnet":
        from convert.formats.hf_bitnet import to_hf_bitnet
        r = to_hf_bitnet(src, args.out, force=args.force)
        for w in r["warnings"]:
            print(f"ternary: warning: {w}", file=sys.stderr)
        print(f"wrote BitNet Qwen3 (transformers AutoBitLinear, offline) {r['out']}: {r['bytes']:,d} bytes, "
              f"{r['tensors']} tensors ({r['packed']} ternary linears 2-bit packed, per-tensor scale); "
              f"tokenizer {r['tokenizer']}")
        return 0
    from convert.formats.gguf_export import to_gguf
    r = to_gguf(src, args.out, gguf_type=args.gguf_type or "TQ2_0", float_type=args.gguf_float or "f16",
                force=args.force, no_tokenizer=args.no_tokenizer)
    for w in r["warnings"]:
        print(f"ternary: warning: {w}", file=sys.stderr)
    scales = ("exact up to fp16 rounding" if r["exact_scales"]
              else "one per 256-block, averaged over groups (LOSSY)")
    print(f"wrote GGUF (llama.cpp qwen3, {r['gguf_type']}) {r['out']}: {r['bytes']:,d} bytes, {r['tensors']} tensors; "
          f"{r['ternary']} ternary weights at {r['bits_per_ternary_weight']:.4f} bits each\n"
          f"  codes exact (checked by dequantizing every block); scales {scales}; max weight error "
          f"{r['max_abs_weight_error']:.3g} ({r['max_rel_weight_error']:.3g} of the largest scale)\n"
          f"  tokenizer {r['tokenizer']}")
    return 0


def register(subs) -> None:
    c = sub(subs, "convert", "Export a checkpoint: canonical, packed (base-3 + LZMA/zstd), hf, mlx-lm, hf-bitnet or gguf.",
            "  ternary convert runs/smoke-mlx --to canonical --out runs/smoke-clean\n"
            "  ternary convert runs/smoke-mlx --to packed --out smoke.tpk\n"
            "  ternary convert runs/smoke-mlx --to packed --out smoke.tpk --compress none\n"
            "  ternary convert runs/smoke-mlx --to packed --out smoke.tpk --floats int8 --compress zstd\n"
            "  ternary convert runs/pg --to packed --artifact pg-record --out pg.tpk   (parameter-golf's budget)\n"
            "  ternary convert runs/smoke-mlx --to packed --out smoke.tpk --floats mixed --compress zstd-22 --hadamard\n"
            "  ternary convert runs/smoke-mlx --to gguf --out smoke.gguf     (the smoke model: every format below)\n"
            "  ternary convert ckpt/qwen3 --to hf --out qwen3-hf           (Qwen3ForCausalLM.from_pretrained)\n"
            "  ternary convert ckpt/qwen3 --to mlx-lm --out qwen3-mlx-lm   (mlx_lm.load; MLX groups of 64/128)\n"
            "  ternary convert ckpt/qwen3 --to hf-bitnet --out qwen3-bitnet  (AutoModelForCausalLM; group_size 0)\n"
            "  ternary convert ckpt/qwen3 --to gguf --out qwen3.gguf          (llama.cpp; TQ2_0)\n"
            "  ternary convert ckpt/qwen3 --to gguf --gguf-type TQ1_0 --gguf-float f32 --out qwen3-tq1.gguf\n"
            "\nhf, mlx-lm, hf-bitnet and gguf need a stock Qwen3 shape (SwiGLU, q/k norm, no soft-cap) and\n"
            "refuse any other by name. Stock formats per preset (`ternary presets` shows the same):\n"
            "  all (hf, mlx-lm, hf-bitnet, gguf)  smoke, mac-stock\n"
            "  hf, mlx-lm, gguf                   qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b (group 128; hf-bitnet needs 0)\n"
            "  none (canonical, packed only)      mac-ablation, pg-baseline, pg-ternary (parameter-golf options)\n\n"
            "packed: one file, a JSON header (config, tensor table) and base-3 codes (5 per byte), fp16 scales\n"
            "and the other parameters in fp16 (--floats int8: float matrices such as the embedding in per-row\n"
            "absmax int8, each element within half a row scale; norm gains stay fp16), compressed (--compress\n"
            "auto, the default: LZMA up to 16 MiB of raw payload, zstd level 9 on --threads threads above, so that\n"
            "Qwen3-0.6B packs in well under a minute; the level used is printed) or not at all; load it with\n"
            "convert.formats.packed.load_packed or score it with `ternary eval FILE`.\n"
            "The ternary forward pass is kept up to fp16 rounding of the scales (<= 2^-11 relative); latent\n"
            "weights are not.\n"
            "--floats int6 / int5: every float matrix in per-row absmax codes of [-31, 31] / [-15, 15] (one byte\n"
            "each, left to the compressor); --floats mixed: parameter-golf's 1.1558 record's rule, int5 MLP and\n"
            "int6 attention matrices, int6 other matrices, int8 an untied head, fp16 the embedding and matrices\n"
            "of <= 8192 values (ternary weights stay base-3 codes). --compress zstd-22: zstd at level 22, as\n"
            "those records write (the slow maximum: about 1-3 MB/s, minutes for a 0.6B model). --hadamard:\n"
            "each ternary weight is ternarized after a seeded random Hadamard rotation R of its input dim\n"
            "(blocks of the largest power of two dividing the group size) and loads as the float32 matrix\n"
            "T(W R) R^T (R orthogonal: W R R^T = W), run with ternary projection off. These three print the\n"
            "round trip as pg-record does (--backend, --eval-tokens).\n"
            "--artifact pg-record: parameter-golf's ternary record's storage instead: codes quantized from the\n"
            "fp16 group scales, float 2-D tensors in fp8 e4m3, 1-D ones fp16, LZMA; read back with its\n"
            "shrinkage fix (W = q * s / mean|q| per group, not q * s). It prints the file's bytes against\n"
            "parameter-golf's 16,000,000 (the whole file counts; parameter-golf adds its code's bytes, which\n"
            "are not counted here) and the round trip: val_bpb of the checkpoint and of the decoded artifact\n"
            "on the same validation tokens (the run's data.source must be there; --backend, --eval-tokens).\n\n"
            "hf-bitnet: transformers' BitNet quantizer (AutoBitLinear, offline): ternary linears 2-bit packed\n"
            "(4 codes per byte along the output dim) with one multiplying weight_scale per tensor, so only\n"
            "ternary.group_size = 0 exports (grouped or per-row scales are refused). AutoBitLinear always\n"
            "quantizes activations to 8 bits per token: exact for ternary.activation_bits = 8, a warned\n"
            "approximation otherwise.\n"
            "gguf: llama.cpp Qwen3 with TQ2_0 (2.06 bits/weight) or TQ1_0 (1.69): blocks of 256 values of a\n"
            "row with one fp16 scale, so every ternary weight's in_features must be a multiple of 256\n"
            "(refused otherwise). Codes are always exact; scales are exact up to fp16 rounding when\n"
            "group_size is 0 or a multiple of 256, else one least-squares scale per block (lossy, warned).\n"
            "Norms float32, other float matrices float16 (--gguf-float f32). Tokenizer metadata: SentencePiece\n"
            "as llama.cpp's llama vocabulary, a Hugging Face byte-level BPE directory as gpt2, the bytes\n"
            "tokenizer as 256 byte tokens; any other tokenizer is refused unless --no-tokenizer.", run)
    c.add_argument("src", metavar="SRC", help="a checkpoint directory, or a run directory holding checkpoint/")
    c.add_argument("--to", choices=("canonical", "packed", "hf", "mlx-lm", "hf-bitnet", "gguf"), required=True,
                   help="export format (hf: float32 Qwen3 for transformers; mlx-lm: 2-bit quantized for mlx_lm.load; "
                        "hf-bitnet: transformers BitNet 2-bit packed; gguf: llama.cpp TQ2_0/TQ1_0)")
    c.add_argument("--out", metavar="PATH", required=True,
                   help="directory (canonical, hf, mlx-lm, hf-bitnet) or file (packed, gguf) to write")
    c.add_argument("--gguf-type", choices=("TQ2_0", "TQ1_0"), default=None,
                   help="GGUF ternary block type (default TQ2_0; rows must be multiples of 256)")
    c.add_argument("--gguf-float", choices=("f16", "f32"), default=None,
                   help="GGUF type of the float matrices (embeddings, float head; default f16); norms are f32")
    c.add_argument("--no-tokenizer", action="store_true",
                   help="--to gguf: write no tokenizer metadata (tokenizer.ggml.model = no_vocab), e.g. when "
                        "data.tokenizer cannot be expressed; llama.cpp then cannot use the file for text")
    c.add_argument("--dtype", choices=("float32",), default="float32", help="canonical weight dtype (float32 only)")
    c.add_argument("--compress", choices=("auto", "lzma", "zstd", "zstd-22", "none"), default=None,
                   help="packed payload compression (default auto: lzma for a raw payload of up to 16 MiB, zstd "
                        "above it, so that a Qwen3-0.6B-sized model packs in seconds; lzma: xz preset 9e, the "
                        "smallest, 1-3 MB/s, minutes for a 400 MB payload; zstd: level 19 up to 16 MiB of raw "
                        "payload, about 1%% larger than lzma on the smoke model and 10-100x faster to read, level "
                        "9 on --threads threads above it (about 100 MB/s, +0.1%% bytes); zstd-22: level 22 at any "
                        "size, as parameter-golf's int5/int6 records write: the slow maximum)")
    c.add_argument("--floats", choices=("fp16", "int8", "int6", "int5", "mixed"), default=None,
                   help="packed float parameters (default fp16; int8/int6/int5: per-row absmax codes in "
                        "[-127,127]/[-31,31]/[-15,15] + one fp16 scale per row for every float matrix; mixed: the "
                        "1.1558 record's rule, int5 MLP, int6 attention and other matrices, int8 untied head, "
                        "embedding and matrices of <= 8192 values fp16; 1-D norm gains and controls stay fp16; "
                        "int6/int5/mixed measure the round trip)")
    c.add_argument("--hadamard", action="store_true",
                   help="--to packed: ternarize each ternary weight after a seeded random Hadamard rotation of its "
                        "input dim (W R); the file stores the signs and loads W_eff = T(W R) R^T in float32 "
                        "(export only; measures the round trip)")
    c.add_argument("--hadamard-seed", type=int, default=None, metavar="N",
                   help="--hadamard: seed of the rotation's random signs (default 0; stored in the file)")
    c.add_argument("--artifact", choices=("default", "pg-record"), default="default",
                   help="--to packed: pg-record stores what parameter-golf's ternary record stores (codes from "
                        "fp16 group scales, base 3, LZMA; float 2-D tensors fp8 e4m3, 1-D fp16; decoded with "
                        "its shrinkage fix, s / mean|q|), prints the size against its 16,000,000-byte budget "
                        "and the round-trip val_bpb next to the checkpoint's")
    c.add_argument("--backend", choices=NAMES, default=None,
                   help="--artifact pg-record: framework that scores the round trip (default: torch)")
    c.add_argument("--eval-tokens", type=positive_int, default=None, metavar="N",
                   help="--artifact pg-record: validation tokens the round trip scores (default: train.eval_tokens)")
    threads_arg(c, "--to packed: zstd's compression of a raw payload over 16 MiB (the same bytes for any count) "
                   "and the round trip's torch and OpenBLAS")
    c.add_argument("--force", action="store_true", help=FORCE_HELP)
