"""Run configuration: one set of dataclasses for both backends.

Model fields use Hugging Face `config.json` key names, so a Qwen3 `config.json` is a valid model
config. Files are TOML (run configs) or JSON (checkpoints); overrides are `section.key=value`.
Every error names the offending key and, for typos, the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
import tomli_w


class ConfigError(ValueError):
    """A config value, key or combination that cannot be used."""


# Ternary targets: which weights are projected to {-1, 0, +1} * scale.
TERNARY_TARGETS = ("attn", "mlp", "embed", "lm_head")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("constant", "cosine", "warmdown")
PARALLEL_MODES = ("ddp", "fsdp2")  # torch under torchrun: replicated (DDP) or sharded (FSDP2)
PRECISIONS = ("float32", "bf16")
TEACHER_DTYPES = ("float32", "bfloat16")
OPTIMIZER_STATE_DTYPES = ("float32", "bfloat16")  # train.optimizer_state_dtype
FLOAT_QAT_FORMATS = ("fp8",)  # ternary.float_qat: float8 e4m3 (torch.float8_e4m3fn) rounding of the float matrices

# Keys that Hugging Face writes into a Qwen3/Llama config.json and that do not change the math
# we implement; accepted on input so a stock config.json loads, never written back by us.
HF_INERT_KEYS = frozenset({
    "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
    "max_window_layers", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "sliding_window", "pretraining_tp", "_name_or_path",
})
# Hugging Face keys whose non-default values we do not implement; anything else is an error.
HF_UNSUPPORTED_VALUES = {
    "attention_bias": False,
    "rope_scaling": None,
    "use_sliding_window": False,
    "mlp_bias": False,
}


@dataclass
class ModelShape:
    """Decoder-only transformer shape. Names are Hugging Face's (Qwen3)."""
    model_type: str = "qwen3"
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (resolved on validate)
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02


def _with_options(base: type) -> type:
    """ModelConfig = the shape fields plus one field per model option of shared/spec/options.py (the
    option table is where an option's key, type, default and meaning are declared)."""
    from shared.spec.options import OPTIONS
    fields_ = [(o.key, o.type, field(default_factory=functools.partial(list, o.default)) if isinstance(o.default, list)
                else field(default=o.default)) for o in OPTIONS]  # a list default needs a fresh list each time
    cls = dataclasses.make_dataclass("ModelConfig", fields_, bases=(base,))
    cls.__module__ = __name__
    cls.__doc__ = (base.__doc__ + " Option fields (shared/spec/options.py): "
                   + ", ".join(o.key for o in OPTIONS) + ".")
    return cls


ModelConfig = _with_options(ModelShape)


