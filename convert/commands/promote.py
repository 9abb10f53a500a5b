"""`ternary promote CONFIG --target 8xh100 ...`: scale an ablation config to a GPU target, print the
preflight table and the torchrun command, write the promoted TOML, and optionally (--check) run
two real training steps of it with the torch trainer on this machine's CPU (promote_check.py).

The rules and constants live in shared/train/promote.py; this file parses and prints.
"""
from __future__ import annotations

from pathlib import Path

from convert.commands.promote_check import gb, run_check
from convert.common import CliError, human, sub


def load_base(source: str, overrides: list[str]):
    """CONFIG is a TOML file (a path that exists or ends in .toml) or a preset name."""
    from shared.spec.config import ConfigError, RunConfig
    from shared.spec.presets import PRESETS, get_preset
    if source.endswith(".toml") or Path(source).exists():
        cfg = RunConfig.load_toml(source)
    elif source in PRESETS:
        cfg = get_preset(source)
    else:
        raise ConfigError(f"CONFIG {source!r} is neither a TOML file nor a preset; presets: {', '.join(PRESETS)}")
    return cfg.with_overrides(overrides) if overrides else cfg


def train_tokens_available(cfg) -> tuple[int | None, str]:
    """An upper bound on the training tokens of data.source here, and how it was found."""
    from shared.data.dataset import read_manifest
    d = cfg.data
    if d.source == "synthetic":
        # every token of the synthetic corpus covers >= 1 byte (BOS aside), so bytes bound tokens
        return d.synthetic_train_bytes + 1, f"the embedded synthetic corpus ({d.synthetic_train_bytes:,} train bytes)"
    if Path(d.source).is_dir():
        return int(read_manifest(d.source)["splits"]["train"]["tokens"]), f"{d.source}"
    return None, f"{d.source} (not on this machine; its size is unknown here)"


def print_plan(p, source: str, data_note: str) -> None:
    from shared.train.promote import MEMORY_HEADROOM
    b, m, t = p.base.model, p.config.model, p.config.train
    tg = p.target
    budget = (f"packed artifact <= {p.budget_value:,.0f} bytes" if p.budget == "artifact"
              else f"<= {p.budget_value:,.0f} parameters")
    print(f"promote {source} -> {tg.name} ({tg.note}); budget {budget}; {p.seconds:g} s of training")
    print(f"shape    {b.num_hidden_layers} x {b.hidden_size} -> {m.num_hidden_layers} x {m.hidden_size}; heads "
          f"{b.num_attention_heads}/{b.num_key_value_heads} -> {m.num_attention_heads}/{m.num_key_value_heads} "
          f"(head_dim {m.head_dim}); MLP {b.intermediate_size} -> {m.intermediate_size} {m.hidden_act}; "
          f"vocab {m.vocab_size}, group {p.config.ternary.group_size}, optimizer {t.optimizer}, "
          f"schedule {t.schedule} (all else kept)")
    for note in p.lr_notes:
        print(f"lr       {note}")
    mem = p.memory
    usable = tg.gpu_memory * MEMORY_HEADROOM
    rows = [
        ("parameters", f"{p.total_params:,} total ({human(p.total_params)}), {p.ternary_params:,} ternary"),
        ("artifact", f"{p.artifact.total:,} bytes (est.): codes {p.artifact.codes:,} + scales {p.artifact.scales:,} "
                     f"+ floats {p.artifact.floats:,} + header {p.artifact.header:,}; base-3 codes, fp16 scales "
                     "and floats, no LZMA credit (an upper bound)"),
        ("memory/GPU", f"{gb(mem.total)} of {gb(usable)} usable ({tg.gpu_memory / 1e9:.0f} GB x {MEMORY_HEADROOM}), "
                       f"{p.parallel}: weights {gb(mem.weights)} + grads {gb(mem.grads)} + optimizer "
                       f"{gb(mem.optimizer)} + DDP buckets {gb(mem.ddp_buckets)} (fp32) + activations "
                       f"{gb(mem.activations)} (bf16, 34 B x width per token per layer) + logits {gb(mem.logits)}"),
        ("batch", f"{p.batch_tokens:,} tokens/step = {tg.gpus} GPU x {t.batch_size} micro-batch x "
                  f"{t.grad_accum} accum x {t.seq_len} tokens"),
        ("FLOPs/token", f"{p.flops_per_token / 1e9:.3f} GFLOP = 6 x {p.matmul_params:,} matmul params + "
                        f"12 x layers x heads x head_dim x seq (attention)"),
        ("step time", f"{p.step_time_s * 1e3:.1f} ms (est.) at {p.mfu:.0%} MFU of {tg.peak_flops / 1e12:.0f} "
                      f"TFLOP/s bf16 dense per GPU"),
        ("steps", f"{t.steps:,} in {p.seconds:g} s (train.time_budget_s = {t.time_budget_s:g} stops the run "
                  "first if the estimate is optimistic)"),
        ("tokens", f"{p.tokens:,} ({human(p.tokens)}); {p.tokens_per_param:.1f} tokens per parameter"),
        ("data", data_note),
    ]
    w = max(len(k) for k, _ in rows)
    print("preflight")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    for warn in p.warnings:
        print(f"warning: {warn}")


