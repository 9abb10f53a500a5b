"""Parameter-golf's models as our configs: its hyperparameter names (environment variables), their
defaults in each script, and what each one becomes here.

Two flavors:
- "baseline": openai/parameter-golf `train_gpt.py`: a float model (9 x 512, relu^2, U-Net skips,
  residual mix with the embedding, per-branch scales, weightless RMSNorms, q gain, tanh soft-cap).
- "ternary-record": `records/track_10min_16mb/2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon/
  train_gpt_cuda_ternary.py`: the same skeleton with ternary projections (group BITNET_GROUP_SIZE,
  scale clamp 1e-8), fused QKV, a normed input on the output projections, a factored tied embedding,
  a vocabulary bias, a polynomial soft-cap and parameter-golf's "yarn" frequency ramp.

`run_config(flavor, env)` is the one mapping: the `pg-baseline` and `pg-ternary` presets are
`run_config("baseline", {})` and `run_config("ternary-record", RECORD_RUN_ENV)`, and `ternary
import-pg --env` goes through it too, so a key means the same thing everywhere. A key we cannot
express, or a value of a supported key that we cannot express, is refused by name (PgEnvError).
"""
from __future__ import annotations

from typing import Any

from shared.spec.config import ConfigError, RunConfig, _suggest

FLAVORS = ("baseline", "ternary-record")
FLOAT32_EPS = 1.1920928955078125e-07
WHOLE_SPLIT = 10**12  # train.eval_tokens: parameter-golf always scores the whole validation split  # torch.finfo(torch.float32).eps: F.rms_norm's eps=None in float32


class PgEnvError(ConfigError):
    """A parameter-golf hyperparameter we cannot express (named in the message)."""


