"""`ternary import-pg`: parameter-golf state dicts (written here, under its names and shapes) load in
both backends and give parameter-golf's logits.

`pg_logits` below is parameter-golf's forward pass written out from its two scripts' definitions
(train_gpt.py's GPT and the ternary record's GPT, float32), independently of our model code: its
own names, its fused layouts and its RoPE direction. No parameter-golf code is in the repository.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from convert.formats.pg_import import ImportPGError, import_pg
from shared.spec.pg_family import PgEnvError, run_config

BASE_ENV = {"VOCAB_SIZE": "96", "NUM_LAYERS": "3", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
            "MLP_MULT": "2", "TRAIN_SEQ_LEN": "32", "TRAIN_BATCH_TOKENS": "64"}
RECORD_ENV = {**BASE_ENV, "NUM_LAYERS": "4", "EMBED_DIM": "24", "BITNET_GROUP_SIZE": "32", "ACTIVATION": "relu2",
              "SOFTCAP_TYPE": "poly", "LOGIT_SOFTCAP": "10", "ROPE_TYPE": "yarn", "YARN_MAX_LEN": "64",
              "ROPE_BASE": "5000", "QK_GAIN_INIT": "2.25"}


# ---- parameter-golf's model, from its definitions ------------------------------------------------
def _rms(x):
    return F.rms_norm(x, (x.size(-1),))  # eps=None: torch's float32 epsilon


def _ternary(w, g):
    wg = w.reshape(-1, g)
    scale = wg.abs().mean(-1, keepdim=True).clamp(min=1e-8)
    return ((wg / scale).round().clamp(-1, 1) * scale).reshape(w.shape)


def _rope(x, hp, record):
    d = x.size(-1)
    inv_freq = 1.0 / (hp["ROPE_BASE"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    if record and hp["ROPE_TYPE"] == "yarn":
        scale = hp["TRAIN_SEQ_LEN"] / hp["YARN_MAX_LEN"]
        ramp = torch.clamp((torch.arange(0, d, 2, dtype=torch.float32) / d - 0.25) / 0.75, 0.0, 1.0)
        inv_freq = inv_freq / (ramp * (1.0 / scale - 1.0) + 1.0)
    freqs = torch.outer(torch.arange(x.size(2), dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)  # parameter-golf's direction


def _linear(sd, name, x, record, normed=False):
    w = sd[name]
    if record:
        x = _rms(x) if normed else x
        w = _ternary(w, int(record["BITNET_GROUP_SIZE"]))
    return x @ w.T


def _attn(sd, p, x, hp, record):
    B, T, dim = x.shape
    H, KV = hp["NUM_HEADS"], hp["NUM_KV_HEADS"]
    D = dim // H
    if record:
        q, k, v = _linear(sd, p + "attn.c_qkv.weight", x, record).split([H * D, KV * D, KV * D], dim=-1)
    else:
        q, k, v = (_linear(sd, p + f"attn.c_{n}.weight", x, record) for n in "qkv")
    q, k, v = (a.reshape(B, T, -1, D).transpose(1, 2) for a in (q, k, v))
    q, k = _rope(_rms(q), hp, record), _rope(_rms(k), hp, record)
    q = q * sd[p + "attn.q_gain"][None, :, None, None]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
    return _linear(sd, p + "attn.proj.weight", y.transpose(1, 2).reshape(B, T, dim), record, normed=True)


def _block(sd, i, x, x0, hp, record):
    p = f"blocks.{i}."
    mix = sd[p + "resid_mix"]
    x = mix[0] * x + mix[1] * x0
    x = x + sd[p + "attn_scale"] * _attn(sd, p, _rms(x), hp, record)
    h = torch.relu(_linear(sd, p + "mlp.fc.weight", _rms(x), record)).square()
    return x + sd[p + "mlp_scale"] * _linear(sd, p + "mlp.proj.weight", h, record, normed=True)


def pg_logits(sd, hp, ids, record=None):
    """Parameter-golf's logits after the soft-cap; `record` is the record's env (None: baseline)."""
    x = sd["tok_emb.weight"][ids]
    if "embed_proj.weight" in sd:
        x = x @ sd["embed_proj.weight"].T
    x = x0 = _rms(x)
    L = hp["NUM_LAYERS"]
    skips = []
    for i in range(L // 2):
        x = _block(sd, i, x, x0, hp, record)
        skips.append(x)
    for i in range(L - L // 2):
        if skips:
            x = x + sd["skip_weights"][i] * skips.pop()
        x = _block(sd, L // 2 + i, x, x0, hp, record)
    x = _rms(x)
    if hp["TIE_EMBEDDINGS"]:
        x = x @ sd["embed_proj_rev.weight"].T if "embed_proj_rev.weight" in sd else x
        z = x @ sd["tok_emb.weight"].T
    else:
        z = x @ sd["lm_head.weight"].T
    c = hp["LOGIT_SOFTCAP"]
    if record is None:
        return c * torch.tanh(z / c)
    z = z + sd["vocab_bias"]
    u = torch.clamp(z / c, -2.0, 2.0)
    return c * torch.clamp(u * (1.0 - u * u / 3.0 + u ** 4 / 15.0), -1.0, 1.0)


def pg_state(hp, record=None, seed=0):
    """A random state dict with parameter-golf's names and shapes (non-trivial control tensors)."""
    g = torch.Generator().manual_seed(seed)
    V, dim, L, H, KV = hp["VOCAB_SIZE"], hp["MODEL_DIM"], hp["NUM_LAYERS"], hp["NUM_HEADS"], hp["NUM_KV_HEADS"]
    kv, hidden, E = dim // H * KV, hp["MLP_MULT"] * dim, (hp.get("EMBED_DIM") or dim)
    r = lambda *s, std=0.1: torch.randn(*s, generator=g) * std  # noqa: E731
    sd = {"tok_emb.weight": r(V, E, std=0.5), "skip_weights": 1 + r(min(L // 2, L - L // 2), dim)}
    for i in range(L):
        p = f"blocks.{i}."
        if record:
            sd[p + "attn.c_qkv.weight"] = r(dim + 2 * kv, dim)
        else:
            sd.update({p + "attn.c_q.weight": r(dim, dim), p + "attn.c_k.weight": r(kv, dim),
                       p + "attn.c_v.weight": r(kv, dim)})
        sd.update({p + "attn.proj.weight": r(dim, dim), p + "attn.q_gain": 1.5 + r(H),
                   p + "mlp.fc.weight": r(hidden, dim), p + "mlp.proj.weight": r(dim, hidden),
                   p + "attn_scale": 1 + r(dim), p + "mlp_scale": 1 + r(dim),
                   p + "resid_mix": torch.stack([1 + r(dim), r(dim)])})
    if record:
        sd.update({"embed_proj.weight": r(dim, E, std=0.2), "embed_proj_rev.weight": r(E, dim, std=0.2),
                   "vocab_bias": r(V), "lm_head.weight": torch.zeros(V, dim)})  # frozen, unused when tied
    elif not hp["TIE_EMBEDDINGS"]:
        sd["lm_head.weight"] = r(V, dim)
    return sd


def _hp(env, record=False):
    from shared.spec.pg_family import resolve_env
    return resolve_env("ternary-record" if record else "baseline", env)


def _our_logits(out, ids):
    from ternary_cuda.checkpoint import load as load_torch
    from ternary_mlx.checkpoint import load as load_mlx
    import mlx.core as mx
    model_t, _ = load_torch(out)
    with torch.no_grad():
        lt = model_t(torch.from_numpy(ids)).numpy()
    model_m, _ = load_mlx(out)
    lm = np.array(model_m(mx.array(ids)))
    return lt, lm


@pytest.mark.parametrize("tied", [True, False])
def test_baseline_logits_equal_parameter_golf(tmp_path, tied):
    env = {**BASE_ENV, "TIE_EMBEDDINGS": "1" if tied else "0"}
    hp = _hp(env)
    sd = pg_state(hp)
    save_file(sd, str(tmp_path / "state.safetensors"))
    r = import_pg(tmp_path / "state.safetensors", tmp_path / "ckpt", flavor="baseline", env=env)
    assert r.unused == []
    ids = np.random.default_rng(0).integers(0, hp["VOCAB_SIZE"], (2, 32))
    with torch.no_grad():
        ref = pg_logits(sd, hp, torch.from_numpy(ids)).numpy()
    lt, lm = _our_logits(r.out, ids)
    assert np.abs(ref).max() > 1.0  # logits far from zero: a wrong sign or scale would show
    assert np.abs(lt - ref).max() < 1e-4
    assert np.abs(lm - ref).max() < 1e-4


def test_record_logits_equal_parameter_golf_and_name_the_unused_head(tmp_path):
    hp = _hp(RECORD_ENV, record=True)
    sd = pg_state(hp, record=True)
    torch.save(sd, tmp_path / "state.pt")
    r = import_pg(tmp_path / "state.pt", tmp_path / "ckpt", flavor="ternary-record", env=RECORD_ENV)
    assert r.unused == ["lm_head.weight"]
    assert r.config.ternary.enabled and r.config.ternary.group_size == 32
    ids = np.random.default_rng(1).integers(0, hp["VOCAB_SIZE"], (2, 32))
    with torch.no_grad():
        ref = pg_logits(sd, hp, torch.from_numpy(ids), record=RECORD_ENV).numpy()
    lt, lm = _our_logits(r.out, ids)
    assert np.abs(ref).max() > 1.0
    assert np.abs(lt - ref).max() < 1e-4
    assert np.abs(lm - ref).max() < 1e-4


def test_without_the_rope_resign_the_logits_differ(tmp_path, monkeypatch):
    """The q/k re-signing is what makes the RoPE directions agree: without it the logits move."""
    import convert.formats.pg_import as pgi
    monkeypatch.setattr(pgi, "flip_rope_halves", lambda w, head_dim: w)
    hp = _hp(BASE_ENV)
    sd = pg_state(hp)
    save_file(sd, str(tmp_path / "s.safetensors"))
    r = import_pg(tmp_path / "s.safetensors", tmp_path / "ckpt", flavor="baseline", env=BASE_ENV)
    ids = np.random.default_rng(0).integers(0, hp["VOCAB_SIZE"], (1, 32))
    with torch.no_grad():
        ref = pg_logits(sd, hp, torch.from_numpy(ids)).numpy()
    lt, _ = _our_logits(r.out, ids)
    assert np.abs(lt - ref).max() > 1e-2


@pytest.mark.parametrize("env, match", [
    ({"NUM_LAYERZ": "3"}, "NUM_LAYERZ: not a hyperparameter.*did you mean 'NUM_LAYERS'"),
    ({"NUM_LAYERS": "three"}, "NUM_LAYERS='three': not an integer"),
    ({"BIGRAM_HASH": "1"}, "BIGRAM_HASH=1: the bigram-hash embedding cannot be expressed"),
    ({"FP_STORAGE": "FP4"}, "FP_STORAGE=FP4: FP4 storage"),
    ({"ACTIVATION": "gelu"}, "ACTIVATION=gelu: not one of"),
    ({"MODEL_DIM": "65"}, "MODEL_DIM=65 is not a multiple of NUM_HEADS=4"),
])
def test_inexpressible_env_is_refused_by_name(env, match):
    with pytest.raises(PgEnvError, match=match):
        run_config("ternary-record", {**RECORD_ENV, **env})


def test_wrong_shapes_missing_and_foreign_tensors_are_refused_before_writing(tmp_path):
    hp = _hp(BASE_ENV)
    sd = pg_state(hp)
    cases = {"missing": {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc.weight"},
             "foreign": {**sd, "blocks.0.attn.smear_gate": torch.zeros(4)},
             "shape": {**sd, "blocks.0.mlp.fc.weight": torch.zeros(64, 64)}}
    for what, state in cases.items():
        save_file(state, str(tmp_path / f"{what}.safetensors"))
        with pytest.raises(ImportPGError) as e:
            import_pg(tmp_path / f"{what}.safetensors", tmp_path / what, flavor="baseline", env=BASE_ENV)
        assert not (tmp_path / what).exists(), what
        assert ("\n" not in str(e.value)) and (what != "foreign" or "smear_gate" in str(e.value))


class _NotATensor:
    pass


def test_pickled_objects_are_not_unpickled(tmp_path):
    torch.save({"tok_emb.weight": torch.zeros(2, 2), "x": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ImportPGError, match="not a tensors-only torch state dict"):
        import_pg(tmp_path / "evil.pt", tmp_path / "ckpt", flavor="baseline", env=BASE_ENV)


def test_cli_env_file_and_errors(tmp_path):
    hp = _hp(RECORD_ENV, record=True)
    save_file(pg_state(hp, record=True), str(tmp_path / "s.safetensors"))
    script = " \\\n".join(f"{k}={v}" for k, v in RECORD_ENV.items()) + " \\\ntorchrun --standalone train.py\n"
    (tmp_path / "run.sh").write_text(script)
    cli = [sys.executable, "-m", "convert.cli", "import-pg", str(tmp_path / "s.safetensors"),
           "--flavor", "ternary-record", "--env-file", str(tmp_path / "run.sh")]
    ok = subprocess.run(cli + ["--out", str(tmp_path / "ck")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "not used:   lm_head.weight" in ok.stdout
    bad = subprocess.run(cli + ["--env", "SMEAR=1", "--out", str(tmp_path / "ck2")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "SMEAR=1" in bad.stderr
    assert not (tmp_path / "ck2").exists()


def test_presets_are_the_flavor_defaults():
    """pg-baseline is train_gpt.py's defaults (the spot checks are the issue's numbers)."""
    cfg = run_config("baseline", {})
    m, t = cfg.model, cfg.train
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads) == (9, 512, 8, 4)
    assert (m.vocab_size, m.intermediate_size, m.final_logit_softcapping, m.rope_theta) == (1024, 1024, 30.0, 1e4)
    assert m.qk_gain == 1.5 and m.tie_word_embeddings and not cfg.ternary.enabled
    assert t.batch_size * t.grad_accum * t.seq_len == 524_288 and t.steps == 20_000 and t.time_budget_s == 600
    assert math.isclose(m.rms_norm_eps, torch.finfo(torch.float32).eps)


def test_out_is_replaced_only_with_force_and_only_a_checkpoint(tmp_path):
    hp = _hp(BASE_ENV)
    save_file(pg_state(hp), str(tmp_path / "s.safetensors"))
    imp = lambda out, **kw: import_pg(tmp_path / "s.safetensors", out, flavor="baseline", env=BASE_ENV, **kw)  # noqa: E731
    imp(tmp_path / "ck")
    with pytest.raises(ImportPGError, match="existing checkpoint; pass --force"):
        imp(tmp_path / "ck")
    imp(tmp_path / "ck", force=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ImportPGError, match="--force: .*nothing was changed"):
        imp(tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ImportPGError, match="--out .*somewhere else"):
        imp(tmp_path)  # the folder holding the state dict
