"""Named configurations, one table. Looked up by exact name; each entry says where its numbers come from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.spec.config import ConfigError, RunConfig, _suggest
from shared.spec.pg_family import RECORD_RUN_ENV, run_config


@dataclass(frozen=True)
class Preset:
    note: str
    overrides: dict[str, dict[str, Any]]


# Training a Qwen3-sized model: a small learning rate and batch (the qwen3-* presets).
QWEN3_TRAIN = dict(lr=1e-4, seq_len=512, batch_size=2)
# Fine-tuning a pretrained model (what `ternary import-hf` stores as the checkpoint's train section,
# the start of `ternary train --init`): QWEN3_TRAIN, and evaluations of 16,384 tokens, minutes on a CPU
# at Qwen3-0.6B size where TrainConfig's 131,072 (sized for small models) take hours.
FINETUNE_TRAIN = dict(QWEN3_TRAIN, eval_tokens=16_384)


def _pg(flavor: str, env: dict | None = None, **sections: dict) -> dict[str, dict[str, Any]]:
    """The sections of parameter-golf's `flavor` run with `env` (shared/spec/pg_family.py), with
    `sections` overriding keys of ternary / train; the data section stays ours (the synthetic corpus
    unless --set data.* says otherwise)."""
    d = run_config(flavor, env).to_dict()
    out = {k: d[k] for k in ("model", "ternary", "train")}
    for name, over in sections.items():
        out[name] = {**out[name], **over}
    return out


def _qwen3(hidden, inter, layers, heads, kv, tie, note) -> Preset:
    return Preset(note, {
        "model": dict(model_type="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=tie, hidden_act="silu", qk_norm=True),
        "ternary": dict(group_size=128, targets=["attn", "mlp"]),
        "train": dict(QWEN3_TRAIN),
    })


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "Tiny stock Qwen3 (2 layers x 256, SwiGLU MLP 512, 4/2 heads of 64, vocab 512, tied, one ternary "
        "scale per tensor) sized so `ternary train --preset smoke` finishes in under three minutes on a "
        "2-core Linux CPU (64-token windows) and learns most of the embedded synthetic corpus; every width a "
        "multiple of 256 and group 0, so the model exports to every format (hf, mlx-lm, hf-bitnet, gguf).",
        {"model": dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
         "ternary": dict(group_size=0),
         "train": dict(steps=300, batch_size=32, seq_len=64, lr=3e-3, eval_every=100, eval_tokens=65536),
         "data": dict(synthetic_val_bytes=150_000)}),
    "mac-ablation": Preset(
        "pg-baseline made ternary at Mac scale: parameter-golf's train_gpt.py architecture exactly (9 x 512, "
        "8/4 heads, relu^2 MLP 2x, vocab 1024, tied, weightless norms, U-Net skips, residual mix, branch "
        "scales, q gain 1.5, soft-cap 30, its optimizer groups and rates), ternary group 128 on attn+mlp, "
        "16 x 1024 tokens per step for 2000 steps: minutes per run on an M-series Mac.",
        _pg("baseline", ternary=dict(enabled=True, group_size=128, targets=["attn", "mlp"]),
            train=dict(steps=2000, batch_size=16, grad_accum=1, warmdown_steps=400, time_budget_s=None,
                       eval_every=250, eval_tokens=262_144))),
    "mac-stock": Preset(
        "mac-ablation's size as a stock Qwen3 that every export format expresses (`ternary convert --to hf, "
        "mlx-lm, hf-bitnet, gguf`): the same 9 layers x 512, 8/4 heads, vocab 1024 and tied embeddings, "
        "with a SwiGLU MLP of 768 instead of relu^2 2x (+12% MLP weights), no parameter-golf block options, "
        "no logit soft-cap, one scale per tensor (group 0) and AdamW (lr 2e-3, 8 x 1024 tokens per step). "
        "Not trained against mac-ablation here.",
        {"model": dict(vocab_size=1024, hidden_size=512, intermediate_size=768, num_hidden_layers=9,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024),
         "ternary": dict(group_size=0),
         "train": dict(steps=2000, batch_size=8, seq_len=1024, lr=2e-3)}),
    "pg-baseline": Preset(
        "parameter-golf's train_gpt.py with its defaults (shared/spec/pg_family.py, flavor baseline): "
        "9 x 512, 8/4 heads, relu^2 MLP 2x, vocab 1024, tied (init std 0.005), soft-cap 30, RoPE 10000, "
        "q gain 1.5, Muon on the matrices (lr 0.04, 5 Newton-Schulz steps, momentum 0.85 -> 0.95 over 500 "
        "steps), tied embedding 0.05, scalars 0.04, 524,288 tokens per step (8 x 64 x 1024 on one process), "
        "warm-down over the last 1200 of 20,000 steps, a 600 s budget; float (no ternary).",
        _pg("baseline")),
    "pg-ternary": Preset(
        "parameter-golf's 16 MB ternary record (1.157 bpb; records/track_10min_16mb/"
        "2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon): every value its run_cuda_ternary.sh "
        "sets (shared/spec/pg_family.py RECORD_RUN_ENV): 10 x 768, 8/4 heads, relu^2 MLP 4x, vocab 8192, "
        "tied factored embedding (254), vocab bias, poly soft-cap 10, its 'yarn' RoPE ramp (base 5000, "
        "2048 / 1024), q gain 2.25, ternary group 128 with normed output projections, fp8 QAT of the "
        "float weights, Muon with 3 Newton-Schulz steps, z-loss 1e-4, warm-down 20%, 599 s, stride-16 "
        "sliding evaluation with temperature scaling.",
        _pg("ternary-record", RECORD_RUN_ENV)),
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, 8, True, "Qwen/Qwen3-0.6B config.json"),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, 8, True, "Qwen/Qwen3-1.7B config.json"),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, 8, True, "Qwen/Qwen3-4B config.json"),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, 8, False, "Qwen/Qwen3-8B config.json"),
}


def get_preset(name: str) -> RunConfig:
    """The resolved RunConfig of a preset (exact name)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; "
                          f"available: {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name].overrides, where=f"preset {name}")