# KEY -> (type, default) per flavor, as each script reads it (bool keys are int 0/1 there).
_SHARED = {
    "VOCAB_SIZE": (int, 1024), "NUM_KV_HEADS": (int, 4), "MODEL_DIM": (int, 512), "NUM_HEADS": (int, 8),
    "MLP_MULT": (int, 2), "TIE_EMBEDDINGS": (int, 1), "ROPE_BASE": (float, 10000.0),
    "LOGIT_SOFTCAP": (float, 30.0), "TIED_EMBED_INIT_STD": (float, 0.005), "QK_GAIN_INIT": (float, 1.5),
    "TRAIN_BATCH_TOKENS": (int, 524_288), "TRAIN_SEQ_LEN": (int, 1024), "SEED": (int, 1337),
    "EMBED_LR": (float, 0.6), "HEAD_LR": (float, 0.008), "TIED_EMBED_LR": (float, 0.05),
    "MATRIX_LR": (float, 0.04), "SCALAR_LR": (float, 0.04), "MUON_MOMENTUM": (float, 0.95),
    "MUON_MOMENTUM_WARMUP_START": (float, 0.85), "MUON_MOMENTUM_WARMUP_STEPS": (int, 500),
    "BETA1": (float, 0.9), "BETA2": (float, 0.95), "ADAM_EPS": (float, 1e-8), "GRAD_CLIP_NORM": (float, 0.0),
    "VAL_BATCH_SIZE": (int, 524_288), "WARMUP_STEPS": (int, 20),
}
DEFAULTS: dict[str, dict[str, tuple[type, Any]]] = {
    "baseline": {**_SHARED, "NUM_LAYERS": (int, 9), "ITERATIONS": (int, 20000), "WARMDOWN_ITERS": (int, 1200),
                 "MAX_WALLCLOCK_SECONDS": (float, 600.0), "MUON_BACKEND_STEPS": (int, 5),
                 "VAL_LOSS_EVERY": (int, 1000), "TRAIN_LOG_EVERY": (int, 200)},
    "ternary-record": {
        **_SHARED, "NUM_LAYERS": (int, 16), "ITERATIONS": (int, 2000), "WARMDOWN_FRACTION": (float, 0.2),
        "MAX_WALLCLOCK_SECONDS": (float, 0.0), "MUON_BACKEND_STEPS": (int, 5), "VAL_LOSS_EVERY": (int, 500),
        "TRAIN_LOG_EVERY": (int, 10), "ROPE_TYPE": (str, "rope"), "YARN_MAX_LEN": (int, 4096),
        "SOFTCAP_TYPE": (str, "poly"), "ACTIVATION": (str, "swiglu"), "EMBED_DIM": (int, 0),
        "BITNET_GROUP_SIZE": (int, 64), "FP_STORAGE": (str, "0"), "ADAM_LR": (float, 1e-3),
        "ADAM_WD": (float, 0.05), "MUON_WD": (float, 0.0), "MATRIX_OPTIMIZER": (str, "muon"),
        "BATCH_TOKENS_START": (int, 0), "BATCH_SCHEDULE_FRACTION": (float, 0.33),
        "SEQ_LEN_START": (int, 0), "SEQ_SCHEDULE_FRACTION": (float, 0.33),
        "SLIDING_EVAL": (int, 0), "SLIDING_EVAL_STRIDE": (int, 64), "SLIDING_BATCH_SIZE": (int, 64),
        "TEMP_SCALING": (int, 0), "COMPILE_MODE": (str, "default"), "CHURN_LOG_EVERY": (int, 500),
        # architecture switches this project does not implement: accepted only at their "off" value
        "BIGRAM_HASH": (int, 0), "MTP_HEADS": (int, 0), "TRAINING_DEPTH_RECURRENCE": (int, 1),
        "EVAL_DEPTH_RECURRENCE": (int, 1), "ATTN_PROJ_TYPE": (str, "standard"),
        "LOGIT_HEAD_TYPE": (str, "standard"), "TVERSKY_NUM_FEATURES": (int, 16),
        "TVERSKY_FEATURE_POOLS": (int, 0), "TVERSKY_MEMBERSHIP": (str, "sigmoid"), "DIFF_ATTN": (int, 0),
        "REFINER": (int, 0), "REFINER_KERNEL": (int, 3), "MLP_GROUPS": (int, 0), "SMEAR": (int, 0),
        "UNTIE_AT_FRACTION": (float, 0.0), "CORR_WEIGHT_LR": (float, 0.05),
        "VAL_MAX_TOKENS": (int, 500_000)},
}
# Keys that name files, logging or run identity: they do not change the model or its training.
NOT_MODEL = frozenset({"DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "TRAIN_LOG_EVERY",
                       "CHURN_LOG_EVERY", "COMPILE_MODE", "OMP_NUM_THREADS", "VAL_BATCH_SIZE",
                       "SLIDING_BATCH_SIZE", "VAL_MAX_TOKENS"})
