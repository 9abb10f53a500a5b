"""`ternary import-pg`: a parameter-golf state dict (its own names) -> a checkpoint
(convert/formats/pg_import.py; the hyperparameter mapping is shared/spec/pg_family.py)."""
from __future__ import annotations

from pathlib import Path

from convert.common import CliError, sub


def parse_env(items: list[str]) -> dict[str, str]:
    """KEY=VALUE strings (repeatable --env) as a dict; a later KEY wins."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key != key.strip() or not key.replace("_", "").isalnum():
            raise CliError(f"--env {item!r}: expected KEY=VALUE with a parameter-golf hyperparameter name, "
                           "e.g. NUM_LAYERS=10")
        env[key] = value
    return env


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE words of a shell run script (run_cuda_ternary.sh): every word before the command."""
    env = {}
    for word in Path(path).read_text(encoding="utf-8").replace("\\\n", " ").split():
        key, sep, value = word.partition("=")
        if not sep:
            continue  # the command itself (torchrun ...) and its arguments
        if not key.replace("_", "").isalnum():
            raise CliError(f"{path}: {word!r} is not KEY=VALUE")
        env[key] = value
    return env


def run(args) -> int:
    from convert.formats import pg_import
    env = read_env_file(args.env_file) if args.env_file else {}
    env.update(parse_env(args.env))
    result = pg_import.import_pg(args.state, args.out, flavor=args.flavor, env=env,
                                 overrides=list(args.set or []), force=args.force)
    print(pg_import.summary(result))
    return 0


def register(subs) -> None:
    p = sub(subs, "import-pg", "Import a parameter-golf state dict (baseline or the ternary record) as a checkpoint.",
            "  ternary import-pg final_model.pt --flavor baseline --out runs/pg-baseline\n"
            "  ternary import-pg state.safetensors --flavor ternary-record --env-file run_cuda_ternary.sh \\\n"
            "      --out runs/pg-record\n"
            "  ternary import-pg final_model.pt --flavor baseline --env NUM_LAYERS=11 MLP_MULT=3 --out runs/pg11\n\n"
            "STATE is model.state_dict() under parameter-golf's names, as .safetensors or .pt (read with\n"
            "torch.load(weights_only=True): tensors only). --env takes that script's hyperparameter names;\n"
            "unset ones take its defaults; one we cannot express is refused by name.", run)
    p.add_argument("state", metavar="STATE", help="the state dict (.safetensors or .pt)")
    p.add_argument("--flavor", required=True, choices=["baseline", "ternary-record"],
                   help="baseline: train_gpt.py; ternary-record: the 2026-03-24 74M ternary record's script")
    p.add_argument("--env", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="the run's hyperparameters in parameter-golf's names (e.g. NUM_LAYERS=10 MODEL_DIM=768)")
    p.add_argument("--env-file", metavar="FILE", help="read KEY=VALUE words from a run script (before --env)")
    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to create")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="extend", nargs="+", default=[],
                   help="override config values after the mapping, e.g. data.tokenizer=fineweb_1024_bpe.model")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out (only what "
                   "a checkpoint's manifest lists)")