@dataclass
class TernaryConfig:
    """BitNet b1.58-style projection (DESIGN 3.2)."""
    enabled: bool = True
    group_size: int = 128  # 0 = one scale per tensor
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    activation_bits: int | None = None  # None or 8 (per-token absmax)
    warmup_steps: int = 0  # lambda rises 0 -> 1 over these steps; 0 = fully ternary from step 0
    eps: float = 1e-5
    # "fp8": the float matrices (embedding, untied head, embed_proj*: shared.spec.params.float_qat_parameters)
    # pass through float8 e4m3 rounding in the forward, gradient straight through; None = off
    float_qat: str | None = None


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per micro-batch (per rank)
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 256
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for block matrices, AdamW for the rest)
    lr: float = 3e-3  # AdamW learning rate (embeddings, norms, head; everything under adamw)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    # Per-group peak learning rates (groups: shared.spec.params.ParamSpec.group); None = as above:
    # lr_matrix = muon_lr under muon, else lr; lr_scalar, lr_embed, lr_head = lr.
    lr_matrix: float | None = None
    lr_scalar: float | None = None
    lr_embed: float | None = None
    lr_head: float | None = None
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update (parameter-golf's MUON_BACKEND_STEPS)
    muon_momentum_warmup_start: float = 0.85  # momentum at step 0, rising linearly to muon_momentum ...
    muon_momentum_warmup_steps: int = 0  # ... over these steps; 0 = muon_momentum from the start
    muon_weight_decay: float | None = None  # decoupled decay of the Muon matrices; None = weight_decay
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    # "float32" or "bfloat16": the dtype AdamW's moments (exp_avg, exp_avg_sq) and Muon's momentum are
    # stored in (half their memory); every update still computes in float32 and rounds the new slot to
    # nearest even. The EMA stays float32; checkpoints hold the slots as float32 (exact) either way.
    optimizer_state_dtype: str = "float32"
    weight_decay: float = 0.0  # decoupled, on the AdamW tensors whose spec decays (matrices, embedding, head)
    z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2) added to the training loss; 0 = off
    # coefficient of the experts' load-balancing loss E * sum_e f_e P_e (model.moe_num_experts; 0 = off)
    moe_aux_loss: float = 0.0
    schedule: str = "constant"  # after warm-up: "constant", "cosine" or "warmdown"
    warmup_steps: int = 10
    warmdown_frac: float = 0.3  # "warmdown": linear decay to 0 over this final fraction of steps
    warmdown_steps: int | None = None  # "warmdown": over this many final steps instead (WARMDOWN_ITERS)
    min_lr_frac: float = 0.0  # "cosine": final LR as a fraction of the peak
    grad_clip: float = 1.0  # global-norm clip; 0 = off
    # Batch and sequence-length schedules (shared/train/schedule.py): one switch each, as parameter-golf.
    batch_tokens_start: int = 0  # tokens per optimizer step (all ranks) before the switch; 0 = off
    batch_schedule_frac: float = 0.33  # ... until step int(steps * this)
    seq_len_start: int = 0  # training sequence length before the switch; 0 = off
    seq_schedule_frac: float = 0.33  # ... until step int(steps * this)
    ema_decay: float | None = None  # EMA of weights, used for evaluation; saved as '<param>.ema' in the optimizer state
    # The EMA starts at step int(steps * ema_start_frac): before it, the EMA is the weights themselves
    # (decay 0), as parameter-golf's EMA_START_FRACTION copies the weights in at its start; 0 = from step 0
    ema_start_frac: float = 0.0
    # Learning rate multiplier of the decoder half's blocks (layers >= num_hidden_layers // 2, the
    # U-Net skips' popping half), every group of theirs; shared.train.optim_rules.lr_key
    decoder_lr_mult: float = 1.0
    eval_every: int = 100  # steps; 0 = only at the end
    eval_tokens: int = 131072  # validation tokens scored per evaluation (the whole split if smaller)
    eval_stride: int | None = None  # None: non-overlapping windows; N < seq_len: sliding, each scores its last N
    temperature_scaling: bool = False  # also report val metrics at a logit temperature chosen on training tokens
    # Score-first test-time training at the final evaluation and in `ternary eval` (shared/train/ttt.py):
    # "off", "full" (SGD on every latent weight) or "lora" (SGD on a rank-ttt_lora_rank delta of the
    # ttt_lora_targets projections); each chunk of ttt_chunk_tokens is scored before any step on it.
    # Reported as val_bpb_ttt beside val_bpb, never instead of it.
    ttt: str = "off"
    ttt_lr: float = 1e-3
    ttt_steps: int = 1  # SGD steps on each chunk (after scoring it)
    ttt_chunk_tokens: int = 2048  # scored targets per chunk; a multiple of seq_len
    ttt_lora_rank: int = 8
    ttt_lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    patience: int | None = None  # evaluations without improvement before stopping; None = never
    min_delta: float = 0.0  # improvement in val_loss (nats) that resets patience
    time_budget_s: float | None = None  # training wall-clock budget, excluding evaluation
    checkpoint_every: int = 0  # steps; 0 = only at the end (and on Ctrl-C)
    log_every: int = 10  # steps between host syncs for loss/throughput
    seed: int = 0
    # Knowledge distillation (`ternary train --teacher DIR`): a frozen teacher checkpoint, run as its
    # own config says (import it with --no-ternary for a float teacher). The loss is
    # (1 - distill_alpha) * CE + distill_alpha * T^2 * KL(teacher_T || student_T), T = distill_temperature.
    teacher: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    teacher_dtype: str = "float32"  # "float32" or "bfloat16": the frozen teacher's weights and forward (half the memory)
    # Tokens per chunk of the cross-entropy / distillation loss: the head projection and the float32
    # logits exist for at most this many tokens at once, forward and backward (the backward recomputes
    # each chunk's logits). 0 = the whole micro-batch at once (the default: small vocabularies need no
    # chunks); e.g. 1024 for a 151,936-token vocabulary. A micro-batch of at most this many tokens
    # takes the whole-batch path, bit for bit.
    loss_chunk_tokens: int = 0
    # Activation checkpointing: the backward keeps only each decoder layer's inputs and recomputes the
    # layer's inside (its activations and ternarized weights) when it reaches it: about one more
    # forward per step for the memory of one layer's activations instead of all of them.
    activation_checkpointing: bool = False
    # PyTorch on several processes (torchrun) and on CUDA; a CPU run ignores the last three (logged).
    parallel: str = "ddp"  # "ddp" (replicated model) or "fsdp2" (sharded, for models that do not fit)
    compile: bool = True  # torch.compile the training forward/backward (CUDA only)
    precision: str = "bf16"  # "bf16" (autocast on CUDA) or "float32"; the CPU always trains in float32
    tf32: bool = True  # TF32 matmuls (CUDA only)


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" (the embedded corpus) or a directory made by `ternary data prepare`
    tokenizer: str = "synthetic-bpe-512"  # a built-in name, a .model file, or an HF tokenizer directory
    synthetic_train_bytes: int = 4_000_000
    synthetic_val_bytes: int = 400_000
    seed: int = 0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    ternary: TernaryConfig = field(default_factory=TernaryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a table of sections, got {type(d).__name__}")
        _check_keys(d, _SECTIONS, where)
        kwargs = {}
        for name, section_cls in _SECTIONS.items():
            if name in d:
                kwargs[name] = _build(section_cls, d[name], f"{where}: {name}")
        return cls(**kwargs).validate()

    def to_toml(self) -> str:
        return tomli_w.dumps(_drop_none(self.to_dict()))

    def save_toml(self, path: str | Path) -> None:
        from shared.spec.atomic_dir import write_text_atomic
        write_text_atomic(Path(path), self.to_toml())

    @classmethod
    def load_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(data, where=str(path))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str = "config.json") -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON: {e}") from None
        return cls.from_dict(data, where=where)

    # ---- overrides --------------------------------------------------------------------------
    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply `section.key=value` strings; values are TOML literals (bare words are strings)."""
        d = self.to_dict()
        derived_head_dim = getattr(self.model, "_derived_head_dim", False)
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"override {a!r}: expected section.key=value, e.g. train.lr=3e-4")
            dotted, raw = a.split("=", 1)
            parts = dotted.strip().split(".")
            if len(parts) != 2:
                raise ConfigError(f"override {a!r}: key must be section.key, e.g. model.hidden_size")
            section, key = parts
            _check_keys({section: None}, _SECTIONS, "override")
            section_fields = {f.name for f in dataclasses.fields(_SECTIONS[section])}
            _check_keys({key: None}, section_fields, f"override {section}")
            d[section][key] = _parse_literal(raw.strip())
            if section == "model" and key in ("hidden_size", "num_attention_heads") and derived_head_dim:
                d["model"]["head_dim"] = None  # re-derive, unless head_dim itself is set
            if section == "model" and key == "head_dim":
                derived_head_dim = False
        return RunConfig.from_dict(d, where="config with overrides")

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        self._validate_model()
        self._validate_ternary()
        self._validate_train()
        return self

    def _validate_model(self) -> None:
        m = self.model
        if m.model_type not in ("qwen3", "llama", "ternary"):
            raise ConfigError(f"model.model_type: unsupported architecture {m.model_type!r}; "
                              "supported: qwen3, llama, ternary")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(m, k) <= 0:
                raise ConfigError(f"model.{k} must be positive, got {getattr(m, k)}")
        if m.head_dim is None:
            if m.hidden_size % m.num_attention_heads:
                raise ConfigError(
                    f"model.num_attention_heads={m.num_attention_heads} does not divide "
                    f"model.hidden_size={m.hidden_size} (set model.head_dim explicitly, or change either)")
            m.head_dim = m.hidden_size // m.num_attention_heads
            m._derived_head_dim = True  # not a field: lets an override of the width re-derive it
        if m.head_dim <= 0 or m.head_dim % 2:
            raise ConfigError(f"model.head_dim must be a positive even number (RoPE rotates pairs), got {m.head_dim}")
        if m.num_attention_heads % m.num_key_value_heads:
            raise ConfigError(f"model.num_key_value_heads={m.num_key_value_heads} must divide "
                              f"model.num_attention_heads={m.num_attention_heads} (grouped-query attention)")
        from shared.spec.options import OPTIONS, combination_problem
        for opt in OPTIONS:
            problem = opt.check(getattr(m, opt.key))
            if not problem and not opt.is_default(getattr(m, opt.key)):
                problem = opt.requires(getattr(m, opt.key), m)
            if problem:
                raise ConfigError(f"model.{opt.key}: {problem}")
        problem = combination_problem(m)
        if problem:
            raise ConfigError(problem)
        for k in ("rope_theta", "rms_norm_eps"):
            _require(f"model.{k}", getattr(m, k), getattr(m, k) > 0, "positive")
        _require("model.initializer_range", m.initializer_range, m.initializer_range >= 0, ">= 0")

    def _validate_ternary(self) -> None:
        m, t = self.model, self.ternary
        for tgt in t.targets:
            if tgt not in TERNARY_TARGETS:
                raise ConfigError(f"ternary.targets: unknown target {tgt!r}; valid: "
                                  f"{', '.join(TERNARY_TARGETS)}{_suggest(tgt, TERNARY_TARGETS)}")
        if m.tie_word_embeddings and (("embed" in t.targets) != ("lm_head" in t.targets)):
            raise ConfigError("ternary.targets: with model.tie_word_embeddings the embedding is the LM "
                              "head, so list both 'embed' and 'lm_head' or neither")
        if t.group_size < 0:
            raise ConfigError(f"ternary.group_size must be >= 0 (0 = per tensor), got {t.group_size}")
        if t.activation_bits not in (None, 8):
            raise ConfigError(f"ternary.activation_bits must be 8 or absent, got {t.activation_bits}")
        _require("ternary.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, ">= 0")
        _require("ternary.eps", t.eps, t.eps > 0, "positive")
        if t.float_qat is not None and t.float_qat not in FLOAT_QAT_FORMATS:
            raise ConfigError(f"ternary.float_qat: {t.float_qat!r} is not one of {', '.join(FLOAT_QAT_FORMATS)} "
                              f"(or absent = off){_suggest(t.float_qat, FLOAT_QAT_FORMATS)}")
        if t.enabled and t.group_size:
            from shared.spec.params import ternary_input_dims
            for name, in_dim in ternary_input_dims(self).items():
                if in_dim % t.group_size:
                    raise ConfigError(
                        f"ternary.group_size={t.group_size} does not divide the input dimension "
                        f"{in_dim} of {name}; choose a divisor of {in_dim} or 0 (per tensor)")

    def _validate_train(self) -> None:
        m, tr = self.model, self.train
        for key in ("batch_size", "seq_len", "grad_accum", "log_every", "eval_tokens", "lr", "muon_lr",
                    "adam_eps", "distill_temperature"):
            _require(f"train.{key}", getattr(tr, key), getattr(tr, key) > 0, "positive")
        for key in ("steps", "eval_every", "checkpoint_every", "warmup_steps", "grad_clip", "weight_decay",
                    "min_delta", "loss_chunk_tokens"):
            _require(f"train.{key}", getattr(tr, key), getattr(tr, key) >= 0, ">= 0")
        for key in ("warmdown_frac", "min_lr_frac", "distill_alpha"):
            _require(f"train.{key}", getattr(tr, key), 0 <= getattr(tr, key) <= 1, "in [0, 1]")
        for key in ("beta1", "beta2", "muon_momentum"):
            _require(f"train.{key}", getattr(tr, key), 0 <= getattr(tr, key) < 1, "in [0, 1)")
        for key, options in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("parallel", PARALLEL_MODES),
                             ("precision", PRECISIONS), ("teacher_dtype", TEACHER_DTYPES),
                             ("optimizer_state_dtype", OPTIMIZER_STATE_DTYPES)):
            if getattr(tr, key) not in options:
                raise ConfigError(f"train.{key}: {getattr(tr, key)!r} is not one of {', '.join(options)}"
                                  f"{_suggest(getattr(tr, key), options)}")
        if tr.eval_stride is not None and not 0 < tr.eval_stride <= tr.seq_len:
            raise ConfigError(f"train.eval_stride={tr.eval_stride} must be in 1..train.seq_len ({tr.seq_len}), "
                              "or absent for non-overlapping windows")
        if tr.seq_len > m.max_position_embeddings:
            raise ConfigError(f"train.seq_len={tr.seq_len} exceeds model.max_position_embeddings="
                              f"{m.max_position_embeddings}")
        if tr.ema_decay is not None:
            _require("train.ema_decay", tr.ema_decay, 0 < tr.ema_decay < 1, "in (0, 1) (or absent)")
        _require("train.ema_start_frac", tr.ema_start_frac, 0 <= tr.ema_start_frac < 1, "in [0, 1)")
        if tr.ema_start_frac and tr.ema_decay is None:
            raise ConfigError(f"train.ema_start_frac={tr.ema_start_frac:g} needs train.ema_decay "
                              "(the EMA it starts); set both or neither")
        _require("train.decoder_lr_mult", tr.decoder_lr_mult, tr.decoder_lr_mult >= 0,
                 ">= 0 (1 = the groups' own rates; 0 freezes the decoder half)")
        if tr.patience is not None:
            _require("train.patience", tr.patience, tr.patience >= 1,
                     ">= 1 (it counts evaluations; absent = never stop early)")
        if tr.time_budget_s is not None:
            _require("train.time_budget_s", tr.time_budget_s, tr.time_budget_s > 0, "positive (or absent)")
        self._validate_golf_training()
        self._validate_ttt()

    def _validate_ttt(self) -> None:
        """train.ttt_*: checked whatever the mode, so a bad value is refused before it is switched on."""
        tr = self.train
        from shared.train.ttt import TTT_MODES, lora_projection_names, lora_target_names
        if tr.ttt not in TTT_MODES:
            raise ConfigError(f"train.ttt: {tr.ttt!r} is not one of {', '.join(TTT_MODES)}{_suggest(tr.ttt, TTT_MODES)}")
        _require("train.ttt_lr", tr.ttt_lr, tr.ttt_lr > 0, "positive")
        for key in ("ttt_steps", "ttt_lora_rank"):
            _require(f"train.{key}", getattr(tr, key), getattr(tr, key) >= 1, ">= 1")
        _require("train.ttt_chunk_tokens", tr.ttt_chunk_tokens, tr.ttt_chunk_tokens >= 1, ">= 1")
        # the multiple of seq_len only binds when TTT is on: the default chunk must not refuse a
        # run at a sequence length that does not divide it
        if tr.ttt != "off" and tr.ttt_chunk_tokens % tr.seq_len:
            raise ConfigError(f"train.ttt_chunk_tokens must be a positive multiple of train.seq_len ({tr.seq_len}), "
                              f"got {tr.ttt_chunk_tokens}")
        from shared.spec.params import parameter_specs
        specs = parameter_specs(self.model)
        for target in tr.ttt_lora_targets:
            if not lora_target_names(specs, [target]):
                valid = sorted(set(lora_projection_names(specs).values()))
                raise ConfigError(f"train.ttt_lora_targets: {target!r} names no block projection of this model; "
                                  f"valid: {', '.join(valid)}{_suggest(target, valid)}")
        if tr.ttt != "off" and tr.eval_stride is not None:
            raise ConfigError(f"train.ttt = {tr.ttt!r} scores non-overlapping windows; unset train.eval_stride "
                              f"({tr.eval_stride}) or set train.ttt = \"off\"")

    def _validate_golf_training(self) -> None:
        """The parameter-golf training knobs (per-group rates, Muon details, z-loss, schedules)."""
        m, tr = self.model, self.train
        for key in ("lr_matrix", "lr_scalar", "lr_embed", "lr_head"):
            if getattr(tr, key) is not None:
                _require(f"train.{key}", getattr(tr, key), getattr(tr, key) >= 0,
                         ">= 0 (0 freezes the group; absent = train.lr / train.muon_lr)")
        _require("train.muon_ns_steps", tr.muon_ns_steps, tr.muon_ns_steps >= 1, ">= 1")
        _require("train.muon_momentum_warmup_start", tr.muon_momentum_warmup_start,
                 0 <= tr.muon_momentum_warmup_start < 1, "in [0, 1)")
        for key in ("muon_momentum_warmup_steps", "z_loss", "moe_aux_loss", "batch_tokens_start", "seq_len_start"):
            _require(f"train.{key}", getattr(tr, key), getattr(tr, key) >= 0, ">= 0 (0 = off)")
        if tr.activation_checkpointing and tr.moe_aux_loss:
            raise ConfigError(f"train.activation_checkpointing recomputes each decoder layer in the backward, but "
                              f"train.moe_aux_loss={tr.moe_aux_loss} collects the experts' balance loss as a side "
                              "effect of the layer's forward, which a recomputed layer cannot return; set one of "
                              "them off")
        if tr.moe_aux_loss and not m.moe_num_experts:
            raise ConfigError(f"train.moe_aux_loss={tr.moe_aux_loss} weights the experts' load-balancing loss, "
                              "but model.moe_num_experts is 0 (no experts)")
        if tr.muon_weight_decay is not None:
            _require("train.muon_weight_decay", tr.muon_weight_decay, tr.muon_weight_decay >= 0,
                     ">= 0 (absent = train.weight_decay)")
        for key in ("batch_schedule_frac", "seq_schedule_frac"):
            _require(f"train.{key}", getattr(tr, key), 0 <= getattr(tr, key) <= 1, "in [0, 1]")
        if tr.warmdown_steps is not None:
            _require("train.warmdown_steps", tr.warmdown_steps, tr.warmdown_steps >= 0, ">= 0 (or absent)")
            if tr.schedule != "warmdown":
                raise ConfigError(f"train.warmdown_steps={tr.warmdown_steps} only applies to "
                                  f"train.schedule = \"warmdown\", not {tr.schedule!r}")
        if tr.seq_len_start > m.max_position_embeddings:
            raise ConfigError(f"train.seq_len_start={tr.seq_len_start} exceeds model.max_position_embeddings="
                              f"{m.max_position_embeddings}")
        from shared.train.schedule import check_batch_schedule
        problem = check_batch_schedule(tr, world_size=1)
        if problem:
            raise ConfigError(problem)


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Read a Hugging Face Qwen3/Llama config.json dict into a ModelConfig (strictly)."""
    hf = dict(hf)
    fields_ = {f.name for f in dataclasses.fields(ModelConfig)}
    _check_keys(hf, fields_ | HF_INERT_KEYS | set(HF_UNSUPPORTED_VALUES) | {"rope_parameters", "layer_types"}, where)
    for k, ok in HF_UNSUPPORTED_VALUES.items():
        if hf.get(k) is not None and hf[k] != ok:
            raise ConfigError(f"{where}: {k}={hf[k]!r} is not supported (only {ok!r})")
    if hf.get("model_type", "qwen3") not in ("qwen3", "llama", "ternary"):
        raise ConfigError(f"{where}: model_type {hf['model_type']!r} is not supported; supported: qwen3, llama")
    # transformers >= 5 writes rope_parameters = {rope_type, rope_theta} instead of rope_theta.
    rope = hf.pop("rope_parameters", None)
    if rope is not None:
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"{where}: rope_parameters.rope_type={rope['rope_type']!r} is not supported "
                              "(only 'default')")
        hf.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if "partial_rotary_factor" in rope:  # Hugging Face's key and ours (model.partial_rotary_factor)
            hf.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise ConfigError(f"{where}: layer_types other than full_attention are not supported")
    kept = {k: v for k, v in hf.items() if k in fields_}
    if hf.get("model_type") == "llama":
        kept.setdefault("qk_norm", False)
    return _build(ModelConfig, kept, where)


# ---- helpers ----------------------------------------------------------------------------------
_SECTIONS = {"model": ModelConfig, "ternary": TernaryConfig, "train": TrainConfig, "data": DataConfig}


def _require(key: str, value: Any, ok: bool, rule: str) -> None:
    """One failed check, one key: `section.key must be <rule>, got <value>`."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(d: dict, valid, where: str) -> None:
    for k in d:
        if k not in valid:
            raise ConfigError(f"{where}: unknown key {k!r}{_suggest(k, valid)}; "
                              f"valid keys: {', '.join(sorted(valid))}")


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(d, names, where)
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field's type hint; ints are accepted for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML and JSON readers accept nan and inf; no setting means them
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover


def _parse_literal(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if "," in raw:
            return [_parse_literal(p.strip()) for p in raw.split(",") if p.strip()]
        return raw  # a bare word is a string: hidden_act=relu2


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