# Switches we accept only at these values (the record's TRAINING_DEPTH_RECURRENCE 0 and 1 both mean
# one pass: it loops max(1, n) times); anything else is refused with the reason.
_OFF_ONLY: dict[str, tuple[tuple, str]] = {
    "BIGRAM_HASH": ((0,), "the bigram-hash embedding"), "MTP_HEADS": ((0,), "multi-token prediction heads"),
    "TRAINING_DEPTH_RECURRENCE": ((0, 1), "depth recurrence"), "EVAL_DEPTH_RECURRENCE": ((0, 1), "depth recurrence"),
    "ATTN_PROJ_TYPE": (("standard",), "Tversky projections"), "LOGIT_HEAD_TYPE": (("standard",), "a Tversky head"),
    "DIFF_ATTN": ((0,), "differential attention"), "REFINER": ((0,), "the causal-conv refiner"),
    "MLP_GROUPS": ((0,), "grouped MLPs"), "SMEAR": ((0,), "the smear gate"),
    "UNTIE_AT_FRACTION": ((0.0,), "untying the head during training"),
    "FP_STORAGE": (("0", "FP8"), "FP4 storage (only FP8 QAT is supported)"),
    "TIE_EMBEDDINGS": ((0, 1), "the tied head's correction matrix (TIE_EMBEDDINGS=2)"),
}
# The ternary record's run script (run_cuda_ternary.sh): every value it sets, as given there.
RECORD_RUN_ENV = {
    "ATTN_PROJ_TYPE": "standard", "LOGIT_HEAD_TYPE": "standard", "TVERSKY_MEMBERSHIP": "sigmoid",
    "TVERSKY_NUM_FEATURES": "0", "TVERSKY_FEATURE_POOLS": "0", "VOCAB_SIZE": "8192", "BITNET_GROUP_SIZE": "128",
    "BIGRAM_HASH": "0", "EMBED_DIM": "254", "TRAINING_DEPTH_RECURRENCE": "0", "EVAL_DEPTH_RECURRENCE": "0",
    "NUM_LAYERS": "10", "MODEL_DIM": "768", "NUM_KV_HEADS": "4", "NUM_HEADS": "8", "DIFF_ATTN": "0",
    "MLP_MULT": "4", "MLP_GROUPS": "0", "MATRIX_OPTIMIZER": "muon", "ADAM_LR": "0.05", "ADAM_WD": "0.05",
    "MUON_BACKEND_STEPS": "3", "MUON_MOMENTUM": "0.95", "MUON_MOMENTUM_WARMUP_START": "0.85",
    "MUON_MOMENTUM_WARMUP_STEPS": "500", "MUON_WD": "0.0", "MATRIX_LR": "0.04", "SCALAR_LR": "0.02",
    "TIED_EMBED_LR": "0.02", "WARMDOWN_FRACTION": "0.2", "LOGIT_SOFTCAP": "10", "QK_GAIN_INIT": "2.25",
    "ROPE_TYPE": "yarn", "YARN_MAX_LEN": "2048", "ROPE_BASE": "5000", "BATCH_TOKENS_START": "0",
    "BATCH_SCHEDULE_FRACTION": "0.33", "TRAIN_BATCH_TOKENS": "524288", "SEQ_LEN_START": "0",
    "SEQ_SCHEDULE_FRACTION": "0.0", "TRAIN_SEQ_LEN": "1024", "SMEAR": "0", "ITERATIONS": "10000",
    "WARMUP_STEPS": "5", "MAX_WALLCLOCK_SECONDS": "599", "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "1000",
    "CHURN_LOG_EVERY": "0", "VAL_MAX_TOKENS": "0", "TIE_EMBEDDINGS": "1", "UNTIE_AT_FRACTION": "0.00",
    "HEAD_LR": "0.02", "CORR_WEIGHT_LR": "0.02", "ACTIVATION": "relu2", "SOFTCAP_TYPE": "poly",
    "MTP_HEADS": "0", "REFINER": "0", "REFINER_KERNEL": "3", "SLIDING_EVAL": "1", "SLIDING_EVAL_STRIDE": "16",
    "SLIDING_BATCH_SIZE": "256", "TEMP_SCALING": "1", "FP_STORAGE": "FP8", "SEED": "42",
    "COMPILE_MODE": "default",
}
_ACTIVATIONS = {"swiglu": "silu", "relu": "relu", "relu2": "relu2", "leaky_relu": "leaky_relu"}


def resolve_env(flavor: str, env: dict[str, str]) -> dict[str, Any]:
    """Every hyperparameter of `flavor`: `env`'s values parsed as the script parses them, the
    script's defaults for the rest. Unknown keys, bad values and unsupported switches are refused."""
    if flavor not in FLAVORS:
        raise PgEnvError(f"unknown flavor {flavor!r}{_suggest(flavor, FLAVORS)}; choose one of {', '.join(FLAVORS)}")
    table = DEFAULTS[flavor]
    unknown = [k for k in env if k not in table and k not in NOT_MODEL]
    if unknown:
        k = unknown[0]
        raise PgEnvError(f"{k}: not a hyperparameter of parameter-golf's {flavor} script{_suggest(k, table)}")
    values = {k: d for k, (_, d) in table.items()}
    for k, raw in env.items():
        if k in table:
            values[k] = _parse(k, raw, table[k][0])
    for k, (allowed, what) in _OFF_ONLY.items():
        if k in values and values[k] not in allowed:
            raise PgEnvError(f"{k}={env.get(k, values[k])}: {what} cannot be expressed here "
                             f"(supported: {', '.join(map(str, allowed))})")
    return values


