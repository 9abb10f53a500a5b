"""`ternary convert SRC --to gguf --out FILE.gguf [--gguf-type TQ2_0|TQ1_0]`: a llama.cpp Qwen3 GGUF.

Written with the `gguf` package (llama.cpp's own Python writer): architecture "qwen3", the hparams
llama.cpp reads for it (qwen3.block_count, context_length, embedding_length, feed_forward_length,
attention.head_count / head_count_kv / key_length / value_length / layer_norm_rms_epsilon,
rope.freq_base), general.file_type MOSTLY_TQ2_0 / MOSTLY_TQ1_0, and tensor names from
gguf.TensorNameMap for QWEN3 (token_embd, blk.N.attn_q, ..., output_norm, output; a tied head has
no output.weight, llama.cpp then reads token_embd).

Ternary weights: TQ2_0 (2 bits per code, 66 bytes per 256 values) or TQ1_0 (base 3, 54 bytes per 256),
both with ONE fp16 scale per block of 256 consecutive values of a row. So every ternary weight needs
in_features % 256 == 0 (refused otherwise: no block can be formed), and:
  - group_size 0 or a multiple of 256: every block lies in one group, codes are exact and the only
    loss is the fp16 rounding of the scale (relative error <= 2^-11 for normal fp16 numbers);
  - any other group size: a block spans several of our groups. The codes are still kept exactly; the
    block's scale is the least-squares one for those codes (sum q^2 s / sum q^2, the mean scale of
    its non-zero codes), so the weights change: reported as lossy with the max weight error.
The blocks are made by gguf.quants.quantize itself (fed q * block scale, which it maps back to q),
and every ternary tensor is dequantized again with gguf.quants.dequantize and checked code for code.
Float tensors: norms float32, other matrices float16 (--gguf-float f32 keeps them float32); a
ternary embedding is stored as its dequantized float matrix.
Activations: a GGUF has no activation-quantization setting; llama.cpp's CPU TQ kernels quantize
activations to 8 bits per block of 256 (Q8_K), not per token, so ternary.activation_bits = 8 is not
reproduced exactly (a warning says so).
Tokenizer (convert/formats/gguf_vocab.py): SentencePiece as llama.cpp's "llama" vocabulary, a Hugging
Face byte-level BPE directory as "gpt2", the built-in bytes tokenizer as 256 byte tokens; any other
data.tokenizer is refused (llama.cpp cannot load a GGUF without tokenizer.ggml.model) unless
no_tokenizer (--no-tokenizer) is given, which writes "no_vocab".
Written atomically (a temporary sibling file renamed to FILE).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from convert.formats import gguf_vocab
from convert.formats.hf_bitnet import check_qwen3_shape
from convert.formats.hf_export import _read
from convert.formats.replace import check_file_out
from shared.spec.checkpoint import CheckpointError
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import float_matrices, parameter_shapes
from shared.spec.ternary import quantize

QK = 256  # llama.cpp's super-block (QK_K): the TQ block size
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file: what --force may replace
GGUF_TYPES = ("TQ2_0", "TQ1_0")
ACT_WARNING = ("ternary.activation_bits = 8 has no GGUF setting: llama.cpp's CPU TQ kernels quantize activations "
               "to 8 bits per block of 256 values (Q8_K), not per token, so its outputs differ slightly from ours")
ACT_WARNING_FLOAT = ("lossy at run time: llama.cpp's CPU TQ kernels quantize activations to 8 bits per block of 256 "
                     "values (Q8_K); this model was trained with float activations (ternary.activation_bits unset), "
                     "so llama.cpp's outputs differ from ours more than rounding")


def gguf_name(name_map, name: str) -> str:
    got = name_map.get_name(name, try_suffixes=(".weight",))
    if got is None:
        raise CheckpointError(f"{name}: no llama.cpp QWEN3 tensor name for it")
    return got


def block_scales(q: np.ndarray, s: np.ndarray, group_size: int) -> tuple[np.ndarray, bool]:
    """Per 256-block scales (out, in // 256) for codes q (out, in) and our scales s; and whether they are exact."""
    out_, inp = q.shape
    if group_size == 0:
        return np.full((out_, inp // QK), s.reshape(()), np.float32), True
    if group_size % QK == 0:
        return np.repeat(s, group_size // QK, axis=1).astype(np.float32), True
    full = np.repeat(s, group_size, axis=1).reshape(out_, inp // QK, QK).astype(np.float64)
    q2 = (q.astype(np.float64) ** 2).reshape(out_, inp // QK, QK)
    n = q2.sum(-1)
    d = np.where(n > 0, (q2 * full).sum(-1) / np.maximum(n, 1), 0.0)
    return d.astype(np.float32), False


def quantize_ternary(name: str, w: np.ndarray, config: RunConfig, qtype) -> tuple[np.ndarray, dict[str, Any]]:
    """(TQ blocks, uint8 (out, in // 256 * type_size)), stats; the codes are checked after a round trip."""
    from gguf.quants import dequantize, quantize as gquantize
    G, eps = config.ternary.group_size, config.ternary.eps
    q, s = quantize(w, G, eps)
    d, exact = block_scales(q, s, G)
    d16 = d.astype(np.float16)
    if not np.all(np.isfinite(d16)):
        raise CheckpointError(f"{name}: a scale exceeds the float16 range of the GGUF block scale (max {d.max():.3g})")
    # gguf computes each block's scale as max|block| and its codes as round(x / scale): q * d maps back to q, d.
    blocks = gquantize((q.reshape(q.shape[0], -1, QK) * d[..., None]).reshape(q.shape).astype(np.float32), qtype)
    back = dequantize(blocks, qtype).reshape(q.shape)
    d_back = np.repeat(d16.astype(np.float32), QK, axis=1)
    codes_back = np.divide(back, d_back, out=np.zeros_like(back), where=d_back != 0)
    if not np.array_equal(codes_back, q.astype(np.float32)):
        raise CheckpointError(f"{name}: {qtype.name} blocks do not hold the ternary codes "
                              f"({int((codes_back != q).sum())} differ)")
    ours = (q.reshape(1, 1, -1) if G == 0 else q.reshape(q.shape[0], -1, G)).astype(np.float32) * s[..., None]
    err = np.abs(back - ours.reshape(q.shape))
    return blocks, {"exact_scales": exact, "max_abs_error": float(err.max()),
                    "max_rel_error": float(err.max() / max(float(s.max()), 1e-30))}


def to_gguf(src: str | Path, out: str | Path, *, gguf_type: str = "TQ2_0", float_type: str = "f16",
            force: bool = False, no_tokenizer: bool = False) -> dict[str, Any]:
    """The checkpoint `src` as a llama.cpp Qwen3 GGUF file at `out`, ternary weights as TQ2_0 / TQ1_0."""
    import gguf
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    if float_type not in ("f16", "f32"):
        raise ConfigError(f"--gguf-float {float_type!r}: choose f16 or f32")
    config, weights, tern = _read(src)
    check_qwen3_shape(config, "gguf")
    t = config.ternary
    if not tern:
        raise ConfigError("--to gguf: this checkpoint has no ternary weights (ternary disabled); "
                          "use --to hf and llama.cpp's own converter for a float model")
    shapes = parameter_shapes(config.model)
    qtype = gguf.GGMLQuantizationType[gguf_type]
    linear_tern = [n for n in tern if n != "model.embed_tokens.weight"]
    bad = [f"{n} (in {shapes[n][1]})" for n in linear_tern if shapes[n][1] % QK]
    if bad:
        raise ConfigError(f"--to gguf: {gguf_type} stores blocks of {QK} values of a row, so every ternary weight "
                          f"needs in_features % {QK} == 0: {', '.join(bad)}")
    vocab = gguf_vocab.plan(config, no_tokenizer)
    out = Path(out)
    check_file_out(out, src, "gguf", force, GGUF_MAGIC, "GGUF file")
    warnings = [ACT_WARNING if t.activation_bits else ACT_WARNING_FLOAT]
    if t.group_size and t.group_size % QK:
        warnings.append(f"lossy: ternary.group_size = {t.group_size} is not a multiple of {QK}, so {gguf_type} blocks "
                        "span several groups and get one scale each (codes are kept exactly; see the max weight error)")

    tensors, stats = _gguf_tensors(config, weights, tern, linear_tern, qtype, float_type)
    _write(out, src, config, gguf_type, tensors, vocab)
    n_tern = sum(int(np.prod(shapes[n])) for n in linear_tern)
    tern_bytes = sum(a.nbytes for _, a, raw in tensors if raw is not None)
    return {"out": str(out), "gguf_type": gguf_type, "tensors": len(tensors), "ternary": len(linear_tern),
            "bytes": out.stat().st_size, "ternary_bytes": tern_bytes,
            "bits_per_ternary_weight": 8 * tern_bytes / n_tern,
            "lossless_codes": True, "exact_scales": all(s["exact_scales"] for s in stats.values()),
            "max_abs_weight_error": max(s["max_abs_error"] for s in stats.values()),
            "max_rel_weight_error": max(s["max_rel_error"] for s in stats.values()),
            "tokenizer": vocab.note, "warnings": warnings, "per_tensor": stats}


def _gguf_tensors(config: RunConfig, weights: dict[str, np.ndarray], tern: set[str], linear_tern: list[str],
                  qtype, float_type: str) -> tuple[list[tuple[str, np.ndarray, Any]], dict[str, Any]]:
    """(GGUF name, data, raw dtype or None for floats) of every tensor, and the ternary ones' stats."""
    import gguf
    m, t = config.model, config.ternary
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.QWEN3, m.num_hidden_layers)
    fdt = np.float16 if float_type == "f16" else np.float32
    matrices = set(float_matrices(config)) | set(tern)
    tensors: list[tuple[str, np.ndarray, Any]] = []
    stats: dict[str, Any] = {}
    for name in parameter_shapes(m):
        w = weights[name]
        target = gguf_name(names, name)
        if name in linear_tern:
            blocks, st = quantize_ternary(name, w, config, qtype)
            tensors.append((target, blocks, qtype))
            stats[target] = st
            continue
        if name in tern:  # ternary embedding: its effective weight, as floats
            q, s = quantize(w, t.group_size, t.eps)
            g = q.reshape(1, 1, -1) if t.group_size == 0 else q.reshape(w.shape[0], -1, t.group_size)
            w = (g.astype(np.float32) * s[..., None]).reshape(w.shape)
        arr = np.ascontiguousarray(w, fdt if name in matrices else np.float32)  # llama.cpp: norms in f32
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{name}: values outside the {arr.dtype} range (max |w| {np.abs(w).max():.3g})")
        tensors.append((target, arr, None))
    return tensors, stats


def _write(out: Path, src: str | Path, config: RunConfig, gguf_type: str,
           tensors: list[tuple[str, np.ndarray, Any]], vocab: gguf_vocab.Vocab) -> None:
    """Write the GGUF file (metadata, tokenizer, tensors) through a temporary sibling renamed into place."""
    import gguf
    m = config.model
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(str(tmp), "qwen3")
        hd = m.head_dim or m.hidden_size // m.num_attention_heads
        writer.add_name(Path(src).name or "ternary")
        writer.add_block_count(m.num_hidden_layers)
        writer.add_context_length(m.max_position_embeddings)
        writer.add_embedding_length(m.hidden_size)
        writer.add_feed_forward_length(m.intermediate_size)
        writer.add_head_count(m.num_attention_heads)
        writer.add_head_count_kv(m.num_key_value_heads)
        writer.add_key_length(hd)
        writer.add_value_length(hd)
        writer.add_rope_freq_base(m.rope_theta)
        writer.add_layer_norm_rms_eps(m.rms_norm_eps)
        writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{gguf_type}"))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_vocab.write(writer, vocab, m.vocab_size)
        for target, arr, raw in tensors:
            writer.add_tensor(target, arr, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tensor_bytes(config: RunConfig, gguf_type: str = "TQ2_0", float_type: str = "f16") -> int | None:
    """Bytes of tensor data a gguf export would hold (None when it refuses this config)."""
    import gguf
    from shared.spec.params import ternary_parameters
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[gguf_type]]
    tern = set(ternary_parameters(config)) - {"model.embed_tokens.weight"}
    try:
        check_qwen3_shape(config, "gguf")
    except ConfigError:
        return None
    shapes = parameter_shapes(config.model)
    if not tern or any(shapes[n][1] % block for n in tern):
        return None
    matrices = set(float_matrices(config)) | set(ternary_parameters(config))
    n = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        n += size // block * type_size if name in tern else size * (2 if name in matrices and float_type == "f16" else 4)
    return n
