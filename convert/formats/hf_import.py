"""Import a Hugging Face Qwen3 / Llama checkpoint (config.json + safetensors) as a ternary checkpoint.

`import_hf(src, out, ...)` is what `ternary import-hf` runs (convert/commands/import_hf.py):

- `src` is a local directory or a hub id; a hub id is fetched with `huggingface_hub.snapshot_download`
  (config, safetensors and tokenizer files only).
- `config.json` is read strictly by `shared.spec.config.model_config_from_hf`; only the architectures
  `Qwen3ForCausalLM` and `LlamaForCausalLM` are accepted.
- Weights come from `model.safetensors` or the shards named in `model.safetensors.index.json`.
  Names and shapes are checked against `shared.spec.params.parameter_shapes` from the safetensors headers
  before any tensor is read (every problem listed at once); then tensors are read one at a time and
  converted to float32 (bf16 through torch, since NumPy has no bfloat16), so at most one float32 copy
  of the model plus one source tensor is in memory. A tied `lm_head.weight` is checked equal to the
  embedding and dropped; known non-weight buffers (`rotary_emb.inv_freq`) are skipped.
- The checkpoint is written atomically by `shared.spec.checkpoint.write_checkpoint`. The tokenizer files
  are copied afterwards into `<out>/tokenizer/` (staged in a temporary folder, then renamed), and
  `data.tokenizer` points there (absolute path). They are NOT listed in the checkpoint's manifest:
  write_checkpoint owns the manifest and knows nothing of tokenizers. Re-importing into the same
  directory (force) replaces the checkpoint (and with it the old tokenizer folder) and copies the new
  one; force replaces only that: a directory holding anything else is refused, as is one that holds
  the source.
  Without a tokenizer.json the run config uses the built-in `bytes` tokenizer and a warning is given.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.data.tokenizers import HF_TOKENIZER_FILES, get_tokenizer
from shared.spec.atomic_dir import discard, staging_dir, swap_dir
from shared.spec.checkpoint import CheckpointError, check_tensor_set, write_checkpoint
from shared.spec.ownership import new_checkpoint_refusal, source_conflict
from shared.spec.config import ConfigError, DataConfig, RunConfig, TernaryConfig, TrainConfig, model_config_from_hf
from shared.spec.params import parameter_shapes
from shared.spec.presets import FINETUNE_TRAIN

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "LlamaForCausalLM")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
# Buffers some exporters write next to the weights; they are recomputed from the config.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = HF_TOKENIZER_FILES
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
# safetensors dtype names -> readable names
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


class ImportHFError(CheckpointError):
    """The source is not a usable Hugging Face checkpoint (a user error: exit 2 on the CLI)."""


@dataclass
class ImportResult:
    out: Path
    config: RunConfig
    architecture: str
    source_dir: Path
    source_dtypes: list[str]
    tokenizer: str
    skipped: list[str] = field(default_factory=list)
    dropped_tied_head: bool = False


# ---- source ---------------------------------------------------------------------------------------
def _looks_local(src: str) -> bool:
    return src.startswith((".", "/", "~", "\\")) or Path(src).expanduser().exists() or ":" in src[:3]


def resolve_source(src: str, revision: str | None = None) -> Path:
    """A local directory, or a hub id downloaded (config, weights, tokenizer) with snapshot_download."""
    path = Path(src).expanduser()
    if path.is_dir():
        if revision:
            raise ImportHFError(f"--revision {revision!r} only applies to a hub id, but {src} is a local directory")
        return path
    if path.exists():
        raise ImportHFError(f"{src}: expected a directory holding config.json and safetensors weights, "
                            "found a file")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        if _looks_local(src):
            raise HFValidationError("looks like a path")
        validate_repo_id(src)
    except HFValidationError:
        raise ImportHFError(f"{src}: no such directory, and not a valid Hugging Face hub id "
                            "(expected owner/name)") from None
    from huggingface_hub import snapshot_download
    try:
        local = snapshot_download(repo_id=src, revision=revision, allow_patterns=HUB_PATTERNS)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # network, auth, missing repo or revision: one line, no traceback
        raise ImportHFError(f"{src}: not a local directory, and downloading it from the Hugging Face hub "
                            f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None
    return Path(local)


# ---- config ---------------------------------------------------------------------------------------
def read_hf_config(src_dir: Path):
    """(ModelConfig, architecture name) from `src_dir/config.json`."""
    f = src_dir / "config.json"
    if not f.is_file():
        raise ImportHFError(f"{src_dir}: no config.json (not a Hugging Face model directory)")
    try:
        hf = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ImportHFError(f"{f}: not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise ImportHFError(f"{f}: expected a JSON object")
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        mt = hf.get("model_type")
        raise ConfigError(f"{f}: architecture {archs if archs else None!r} (model_type {mt!r}) is not "
                          f"supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    expected_type = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama"}[archs[0]]
    if hf.get("model_type") not in (None, expected_type):
        raise ConfigError(f"{f}: architecture {archs[0]} with model_type {hf['model_type']!r} "
                          f"(expected {expected_type!r})")
    hf.setdefault("model_type", expected_type)
    return model_config_from_hf(hf, where=str(f)), archs[0]


def build_run_config(model, *, ternary: bool, tokenizer: str, overrides: list[str] | None = None) -> RunConfig:
    """The checkpoint's run config: the source's model, and training settings for fine-tuning a
    pretrained model (shared.spec.presets.FINETUNE_TRAIN), not a small model's from scratch."""
    train = TrainConfig(**{**FINETUNE_TRAIN, "seq_len": min(FINETUNE_TRAIN["seq_len"], model.max_position_embeddings)})
    cfg = RunConfig(model=model, ternary=TernaryConfig(enabled=ternary), train=train,
                    data=DataConfig(tokenizer=tokenizer))
    bad = [o for o in overrides or [] if o.strip().startswith("model.")]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: the model section comes from the source's config.json "
                          "and cannot be overridden on import")
    return cfg.with_overrides(list(overrides)) if overrides else cfg.validate()