def _parse(key: str, raw: str, typ: type) -> Any:
    try:
        return typ(str(raw).strip())
    except ValueError:
        raise PgEnvError(f"{key}={raw!r}: not {'an integer' if typ is int else 'a number'}") from None


def _model(flavor: str, v: dict[str, Any]) -> dict[str, Any]:
    dim, heads, tied = v["MODEL_DIM"], v["NUM_HEADS"], bool(v["TIE_EMBEDDINGS"])
    if heads <= 0 or dim % heads:
        raise PgEnvError(f"MODEL_DIM={dim} is not a multiple of NUM_HEADS={heads}")
    m = dict(vocab_size=v["VOCAB_SIZE"], hidden_size=dim, intermediate_size=v["MLP_MULT"] * dim,
             num_hidden_layers=v["NUM_LAYERS"], num_attention_heads=heads, num_key_value_heads=v["NUM_KV_HEADS"],
             head_dim=dim // heads, rope_theta=v["ROPE_BASE"], rms_norm_eps=FLOAT32_EPS,
             max_position_embeddings=v["TRAIN_SEQ_LEN"], tie_word_embeddings=tied, qk_norm=True,
             rms_norm_weights=False, embed_norm=True, unet_skips=True, residual_mix=True, branch_scales=True,
             qk_gain=v["QK_GAIN_INIT"], final_logit_softcapping=v["LOGIT_SOFTCAP"], hidden_act="relu2",
             zero_init_output_proj=True, zero_init_lm_head=not tied,
             embed_init_std=v["TIED_EMBED_INIT_STD"] if tied else None)
    if flavor == "baseline":
        return m
    act = v["ACTIVATION"]
    if act not in _ACTIVATIONS:
        raise PgEnvError(f"ACTIVATION={act}: not one of {', '.join(_ACTIVATIONS)}")
    if v["SOFTCAP_TYPE"] not in ("poly", "tanh"):
        raise PgEnvError(f"SOFTCAP_TYPE={v['SOFTCAP_TYPE']}: not one of poly, tanh")
    if v["ROPE_TYPE"] not in ("rope", "yarn"):
        raise PgEnvError(f"ROPE_TYPE={v['ROPE_TYPE']}: not one of rope, yarn")
    embed_dim = v["EMBED_DIM"]
    m.update(hidden_act=_ACTIVATIONS[act], vocab_bias=True, out_proj_norm=True, fused_qkv=True,
             fused_gate_up=act == "swiglu", final_logit_softcapping_type=v["SOFTCAP_TYPE"],
             embed_dim=embed_dim if 0 < embed_dim != dim else None,
             rope_ramp_factor=v["YARN_MAX_LEN"] / v["TRAIN_SEQ_LEN"] if v["ROPE_TYPE"] == "yarn" else None,
             max_position_embeddings=max(v["TRAIN_SEQ_LEN"], v["YARN_MAX_LEN"]))
    if act == "leaky_relu":
        m["leaky_relu_slope"] = 0.01  # the record hard-codes F.leaky_relu(negative_slope=0.01)
    return m


def _ternary(flavor: str, v: dict[str, Any]) -> dict[str, Any]:
    if flavor == "baseline":
        return dict(enabled=False)
    return dict(enabled=True, group_size=v["BITNET_GROUP_SIZE"], eps=1e-8, targets=["attn", "mlp"],
                float_qat="fp8" if v["FP_STORAGE"] == "FP8" else None)


