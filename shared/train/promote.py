"""Promote an ablation config to a GPU target: scale the shape to a budget, rescale learning rates,
size the batch from a memory estimate and the steps from a time budget (`ternary promote`).

Everything here is arithmetic on a RunConfig (no mlx, no torch). The rules, in one place:

Shape. The ablation's choices are kept (activation, optimizer, schedule, group size, norms, tied
embeddings, soft-cap, vocabulary and tokenizer, head_dim, initializer_range). Only width and depth
move:
- head_dim stays the ablation's; the number of query heads scales with the width (heads =
  width * heads0 / width0) and the KV heads keep the ablation's queries-per-KV-head ratio.
- A width is valid when it is a multiple of 64, gives a whole number of query and KV heads, and
  the group size divides every ternary input dimension (width, heads * head_dim, intermediate).
- intermediate_size keeps the ablation's ratio to the width, rounded to a multiple of
  lcm(64, group_size).
- depth follows the ablation's depth/width ratio: round(width * layers0 / width0), at least 1.
  Because valid widths are coarse (128 apart for 8/4 heads of 64), depth may then grow one layer
  at a time while the budget holds, but stays below the ratio depth of the next valid width: the
  shape stays within one width step of the ablation's aspect line.
- Of these candidates the largest one under the budget (total parameters, or packed artifact
  bytes) is chosen.

Learning rates (muP-style width transfer, base width = the ablation's hidden_size):
- optimizer "adamw": train.lr is multiplied by width0 / width. Adam's update has a fixed size per
  element, so a hidden matrix's change in output grows with fan-in; 1/width keeps it. The config
  has one AdamW rate for every parameter, so embeddings and norms get the scaled rate as well (a
  stated compromise: hidden matrices are almost all of the parameters).
- optimizer "muon": train.muon_lr and train.lr are kept. Muon's update is orthogonalised
  (spectral norm ~1 whatever the width) and multiplied by shared.train.optim_rules.muon_scale(shape) =
  sqrt(max(1, out / in)); with every matrix's out/in ratio kept by the shape rules above, that
  factor is the same at the new width. Embeddings, head and norms stay on AdamW at train.lr,
  unchanged (their per-element update does not depend on the width).

The artifact estimate mirrors convert/export.pack; see `artifact_estimate`. The memory, FLOP and
time models are in `memory_per_gpu`, `flops_per_token` and `plan`; their constants are below.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from shared.spec.config import ConfigError, RunConfig, _suggest
from shared.spec.options import MATRIX
from shared.spec.params import parameter_shapes, parameter_specs, ternary_parameters


@dataclass(frozen=True)
class Target:
    name: str
    gpus: int
    gpu_memory: float  # bytes of HBM per GPU
    peak_flops: float  # dense bf16 FLOP/s per GPU
    note: str


TARGETS: dict[str, Target] = {
    "8xh100": Target("8xh100", 8, 80e9, 989e12, "one node of 8 H100 SXM 80 GB (parameter-golf's machine)"),
    "1xh100": Target("1xh100", 1, 80e9, 989e12, "one H100 SXM 80 GB"),
    "8xh200": Target("8xh200", 8, 141e9, 989e12, "one node of 8 H200 (H100 compute, 141 GB HBM3e)"),
}

# ---- assumptions (printed with the plan) --------------------------------------------------------
DEFAULT_SEQ_LEN = 1024              # parameter-golf / pg-ternary window; the ablation's if larger
DEFAULT_BATCH_TOKENS = 524_288      # tokens per optimizer step over all GPUs (parameter-golf: 2^19)
DEFAULT_MFU = 0.40                  # fraction of the bf16 dense peak the step achieves
MEMORY_HEADROOM = 0.80              # plan for 80% of HBM: CUDA context, NCCL buffers, fragmentation
ACT_BYTES_PER_HIDDEN = 34           # activation bytes per token per layer per unit of width: bf16,
                                    # Korthikanti et al. 2022 eq. 1 with flash attention (no s^2 term);
                                    # counted for a 4x MLP, so conservative for 2x relu^2
LOGIT_BYTES_PER_VOCAB = 12          # per token: fp32 logits, soft-capped logits and their gradient
WIDTH_STEP = 64
MIN_TOKENS_PER_PARAM = 20.0         # Chinchilla's compute-optimal ratio; warn below it


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}{_suggest(name, TARGETS)}; valid targets: "
                          + ", ".join(f"{t.name} ({t.note})" for t in TARGETS.values()))
    return TARGETS[name]


def parse_count(text: str) -> int:
    """'74M', '1.2B', '500K' or a plain integer -> int."""
    s = str(text).strip().replace("_", "").replace(",", "")
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(s[-1:].upper(), 1)
    try:
        v = float(s[:-1] if mult != 1 else s) * mult
    except ValueError:
        raise ConfigError(f"--params {text!r}: expected a count such as 74000000, 74M or 1.2B") from None
    if not v > 0 or v != v:
        raise ConfigError(f"--params {text!r}: must be positive")
    return int(v)


# ---- counts -------------------------------------------------------------------------------------
def count_parameters(cfg: RunConfig) -> tuple[int, int]:
    """(total, ternary); shared.train.loop.count_parameters, imported late so that `ternary --help`
    (which reads TARGETS) does not load NumPy and the data pipeline."""
    from shared.train.loop import count_parameters as count
    return count(cfg)


@dataclass
class ArtifactEstimate:
    codes: int    # base-3 codes, 5 per byte
    scales: int   # fp16, one per group
    floats: int   # fp16 non-ternary parameters
    header: int   # magic + length + JSON header
    total: int


def artifact_estimate(cfg: RunConfig) -> ArtifactEstimate:
    """Bytes of `ternary convert --to packed` for this config, mirroring convert/export.pack.

    Assumptions: codes are ceil(n / 5) bytes per ternary tensor (base 3); scales and float
    parameters are fp16 (pack widens to fp32 only for values outside fp16's normal range); the
    header is the same JSON as pack writes (its default --floats fp16; --floats int8 files are
    smaller); LZMA is credited with nothing. Ternary codes are near their entropy (log2 3 = 1.585
    of the 1.6 bits), so LZMA gains ~0 on them; it does shrink the fp16 floats (~10% on random
    normal weights) and the scales, so the estimate is an upper bound of a real file by a few
    percent, which is the safe side of a size limit.
    """
    shapes = parameter_shapes(cfg.model)
    tern = set(ternary_parameters(cfg))
    G = cfg.ternary.group_size
    table: list[dict[str, Any]] = []
    sections: dict[str, list[tuple[dict, str, int]]] = {"codes": [], "scales": [], "floats": []}
    for name, shape in shapes.items():
        n = math.prod(shape)
        if name in tern:
            scale_shape = [1, 1] if G == 0 else [shape[0], shape[1] // G]
            entry = {"name": name, "kind": "ternary", "shape": list(shape), "group_size": G, "count": n,
                     "scale_shape": scale_shape, "scale_dtype": "float16"}
            sections["codes"].append((entry, "codes", -(-n // 5)))
            sections["scales"].append((entry, "scales", 2 * math.prod(scale_shape)))
        else:
            entry = {"name": name, "kind": "float", "shape": list(shape), "dtype": "float16"}
            sections["floats"].append((entry, "data", 2 * n))
        table.append(entry)
    off, size = 0, {}
    for sec, parts in sections.items():  # pack's order: codes, scales, floats
        size[sec] = sum(b for _, _, b in parts)
        for entry, key, b in parts:
            entry[key] = [off, b]  # the offsets' digits are part of the header's length
            off += b
    codes, scales, floats = size["codes"], size["scales"], size["floats"]
    raw = codes + scales + floats
    header = {"format": "ternary-packed", "version": 2, "compress": "lzma", "floats": "fp16",
              "payload_bytes": raw, "raw_payload_bytes": raw, "payload_sha256": "0" * 64,
              "config": cfg.to_dict(), "tensors": table}
    hb = len(json.dumps(header, separators=(",", ":")).encode()) + 8 + 8  # + MAGIC + length
    return ArtifactEstimate(codes, scales, floats, hb, raw + hb)


# ---- shape scaling ------------------------------------------------------------------------------
def _round_up_multiple(x: float, m: int) -> int:
    return max(m, int(math.floor(x / m + 0.5)) * m)


def shape_at(base: RunConfig, width: int, depth: int) -> RunConfig | None:
    """`base` with width and depth changed by the rules of this module; None if `width` is not valid."""
    m, G = base.model, base.ternary.group_size if base.ternary.enabled else 0
    if width <= 0 or width % WIDTH_STEP or (width * m.num_attention_heads) % m.hidden_size:
        return None
    heads = width * m.num_attention_heads // m.hidden_size
    q_per_kv = m.num_attention_heads // m.num_key_value_heads
    if heads % q_per_kv:
        return None
    quantum = math.lcm(WIDTH_STEP, G) if G else WIDTH_STEP
    inter = _round_up_multiple(width * m.intermediate_size / m.hidden_size, quantum)
    if G and (width % G or (heads * m.head_dim) % G or inter % G):
        return None
    model = dataclasses.replace(m, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                num_key_value_heads=heads // q_per_kv, intermediate_size=inter)
    return dataclasses.replace(base, model=model)


def ratio_depth(base: RunConfig, width: int) -> int:
    return max(1, int(math.floor(width * base.model.num_hidden_layers / base.model.hidden_size + 0.5)))


def _measure(cfg: RunConfig, budget_kind: str) -> int:
    return count_parameters(cfg)[0] if budget_kind == "params" else artifact_estimate(cfg).total


def choose_shape(base: RunConfig, budget_kind: str, budget: float, max_width: int = 32768) -> RunConfig:
    """The largest shape (by the budgeted measure) of the rules above with measure <= budget."""
    if budget_kind not in ("params", "artifact"):
        raise ValueError(budget_kind)
    widths = [w for w in range(WIDTH_STEP, max_width + 1, WIDTH_STEP) if shape_at(base, w, 1) is not None]
    if not widths:
        raise ConfigError(f"no width up to {max_width} satisfies the shape rules for this config "
                          f"(heads {base.model.num_attention_heads}/{base.model.num_key_value_heads}, "
                          f"group size {base.ternary.group_size})")
    best, best_m, smallest = None, -1, None
    for i, w in enumerate(widths):
        lo = ratio_depth(base, w)
        hi = max(lo, ratio_depth(base, widths[i + 1]) - 1) if i + 1 < len(widths) else lo
        first = shape_at(base, w, lo)
        m0 = _measure(first, budget_kind)
        smallest = m0 if smallest is None else min(smallest, m0)
        if m0 > budget:
            break  # wider shapes only grow
        for d in range(lo, hi + 1):
            cfg = shape_at(base, w, d)
            m = _measure(cfg, budget_kind)
            if m > budget:
                break
            if m > best_m:
                best, best_m = cfg, m
    if best is None:
        unit = "parameters" if budget_kind == "params" else "bytes of packed artifact"
        raise ConfigError(f"the budget of {budget:,.0f} {unit} is below the smallest shape these rules "
                          f"allow ({smallest:,} {unit} at width {widths[0]}, depth "
                          f"{ratio_depth(base, widths[0])}); raise the budget")
    return best


def scale_learning_rates(base: RunConfig, cfg: RunConfig) -> tuple[dict[str, float], list[str]]:
    """New train.* learning rates for `cfg` (promoted from `base`) and one line per rule applied."""
    w0, w = base.model.hidden_size, cfg.model.hidden_size
    t = base.train
    if t.optimizer == "muon":
        return {"lr": t.lr, "muon_lr": t.muon_lr}, [
            f"muon_lr {t.muon_lr:g} kept: Muon's orthogonalised update times sqrt(max(1, out/in)) "
            "(shared/optim_rules.muon_scale) is width-independent, and out/in of every matrix is kept",
            f"lr {t.lr:g} kept: AdamW here trains embeddings, head and norms only (width-independent)"]
    new = t.lr * w0 / w
    return {"lr": new, "muon_lr": t.muon_lr}, [
        f"lr {t.lr:g} -> {new:.4g}: AdamW on hidden matrices scales as base width / width = {w0}/{w} "
        "(muP); train.lr is the one AdamW rate, so embeddings and norms get it too"]


# ---- memory, FLOPs, time ------------------------------------------------------------------------
@dataclass
class Memory:
    weights: float
    grads: float
    optimizer: float
    ddp_buckets: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ddp_buckets + self.activations + self.logits


def optimizer_state_bytes(cfg: RunConfig) -> int:
    """Optimizer slots (shared.train.optim_rules.slots_for: Adam 2, Muon 1, EMA +1) per parameter, each at
    its dtype (optim_rules.slot_dtype: the moments at train.optimizer_state_dtype, the EMA float32)."""
    from shared.train.memory_budget import DTYPE_BYTES  # here: memory_budget imports this module
    from shared.train.optim_rules import slot_dtype, slots_for
    return sum(DTYPE_BYTES[slot_dtype(slot, cfg.train)] * math.prod(s.shape)
               for s in parameter_specs(cfg.model).values() for slot in slots_for(s, cfg.train))


def memory_per_gpu(cfg: RunConfig, micro_batch: int, seq_len: int, gpus: int, parallel: str) -> Memory:
    """Bytes per GPU: fp32 weights, grads and optimizer state (sharded over GPUs under fsdp2, plus a
    bucket copy of the grads under ddp), bf16 activations and fp32 logits of one micro-batch."""
    n = count_parameters(cfg)[0]
    shard = gpus if parallel == "fsdp2" else 1
    tokens = micro_batch * seq_len
    m = cfg.model
    return Memory(weights=4 * n / shard, grads=4 * n / shard, optimizer=optimizer_state_bytes(cfg) / shard,
                  ddp_buckets=4 * n if parallel == "ddp" else 0.0,
                  activations=tokens * m.num_hidden_layers * ACT_BYTES_PER_HIDDEN * m.hidden_size,
                  logits=tokens * m.vocab_size * LOGIT_BYTES_PER_VOCAB)


def flops_per_token(cfg: RunConfig, seq_len: int) -> tuple[float, int]:
    """(training FLOPs per token, N): 6N for the matmuls (block matrices, a factored embedding's
    projections, plus the vocab x width head, tied or not, whose width is model.embed_dim when a
    factored embedding is tied; the embedding lookup is free) + 12 * layers * heads * head_dim *
    seq_len for attention scores and values (PaLM, appendix B). A stored block counts once per applied
    layer that runs it (model.num_unique_layers); experts count all (every expert runs every token)."""
    m = cfg.model
    n = sum(math.prod(s.shape) * _applications(name, m) for name, s in parameter_specs(m).items()
            if s.role == MATRIX)
    n += m.vocab_size * (m.embed_dim if m.tie_word_embeddings and m.embed_dim else m.hidden_size)
    return 6.0 * n + 12.0 * m.num_hidden_layers * m.num_attention_heads * m.head_dim * seq_len, n


def _applications(name: str, m) -> int:
    """How many applied layers run the tensor `name` per token: 1, or for stored block u of U under
    depth recurrence the applied layers i < num_hidden_layers with i % U == u."""
    if not (m.num_unique_layers and name.startswith("model.layers.")):
        return 1
    return len(range(int(name.split(".")[2]), m.num_hidden_layers, m.num_unique_layers))


@dataclass
class Plan:
    base: RunConfig
    config: RunConfig
    target: Target
    budget: str  # "params" or "artifact"
    budget_value: float
    total_params: int
    ternary_params: int
    artifact: ArtifactEstimate
    parallel: str
    memory: Memory
    flops_per_token: float
    matmul_params: int
    step_time_s: float
    steps: int
    tokens: int
    batch_tokens: int
    mfu: float
    seconds: float
    lr_notes: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.total_params


def scale_step_counts(base: RunConfig, steps: int) -> tuple[dict[str, int], dict[str, int]]:
    """(train.*, ternary.*) step counts that keep their fraction of the run at `steps` steps:
    evaluation cadence, LR warm-up, lambda warm-up and checkpoints. A run without periodic
    checkpoints gets one every 10% of its steps, so a rank that dies loses at most a tenth."""
    t, ratio = base.train, steps / max(1, base.train.steps)

    def scaled(n: int) -> int:
        return max(1, round(n * ratio)) if n else 0
    train = {"eval_every": scaled(t.eval_every), "warmup_steps": scaled(t.warmup_steps),
             "checkpoint_every": scaled(t.checkpoint_every) if t.checkpoint_every else max(1, steps // 10)}
    return train, {"warmup_steps": scaled(base.ternary.warmup_steps)}


def plan(base: RunConfig, target: str, *, params: int | None = None, artifact_bytes: float | None = None,
         seconds: float = 600.0, seq_len: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
         mfu: float = DEFAULT_MFU, train_tokens_available: int | None = None) -> Plan:
    """Scale `base` to `target` under one budget (`params` or `artifact_bytes`) and `seconds`."""
    tg = get_target(target)
    if params is not None and artifact_bytes is not None:
        raise ConfigError("give one budget: --params or --artifact-mb, not both")
    if params is None and artifact_bytes is None:
        raise ConfigError("give a budget: --params N (total parameters) or --artifact-mb M (packed artifact)")
    if not seconds > 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    kind, budget = ("params", params) if params is not None else ("artifact", artifact_bytes)
    if not budget > 0:
        raise ConfigError(f"the budget must be positive, got {budget}")
    shaped = choose_shape(base, kind, budget)
    seq = seq_len or max(DEFAULT_SEQ_LEN, base.train.seq_len)
    rows_total = batch_tokens / seq
    if rows_total != int(rows_total) or int(rows_total) % tg.gpus:
        raise ConfigError(f"--batch-tokens {batch_tokens:,} is not a whole number of {seq}-token sequences "
                          f"per GPU on {tg.gpus} GPU(s); use a multiple of {seq * tg.gpus:,}")
    per_gpu = int(rows_total) // tg.gpus
    usable = tg.gpu_memory * MEMORY_HEADROOM
    parallel = "ddp" if memory_per_gpu(shaped, 1, seq, tg.gpus, "ddp").total <= usable else "fsdp2"
    micro = next((b for b in range(per_gpu, 0, -1)
                  if per_gpu % b == 0 and memory_per_gpu(shaped, b, seq, tg.gpus, parallel).total <= usable), None)
    if micro is None:
        need = memory_per_gpu(shaped, 1, seq, tg.gpus, parallel).total
        raise ConfigError(f"the shape does not fit one {tg.name} GPU even sharded (fsdp2) at micro-batch 1: "
                          f"{need / 1e9:.1f} GB > {usable / 1e9:.1f} GB usable; lower the budget or --seq-len")
    fpt, n_mm = flops_per_token(shaped, seq)
    step_time = fpt * batch_tokens / (tg.gpus * tg.peak_flops * mfu)
    steps = int(seconds // step_time)
    if steps < 1:
        raise ConfigError(f"one step takes ~{step_time:.1f} s at {mfu:.0%} MFU, more than --seconds {seconds:g}; "
                          "lower the budget or --batch-tokens, or raise --seconds")
    lrs, notes = scale_learning_rates(base, shaped)
    d = shaped.to_dict()
    d["model"]["max_position_embeddings"] = max(base.model.max_position_embeddings, seq)
    train_steps, ternary_steps = scale_step_counts(base, steps)
    d["train"].update(steps=steps, seq_len=seq, batch_size=micro, grad_accum=per_gpu // micro,
                      time_budget_s=float(seconds), parallel=parallel, compile=True, precision="bf16", tf32=True,
                      **train_steps, **lrs)
    d["ternary"].update(ternary_steps)
    cfg = RunConfig.from_dict(d, where="promoted config")
    total, tern = count_parameters(cfg)
    tokens = steps * batch_tokens
    p = Plan(base, cfg, tg, kind, float(budget), total, tern, artifact_estimate(cfg), parallel,
             memory_per_gpu(cfg, micro, seq, tg.gpus, parallel), fpt, n_mm, step_time, steps, tokens,
             batch_tokens, mfu, float(seconds), notes)
    if p.tokens_per_param < MIN_TOKENS_PER_PARAM:
        p.warnings.append(f"{p.tokens_per_param:.1f} tokens per parameter in the time budget, below the "
                          f"~{MIN_TOKENS_PER_PARAM:g} of a compute-optimal run: the model is larger than this "
                          "time can train")
    if train_tokens_available is not None and tokens > train_tokens_available:
        p.warnings.append(f"data-limited: the run reads {tokens:,} tokens but data.source has at most "
                          f"{train_tokens_available:,} training tokens ({tokens / train_tokens_available:,.0f} "
                          "epochs; SEEDS S9): point data.source at more data (`ternary data prepare`)")
    return p