def run(args) -> int:
    from shared.train.promote import DEFAULT_MFU, parse_count, plan
    if args.params is not None and args.artifact_mb is not None:
        raise CliError("give one budget: --params or --artifact-mb, not both")
    base = load_base(args.config, args.set)
    bound, data_note = train_tokens_available(base)
    p = plan(base, args.target, params=parse_count(args.params) if args.params is not None else None,
             artifact_bytes=args.artifact_mb * 1e6 if args.artifact_mb is not None else None,
             seconds=args.seconds, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
             mfu=args.mfu if args.mfu is not None else DEFAULT_MFU, train_tokens_available=bound)
    print_plan(p, args.config, data_note)
    out = Path(args.out)
    if out.is_dir():
        raise CliError(f"--out {out} is a directory; give a .toml file name")
    p.config.save_toml(out)
    print(f"wrote {out}")
    launch = (f"torchrun --standalone --nproc_per_node={p.target.gpus} -m ternary_cuda.train "
              f"--config {out} --out runs/{out.stem}-{p.target.name}")
    print("launch:")
    print(f"  {launch}")
    if args.check:
        return 0 if run_check(out, args.check_full) else 1
    return 0


def register(subs) -> None:
    from shared.train.promote import DEFAULT_BATCH_TOKENS, DEFAULT_MFU, TARGETS
    p = sub(subs, "promote", "Scale an ablation config to a GPU target and budget; print the preflight "
            "table and the torchrun command.",
            "  ternary promote mac-ablation --target 8xh100 --artifact-mb 16 --out promoted.toml --check\n"
            "  ternary promote mac-ablation --target 8xh100 --params 120M --seconds 1200 --out big.toml\n"
            "  ternary promote run.toml --target 1xh100 --artifact-mb 16 --set train.optimizer=muon --out p.toml\n\n"
            "targets: " + "; ".join(f"{t.name} ({t.note})" for t in TARGETS.values()) + "\n"
            "Rules and assumptions: shared/train/promote.py and README 'Promote to H100s'. Exits 1 if --check fails.",
            run)
    p.add_argument("config", metavar="CONFIG", help="a TOML run config or a preset name (see `ternary presets`)")
    p.add_argument("--target", required=True, metavar="NAME", help=f"one of: {', '.join(TARGETS)}")
    p.add_argument("--params", metavar="N", help="budget: total parameters, e.g. 74M or 74000000")
    p.add_argument("--artifact-mb", type=float, metavar="M",
                   help="budget: packed artifact bytes <= M * 1e6 (parameter-golf: 16)")
    p.add_argument("--seconds", type=float, default=600.0, help="training time budget (default: 600)")
    p.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence (default: max(1024, the config's))")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, metavar="N",
                   help=f"tokens per optimizer step over all GPUs (default: {DEFAULT_BATCH_TOKENS:,})")
    p.add_argument("--mfu", type=float, metavar="X", help=f"assumed model FLOP utilisation (default: {DEFAULT_MFU})")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="extend", nargs="+", default=[],
                   help="override the source config before scaling, e.g. train.optimizer=muon")
    p.add_argument("--out", required=True, metavar="FILE.toml", help="where to write the promoted config (atomically)")
    p.add_argument("--check", action="store_true",
                   help="also run 2 training steps of the promoted config with the torch trainer on CPU "
                        "(batch 1; shorter windows if the full ones would take over ~20 s here)")
    p.add_argument("--check-full", action="store_true",
                   help="with --check: keep the promoted seq_len and depth however long it takes "
                        "(only a model too big for this machine's RAM is still shrunk)")
