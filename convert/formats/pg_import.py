"""Import a parameter-golf state dict (its own names) as a checkpoint: `ternary import-pg`.

The config comes from shared/spec/pg_family.py (`--env` in parameter-golf's hyperparameter names,
the flavor script's defaults for the rest). The tensors are renamed to ours, with two changes of
layout that leave the model's function unchanged:

- fused projections are split: `attn.c_qkv` (the record) into q_proj, k_proj, v_proj by rows, and
  `mlp.gate_up` (the record with ACTIVATION=swiglu) into gate_proj (first half) and up_proj; every
  ternary group lies inside one row, so the codes and scales are those of the fused matrix;
- RoPE direction: parameter-golf's torch scripts rotate (x1, x2) to (x1 cos + x2 sin, x2 cos - x1 sin),
  the inverse of Hugging Face's rotation, which we use. With P negating the second half of a head,
  HF(P x) = P pg(x), and P P = I inside q . k, so negating the second half of every q and k head's
  rows of the weight gives the same attention scores (q/k RMSNorm is weightless, hence sign-blind; the
  ternary codes of a negated row are the negated codes, the scales unchanged).

A tensor the flavor has but the model does not use (the record keeps `lm_head.weight`, frozen at
zero, when the embedding is tied) is reported, not silently dropped; any other unexpected name, a
missing one or a wrong shape is refused before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.spec.checkpoint import CheckpointError, check_tensor_set, write_checkpoint
from shared.spec.config import RunConfig
from shared.spec.ownership import new_checkpoint_refusal, source_conflict
from shared.spec.params import parameter_shapes
from shared.spec.pg_family import run_config


class ImportPGError(CheckpointError):
    """The state dict does not match the flavor and its hyperparameters (exit 2 on the CLI)."""


@dataclass
class ImportPGResult:
    out: Path
    config: RunConfig
    flavor: str
    source_dtypes: list[str]
    unused: list[str] = field(default_factory=list)


# ---- reading ----------------------------------------------------------------------------------------
def read_state(path: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """(a state dict as float32 NumPy arrays, its dtypes): `.safetensors`, or `.pt`/`.pth` read with
    torch.load(weights_only=True) (tensors only, never a full unpickle)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise ImportPGError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            raw = load_file(str(path))
        except SafetensorError as e:
            raise ImportPGError(f"{path}: not a readable safetensors file ({e})") from None
    elif path.suffix in (".pt", ".pth", ".bin"):
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ImportPGError(f"{path}: not a tensors-only torch state dict ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    else:
        raise ImportPGError(f"{path}: expected a .safetensors or .pt state dict")
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ImportPGError(f"{path}: expected a flat dict of tensor name -> tensor (a model's state_dict())")
    return {k: v.detach().to(torch.float32).numpy() for k, v in raw.items()}, sorted({str(v.dtype).removeprefix(
        "torch.") for v in raw.values()})


# ---- renaming ---------------------------------------------------------------------------------------
_LAYER_PLAIN = {  # parameter-golf's name inside blocks.{i} -> ours inside model.layers.{i}
    "attn.c_v.weight": "self_attn.v_proj.weight", "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.q_gain": "self_attn.q_gain", "mlp.fc.weight": "mlp.up_proj.weight",
    "mlp.proj.weight": "mlp.down_proj.weight", "attn_scale": "attn_scale", "mlp_scale": "mlp_scale",
    "resid_mix": "resid_mix",
}
_TOP_PLAIN = {"tok_emb.weight": "model.embed_tokens.weight", "embed_proj.weight": "model.embed_proj.weight",
              "embed_proj_rev.weight": "model.embed_proj_rev.weight", "skip_weights": "model.skip_weights",
              "vocab_bias": "model.vocab_bias", "lm_head.weight": "lm_head.weight"}


def flip_rope_halves(w: np.ndarray, head_dim: int) -> np.ndarray:
    """Negate the second half of every head's rows of a q or k projection (out = heads * head_dim)."""
    heads = w.shape[0] // head_dim
    out = w.reshape(heads, head_dim, -1).copy()
    out[:, head_dim // 2:, :] *= -1
    return out.reshape(w.shape)


def _layer(cfg: RunConfig, name: str, t: np.ndarray) -> dict[str, np.ndarray] | None:
    """Our tensors for parameter-golf's `blocks.{i}.<name>`, or None for a name we do not know."""
    m = cfg.model
    q_rows, kv_rows = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    if name in _LAYER_PLAIN:
        return {_LAYER_PLAIN[name]: t}
    if name == "attn.c_q.weight":
        return {"self_attn.q_proj.weight": flip_rope_halves(t, m.head_dim)}
    if name == "attn.c_k.weight":
        return {"self_attn.k_proj.weight": flip_rope_halves(t, m.head_dim)}
    if name == "attn.c_qkv.weight":
        if t.shape[0] != q_rows + 2 * kv_rows:
            raise ImportPGError(f"{name}: {t.shape[0]} rows, expected {q_rows} + 2 x {kv_rows} (q, k, v)")
        q, k, v = np.split(t, [q_rows, q_rows + kv_rows])
        return {"self_attn.q_proj.weight": flip_rope_halves(q, m.head_dim),
                "self_attn.k_proj.weight": flip_rope_halves(k, m.head_dim), "self_attn.v_proj.weight": v}
    if name == "mlp.gate_up.weight":
        if t.shape[0] % 2:
            raise ImportPGError(f"{name}: an odd number of rows ({t.shape[0]}) cannot hold gate and up halves")
        gate, up = np.split(t, 2)
        return {"mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up}
    return None


def rename(cfg: RunConfig, state: dict[str, np.ndarray], flavor: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """(our weights, the parameter-golf names the model does not use). Unknown names are refused."""
    expected = parameter_shapes(cfg.model)
    out: dict[str, np.ndarray] = {}
    unused, unknown = [], []
    for name, t in state.items():
        parts = name.split(".", 2)
        if parts[0] == "blocks" and len(parts) == 3 and parts[1].isdigit():
            mapped = _layer(cfg, parts[2], t)
            mapped = None if mapped is None else {f"model.layers.{parts[1]}.{k}": v for k, v in mapped.items()}
        else:
            mapped = {_TOP_PLAIN[name]: t} if name in _TOP_PLAIN else None
        if mapped is None:
            unknown.append(name)
            continue
        for ours, v in mapped.items():
            if ours in expected:
                out[ours] = v
            else:
                unused.append(name)
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ImportPGError(f"{unknown[0]!r}{more}: not a tensor of parameter-golf's {flavor} model "
                            "(is --flavor wrong, or the file not a state_dict()?)")
    try:
        check_tensor_set(expected, {k: tuple(v.shape) for k, v in out.items()},
                         "the state dict (in our names)")
    except CheckpointError as e:
        problems = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ImportPGError(f"{problems} (check --env: NUM_LAYERS, MODEL_DIM, NUM_HEADS, NUM_KV_HEADS, MLP_MULT, "
                            "VOCAB_SIZE, EMBED_DIM, TIE_EMBEDDINGS, ACTIVATION)") from None
    return out, sorted(set(unused))


# ---- the whole import -------------------------------------------------------------------------------
def _check_out(out: Path, src: Path, force: bool) -> None:
    why = new_checkpoint_refusal(out, force)
    if why:
        raise ImportPGError(why)
    why = source_conflict(out, {"the state dict": src})
    if why:
        raise ImportPGError(f"--out {why}; write the checkpoint somewhere else")


def import_pg(state_path: str | Path, out: str | Path, *, flavor: str, env: dict[str, str] | None = None,
              overrides: list[str] | None = None, force: bool = False) -> ImportPGResult:
    src = Path(state_path).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    cfg = run_config(flavor, env)
    if overrides:
        cfg = cfg.with_overrides(list(overrides))
    _check_out(out, src, force)
    state, dtypes = read_state(src)
    weights, unused = rename(cfg, state, flavor)
    del state
    write_checkpoint(out, cfg, weights, writer={"backend": "import-pg", "source": str(src), "flavor": flavor,
                                                "env": dict(env or {})})
    return ImportPGResult(out=out, config=cfg, flavor=flavor, source_dtypes=dtypes, unused=unused)


def summary(r: ImportPGResult) -> str:
    from convert.common import config_sizes, counts, describe, human
    total, tern = counts(r.config, config_sizes(r.config))
    lines = [f"imported parameter-golf {r.flavor}",
             f"  model:      {describe(r.config)}",
             f"  parameters: {human(total)} total, {human(tern)} ternary",
             f"  weights:    {', '.join(r.source_dtypes)} -> float32; q/k rows re-signed for Hugging Face RoPE",
             f"  not used:   {', '.join(r.unused)} (the flavor keeps them; the model never reads them)"
             if r.unused else "  not used:   none",
             f"  wrote:      {r.out}",
             f"next: ternary eval {r.out} --set data.source=<parameter-golf dataset dir> "
             "data.tokenizer=<its .model>"]
    return "\n".join(lines)