def _train(flavor: str, v: dict[str, Any]) -> dict[str, Any]:
    seq, tokens, tied = v["TRAIN_SEQ_LEN"], v["TRAIN_BATCH_TOKENS"], bool(v["TIE_EMBEDDINGS"])
    if seq <= 0 or tokens % seq:
        raise PgEnvError(f"TRAIN_BATCH_TOKENS={tokens} is not a multiple of TRAIN_SEQ_LEN={seq}")
    rows = tokens // seq
    # parameter-golf runs 8 // WORLD_SIZE micro-batches per step (8 on one GPU, 1 on 8): one process
    # here takes the single-GPU split; with torchrun on 8 ranks set train.grad_accum=1.
    accum = 8 if rows % 8 == 0 else 1
    t = dict(steps=v["ITERATIONS"], seq_len=seq, batch_size=rows // accum, grad_accum=accum, optimizer="muon",
             lr=v["SCALAR_LR"], muon_lr=v["MATRIX_LR"], lr_matrix=v["MATRIX_LR"], lr_scalar=v["SCALAR_LR"],
             lr_embed=v["TIED_EMBED_LR"] if tied else v["EMBED_LR"], lr_head=v["HEAD_LR"],
             muon_momentum=v["MUON_MOMENTUM"], muon_momentum_warmup_start=v["MUON_MOMENTUM_WARMUP_START"],
             muon_momentum_warmup_steps=v["MUON_MOMENTUM_WARMUP_STEPS"], muon_ns_steps=v["MUON_BACKEND_STEPS"],
             beta1=v["BETA1"], beta2=v["BETA2"], adam_eps=v["ADAM_EPS"], grad_clip=v["GRAD_CLIP_NORM"],
             warmup_steps=0,  # parameter-golf's WARMUP_STEPS compile the step, then restore the initial state
             schedule="warmdown", seed=v["SEED"], z_loss=0.0,
             time_budget_s=v["MAX_WALLCLOCK_SECONDS"] or None, weight_decay=0.0,
             eval_every=v["VAL_LOSS_EVERY"], eval_tokens=WHOLE_SPLIT)
    if flavor == "baseline":
        t.update(warmdown_steps=v["WARMDOWN_ITERS"])
        return t
    if v["MATRIX_OPTIMIZER"] not in ("muon", "adamw"):
        raise PgEnvError(f"MATRIX_OPTIMIZER={v['MATRIX_OPTIMIZER']}: not one of muon, adamw")
    t.update(warmdown_frac=v["WARMDOWN_FRACTION"], z_loss=1e-4, muon_weight_decay=v["MUON_WD"],
             optimizer="muon" if v["MATRIX_OPTIMIZER"] == "muon" else "adamw",
             batch_tokens_start=v["BATCH_TOKENS_START"], batch_schedule_frac=v["BATCH_SCHEDULE_FRACTION"],
             seq_len_start=v["SEQ_LEN_START"], seq_schedule_frac=v["SEQ_SCHEDULE_FRACTION"],
             eval_stride=v["SLIDING_EVAL_STRIDE"] if v["SLIDING_EVAL"] else None,
             temperature_scaling=bool(v["TEMP_SCALING"]))
    if v["MATRIX_OPTIMIZER"] == "adamw":
        if v["ADAM_WD"]:
            raise PgEnvError(f"MATRIX_OPTIMIZER=adamw with ADAM_WD={v['ADAM_WD']}: parameter-golf decays only "
                             "the block matrices; train.weight_decay here also decays the embedding (set ADAM_WD=0)")
        t.update(lr_matrix=v["ADAM_LR"])
    return t


def run_config(flavor: str, env: dict[str, str] | None = None) -> RunConfig:
    """The RunConfig of parameter-golf's `flavor` script run with `env` (unset keys: its defaults)."""
    v = resolve_env(flavor, dict(env or {}))
    d = {"model": _model(flavor, v), "ternary": _ternary(flavor, v), "train": _train(flavor, v)}
    try:
        return RunConfig.from_dict(d, where=f"parameter-golf {flavor}")
    except ConfigError as e:
        raise PgEnvError(str(e)) from None