# ---- weights --------------------------------------------------------------------------------------
def _weight_files(src_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """(safetensors files, the index's name -> file map or None)."""
    index = src_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ImportHFError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        missing = [n for n in files if not (src_dir / n).is_file()]
        if missing:
            raise ImportHFError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
        return [src_dir / n for n in files], weight_map
    if (src_dir / SINGLE_FILE).is_file():
        return [src_dir / SINGLE_FILE], None
    others = sorted(p.name for p in src_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
    hint = (f" (found {', '.join(others)}: only safetensors are read; pickled weights never are)"
            if others else "")
    raise ImportHFError(f"{src_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def _open(file: Path, framework: str):
    from safetensors import safe_open
    try:
        return safe_open(str(file), framework=framework)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ImportHFError(f"{file}: cannot read safetensors ({e})") from None


def scan_weights(src_dir: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """name -> (file, safetensors dtype, shape), from the headers only."""
    files, weight_map = _weight_files(src_dir)
    found: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    dupes = []
    for file in files:
        with _open(file, "np") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                if name in found:
                    dupes.append(name)
                found[name] = (file, sl.get_dtype(), tuple(sl.get_shape()))
    if dupes:
        raise ImportHFError(f"{src_dir}: tensors stored in more than one shard: {', '.join(dupes)}")
    if weight_map is not None:
        wrong = [n for n, fn in weight_map.items() if n not in found or found[n][0].name != fn]
        if wrong:
            raise ImportHFError(f"{src_dir / INDEX_FILE}: the index does not match the shards for: "
                                + ", ".join(wrong))
    return found


def _to_float32(handle_np, handle_pt_factory, name: str, dtype: str) -> np.ndarray:
    if dtype in ("F32", "F64", "F16"):
        return np.ascontiguousarray(handle_np.get_tensor(name), dtype=np.float32)
    if dtype == "BF16":  # NumPy has no bfloat16: read through torch, one tensor at a time
        return handle_pt_factory().get_tensor(name).float().numpy()
    raise ImportHFError(f"{name}: dtype {dtype} is not a floating-point weight type")


def read_weights(src_dir: Path, model) -> tuple[dict[str, np.ndarray], list[str], list[str], bool]:
    """(float32 weights by canonical name, source dtypes, skipped names, tied head dropped)."""
    found = scan_weights(src_dir)
    skipped = [n for n in found if n.endswith(SKIPPED_SUFFIXES)]
    tied_head = model.tie_word_embeddings and "lm_head.weight" in found
    got = {n: v[2] for n, v in found.items() if n not in skipped and not (tied_head and n == "lm_head.weight")}
    expected = parameter_shapes(model)
    where = str(src_dir / (INDEX_FILE if (src_dir / INDEX_FILE).is_file() else SINGLE_FILE))
    check_tensor_set(expected, got, f"{where} ({len(got)} tensors)")
    if tied_head and found["lm_head.weight"][2] != expected["model.embed_tokens.weight"]:
        raise CheckpointError(f"{where}: lm_head.weight has shape {found['lm_head.weight'][2]}, "
                              f"expected {expected['model.embed_tokens.weight']} (tied to the embedding)")
    bad = sorted({f"{n} ({found[n][1]})" for n in expected if found[n][1] not in _DTYPES})
    if bad:
        raise ImportHFError(f"{where}: non-floating-point weights: {', '.join(bad)}")

    by_file: dict[Path, list[str]] = {}
    for n in list(expected) + (["lm_head.weight"] if tied_head else []):
        by_file.setdefault(found[n][0], []).append(n)
    weights: dict[str, np.ndarray] = {}
    head = None
    for file, names in by_file.items():
        pt = []

        def pt_handle(file=file, pt=pt):
            if not pt:
                pt.append(_open(file, "pt").__enter__())
            return pt[0]

        with _open(file, "np") as f:
            for n in names:
                arr = _to_float32(f, pt_handle, n, found[n][1])
                if n == "lm_head.weight" and tied_head:
                    head = arr
                else:
                    weights[n] = arr
        for h in pt:
            h.__exit__(None, None, None)
    if tied_head:
        if not np.array_equal(head, weights["model.embed_tokens.weight"]):
            raise CheckpointError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from "
                                  "model.embed_tokens.weight; set tie_word_embeddings false in config.json "
                                  "to keep both")
        del head
    # canonical order
    weights = {n: weights[n] for n in expected}
    dtypes = sorted({_DTYPES[found[n][1]] for n in expected})
    return weights, dtypes, skipped, tied_head


# ---- tokenizer ------------------------------------------------------------------------------------
def tokenizer_files(src_dir: Path) -> list[Path]:
    names = set(TOKENIZER_FILES)
    return sorted(p for p in src_dir.iterdir()
                  if p.is_file() and (p.name in names or p.suffix == ".model"))


def _own_tokenizer_dir(entry: Path) -> bool:
    """The tokenizer/ folder an import writes into its checkpoint: tokenizer files only."""
    names = set(TOKENIZER_FILES)
    return (entry.name == "tokenizer" and entry.is_dir() and not entry.is_symlink()
            and all(f.is_file() and not f.is_symlink() and (f.name in names or f.suffix == ".model")
                    for f in entry.iterdir()))


def copy_tokenizer(files: list[Path], dest: Path) -> None:
    """Copy into `dest` via a temporary sibling folder and a rename (replaces an existing `dest`)."""
    tmp = staging_dir(dest)  # also clears what killed earlier copies left behind
    try:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        swap_dir(tmp, dest)
    except BaseException:
        discard(tmp)
        raise


def _check_tokenizer_fits(name_or_path: str | Path, vocab_size: int) -> None:
    """Refuse, before anything is written, a tokenizer with ids the model has no embedding rows for."""
    tok = get_tokenizer(name_or_path)
    if tok.vocab_size > vocab_size:
        where = Path(name_or_path) / "tokenizer.json" if isinstance(name_or_path, Path) else f"data.tokenizer {tok.name!r}"
        raise ImportHFError(f"{where}: the tokenizer has {tok.vocab_size:,} tokens but the model's vocab_size "
                            f"(config.json) is {vocab_size:,}: its ids {vocab_size:,} and up have no embedding rows")


# ---- the whole import -----------------------------------------------------------------------------
def import_hf(src: str, out: str | Path, *, ternary: bool = True, overrides: list[str] | None = None,
              revision: str | None = None, force: bool = False) -> ImportResult:
    out = Path(out).expanduser().resolve()
    why = new_checkpoint_refusal(out, force, " and its tokenizer/ folder", extra=_own_tokenizer_dir)
    if why:
        raise ImportHFError(why)
    src_dir = resolve_source(str(src), revision)
    why = source_conflict(out, {"the Hugging Face model": src_dir})
    if why:
        raise ImportHFError(f"--out {why}; write the checkpoint somewhere else")
    model, arch = read_hf_config(src_dir)
    tok_files = tokenizer_files(src_dir)
    has_hf_tokenizer = any(f.name == "tokenizer.json" for f in tok_files)
    tokenizer = str(out / "tokenizer") if has_hf_tokenizer else "bytes"
    cfg = build_run_config(model, ternary=ternary, tokenizer=tokenizer, overrides=overrides)
    # the tokenizer data.tokenizer names: the source's (copied below) unless --set named another
    _check_tokenizer_fits(src_dir if cfg.data.tokenizer == tokenizer and has_hf_tokenizer else cfg.data.tokenizer,
                          cfg.model.vocab_size)
    if not has_hf_tokenizer:
        models = [f.name for f in tok_files if f.suffix == ".model"]
        warnings.warn(f"{src}: no tokenizer.json" + (f" (found {', '.join(models)}; copied, but pass "
                      "--set data.tokenizer=<that file> to use it)" if models else "")
                      + "; the run config uses the built-in 'bytes' tokenizer", stacklevel=2)
    weights, dtypes, skipped, dropped = read_weights(src_dir, cfg.model)
    write_checkpoint(out, cfg, weights, writer={"backend": "import-hf", "source": str(src),
                                                "revision": revision, "architecture": arch})
    del weights
    if tok_files:
        copy_tokenizer(tok_files, out / "tokenizer")
    return ImportResult(out=out, config=cfg, architecture=arch, source_dir=src_dir, source_dtypes=dtypes,
                        tokenizer=cfg.data.tokenizer, skipped=skipped, dropped_tied_head=dropped)


def summary(r: ImportResult) -> str:
    from convert.common import config_sizes, counts, describe, human
    total, tern = counts(r.config, config_sizes(r.config))
    lines = [
        f"imported {r.architecture} from {r.source_dir}",
        f"  model:      {describe(r.config)}",
        f"  parameters: {human(total)} total, {human(tern)} ternary" + ("" if r.config.ternary.enabled
                                                                        else " (ternary disabled)"),
        f"  weights:    {', '.join(r.source_dtypes)} -> float32"
        + (", tied lm_head.weight dropped" if r.dropped_tied_head else "")
        + (f", skipped {', '.join(r.skipped)}" if r.skipped else ""),
        f"  tokenizer:  {r.tokenizer}",
        f"  training:   {_train_defaults(r.config)}",
        f"  wrote:      {r.out}",
        f"next: ternary eval {r.out}   |   ternary train --init {r.out}",
    ]
    return "\n".join(lines)


def _train_defaults(cfg: RunConfig) -> str:
    """The train.* settings the checkpoint stores, which `ternary train --init` starts from."""
    t = cfg.train
    return (f"lr {t.lr:g}, batch {t.batch_size} x {t.seq_len} tokens, {t.steps} steps, evaluation of "
            f"{t.eval_tokens:,} tokens every {t.eval_every} steps (fine-tuning defaults; change with --set train.*)")
