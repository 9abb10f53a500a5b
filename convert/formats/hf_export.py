"""Exports for stock tools: `ternary convert SRC --to hf|mlx-lm --out DIR` (convert/commands/convert.py).

hf: a float Qwen3 directory that `transformers.Qwen3ForCausalLM.from_pretrained(DIR)` loads:
    config.json (Qwen3ForCausalLM, model_type qwen3, the Hugging Face keys of our model config),
    model.safetensors (float32; every ternary weight dequantized to W_t = q * s, i.e.
    shared.spec.ternary.ternary_weight at lambda 1; other parameters as stored; tied embeddings: no
    lm_head.weight), and tokenizer files (convert/formats/hf_tokenizer.py: a Hugging Face
    directory's own, or a tokenizer.json built for a SentencePiece BPE model or the bytes tokenizer).
    The forward pass of the exported model is the ternary forward pass of the checkpoint.

mlx-lm: the same model in MLX's 2-bit affine quantized layout, which stock `mlx_lm.load(DIR)` reads:
    for each ternary weight, `weight` is uint32 holding 16 two-bit values each (value j of a word in
    bits 2j..2j+1, lowest first), the value being code + 1 in {0, 1, 2}; `scales` = s and
    `biases` = -s per group, so scales * (q + 1) + biases = q * s exactly. config.json carries
    "quantization": {"group_size": g, "bits": 2}. MLX quantizes with groups g of 64 or 128 only: our
    group size G is used as g when it is 64 or 128; a per-tensor scale (G = 0) or a G that is a
    multiple of 128 (else 64) is stored with g = 128 (else 64), each scale repeated over the MLX groups
    it covers, which is exact; any other G is refused. Every packed tensor is checked against
    `mx.dequantize`.

Options that stock Qwen3 cannot express are refused with an error naming them: every model option
at a non-default value that the format does not declare in shared/spec/options.py (model.qk_norm =
false, model.hidden_act = relu2, ...), and ternary.activation_bits.
Both exports are atomic: written in a temporary sibling folder, then renamed to DIR. Each also holds
ternary_export.json, the marker by which --force recognises our own export (convert/formats/replace.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from convert.formats.hf_tokenizer import write_files
from convert.formats.replace import check_dir_out, write_marker
from shared.spec.atomic_dir import discard, staging_dir, swap_dir
from shared.spec.checkpoint import CheckpointError, read_checkpoint
from shared.spec.config import ConfigError, RunConfig
from shared.spec.options import inexpressible
from shared.spec.params import parameter_shapes, ternary_parameters
from shared.spec.ternary import quantize

MLX_GROUP_SIZES = (64, 128)


def check_expressible(config: RunConfig, fmt: str = "hf") -> None:
    """Refuse, by name, every model option at a non-default value that `fmt` has not declared it can
    express (shared/spec/options.py: an allowlist), and activation quantization, which stock Qwen3 lacks."""
    m, t = config.model, config.ternary
    bad = inexpressible(m, fmt)
    if t.enabled and t.activation_bits:
        bad.append(f"ternary.activation_bits = {t.activation_bits} (Qwen3 has no activation quantization)")
    if bad:
        raise ConfigError(f"--to {fmt}: this model cannot be expressed as a stock Qwen3: " + "; ".join(bad))


def hf_config(config: RunConfig) -> dict[str, Any]:
    m = config.model
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_hidden_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_key_value_heads,
        "head_dim": m.head_dim or m.hidden_size // m.num_attention_heads,
        "max_position_embeddings": m.max_position_embeddings,
        "rope_theta": m.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": m.rms_norm_eps,
        "tie_word_embeddings": m.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "initializer_range": m.initializer_range,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _tokenizer_files(config: RunConfig) -> tuple[dict[str, bytes], str]:
    """(file name -> contents, a note for the report): convert/formats/hf_tokenizer.py."""
    from convert.formats.hf_tokenizer import tokenizer_files
    return tokenizer_files(config)


def _staged(out: Path, force: bool, write, fmt: str, src: str | Path) -> None:
    """Run write(tmp_dir) in a temporary sibling of `out`, add the export marker, then rename it to
    `out` (atomic); an existing `out` only if --force may replace it (convert/formats/replace.py)."""
    tmp = staging_dir(out)  # also clears what killed earlier exports left behind
    try:
        write(tmp)
        write_marker(tmp, fmt, src)
        check_dir_out(out, src, fmt, force)  # (the callers checked before the work; it may have taken minutes)
        swap_dir(tmp, out)
    except BaseException:
        discard(tmp)
        raise


def _read(src) -> tuple[RunConfig, dict[str, np.ndarray], set[str]]:
    config, weights = read_checkpoint(src)
    return config, {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}, set(ternary_parameters(config))


def to_hf(src: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """The checkpoint `src` as a float32 Qwen3ForCausalLM directory at `out`."""
    from shared.spec.checkpoint import save_safetensors
    check_dir_out(Path(out), src, "hf", force)  # before the work
    config, weights, tern = _read(src)
    check_expressible(config, "hf")
    G, eps = config.ternary.group_size, config.ternary.eps
    tensors = {}
    for name in parameter_shapes(config.model):
        w = weights[name]
        if name in tern:
            q, s = quantize(w, G, eps)
            g = q.reshape(1, 1, -1) if G == 0 else q.reshape(w.shape[0], -1, G)
            w = (g.astype(np.float32) * s[..., None]).reshape(w.shape).astype(np.float32)
        tensors[name] = np.ascontiguousarray(w, np.float32)
    tok_files, tok_note = _tokenizer_files(config)
    out = Path(out)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config(config), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({"do_sample": False}) + "\n")
        save_safetensors(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_files(tok_files, tmp)

    _staged(out, force, write, "hf", src)
    return {"out": str(out), "tensors": len(tensors), "ternary": len(tern), "tokenizer": tok_note,
            "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}


# ---- mlx-lm ---------------------------------------------------------------------------------------
def pack_mlx_2bit(codes: np.ndarray) -> np.ndarray:
    """(out, in) int8 codes in {-1,0,1} -> (out, in // 16) uint32, value j of a word = code + 1 at bits 2j."""
    out_, inp = codes.shape
    v = (codes.astype(np.int64) + 1).astype(np.uint32).reshape(out_, inp // 16, 16)
    shifts = (2 * np.arange(16, dtype=np.uint32))
    return np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint32)


def mlx_group(config: RunConfig, tern: set[str]) -> int:
    """The MLX quantization group g for our ternary.group_size G (see the module doc), or ConfigError."""
    G = config.ternary.group_size
    if G in MLX_GROUP_SIZES:
        return G
    shapes = parameter_shapes(config.model)
    for g in sorted(MLX_GROUP_SIZES, reverse=True):  # the larger group: fewer repeated scales
        if (G == 0 or G % g == 0) and all(shapes[n][1] % g == 0 for n in tern):
            return g
    why = ("a per-tensor scale needs every ternary in_features to be a multiple of 64" if G == 0 else
           "it is neither 64 nor 128 nor a multiple of 64 (so that each MLX group lies in one of its groups)")
    raise ConfigError(f"--to mlx-lm: ternary.group_size = {G} cannot be stored in MLX's quantized layout "
                      f"(groups of {' or '.join(map(str, MLX_GROUP_SIZES))}): {why}")


def mlx_scales(s: np.ndarray, G: int, g: int, shape: tuple[int, int]) -> np.ndarray:
    """Our scales s (one per G inputs of a row; G = 0: one for the tensor) as one per g inputs of a row."""
    if G == 0:
        return np.full((shape[0], shape[1] // g), s.reshape(-1)[0], np.float32)
    return np.repeat(s, G // g, axis=1).astype(np.float32)


def to_mlx_lm(src: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """The checkpoint `src` in mlx-lm's 2-bit affine quantized Qwen3 layout at `out`."""
    import mlx.core as mx
    check_dir_out(Path(out), src, "mlx-lm", force)  # before the work
    config, weights, tern = _read(src)
    check_expressible(config, "mlx-lm")
    G, eps = config.ternary.group_size, config.ternary.eps
    if not tern:
        raise ConfigError("--to mlx-lm: this checkpoint has no ternary weights (ternary disabled); "
                          "use --to hf for a float export")
    g = mlx_group(config, tern)
    tensors: dict[str, mx.array] = {}
    for name in parameter_shapes(config.model):
        w = weights[name]
        if name not in tern:
            tensors[name] = mx.array(w)
            continue
        q, s = quantize(w, G, eps)
        s = mlx_scales(s, G, g, w.shape)
        packed = mx.array(pack_mlx_2bit(q))
        scales, biases = mx.array(s), mx.array(-s)
        back = np.array(mx.dequantize(packed, scales, biases, group_size=g, bits=2))
        want = (q.reshape(w.shape[0], -1, g).astype(np.float32) * s[..., None]).reshape(w.shape)
        if not np.array_equal(back, want):
            raise CheckpointError(f"{name}: MLX 2-bit packing does not dequantize to q * s "
                                  f"(max error {np.abs(back - want).max():.3g})")
        base = name[:-len(".weight")]
        tensors[name] = packed
        tensors[base + ".scales"] = scales
        tensors[base + ".biases"] = biases
    cfg = hf_config(config)
    cfg["quantization"] = {"group_size": g, "bits": 2}
    tok_files, tok_note = _tokenizer_files(config)
    out = Path(out)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        mx.save_safetensors(str(tmp / "model.safetensors"), tensors, metadata={"format": "mlx"})
        write_files(tok_files, tmp)

    _staged(out, force, write, "mlx-lm", src)
    return {"out": str(out), "tensors": len(tensors), "ternary": len(tern), "tokenizer": tok_note,
            "group_size": g, "scales_repeated": G != g, "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}
