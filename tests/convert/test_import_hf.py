"""`ternary import-hf` (convert/formats/hf_import.py): Hugging Face Qwen3 directories -> ternary checkpoints.

Tiny random Qwen3 models are written with transformers' save_pretrained (float32 tied/untied, bf16,
sharded), imported, loaded by both backends and compared with transformers (eager) logits.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from convert.formats import hf_import as hf  # noqa: E402
from shared.spec.checkpoint import CheckpointError, read_config  # noqa: E402
from shared.spec.config import ConfigError  # noqa: E402
from tests.variants import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE = dict(TINY, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6)  # as Hugging Face config kwargs
CASES = {  # name -> (tie_word_embeddings, dtype, save_pretrained kwargs)
    "f32-tied": (True, torch.float32, {}),
    "f32-untied": (False, torch.float32, {}),
    "bf16-tied": (True, torch.bfloat16, {}),
    "sharded-untied": (False, torch.float32, {"max_shard_size": "50KB"}),
}
pytestmark = pytest.mark.filterwarnings("ignore:.*no tokenizer.json:UserWarning")


def _write(path: Path, tie: bool, dtype, kw: dict) -> None:
    cfg = transformers.Qwen3Config(**BASE, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():  # random norm gains, so norm mix-ups show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    model.to(dtype).save_pretrained(path, **kw)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    transformers.utils.logging.disable_progress_bar()
    out = {}
    for name, (tie, dtype, kw) in CASES.items():
        _write(root / name, tie, dtype, kw)
        out[name] = root / name
    return out


def _import(src, out, **kw):
    with pytest.warns(UserWarning, match="bytes"):  # no tokenizer.json in these directories
        return hf.import_hf(str(src), out, **kw)


def _hf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    m = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                         dtype=torch.float32).eval()
    with torch.no_grad():
        return m(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()


def _ours(ckpt: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import mlx.core as mx

    from ternary_cuda.checkpoint import load as load_torch
    from ternary_mlx.checkpoint import load as load_mlx
    m_mlx, _ = load_mlx(ckpt)
    m_torch, _ = load_torch(ckpt)
    out = m_mlx(mx.array(ids))
    mx.eval(out)
    with torch.no_grad():
        got_torch = m_torch(torch.from_numpy(ids.astype(np.int64))).float().numpy()
    return np.array(out.astype(mx.float32)), got_torch


IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, 33))


@pytest.mark.parametrize("name", list(CASES))
def test_float_import_matches_transformers(hf_dirs, tmp_path, name):
    src = hf_dirs[name]
    if name.startswith("sharded"):
        assert (src / "model.safetensors.index.json").exists()
    r = _import(src, tmp_path / "ckpt", ternary=False)
    cfg = read_config(r.out)
    assert not cfg.ternary.enabled and cfg.data.tokenizer == "bytes"
    assert cfg.train.seq_len == 128 and cfg.model.tie_word_embeddings == CASES[name][0]
    assert r.source_dtypes == (["bfloat16"] if "bf16" in name else ["float32"])
    want = _hf_logits(src, IDS)
    got_mlx, got_torch = _ours(r.out, IDS)
    assert np.abs(want).max() > 0.5
    d_mlx, d_torch = float(np.abs(got_mlx - want).max()), float(np.abs(got_torch - want).max())
    print(f"{name}: mlx {d_mlx:.2e} torch {d_torch:.2e}")
    assert d_mlx < 1e-4 and d_torch < 1e-4, (d_mlx, d_torch)
    text = hf.summary(r)
    assert "Qwen3ForCausalLM" in text and f"ternary eval {r.out}" in text


def test_ternary_import_differs(hf_dirs, tmp_path):
    src = hf_dirs["f32-untied"]
    r = _import(src, tmp_path / "t", overrides=["ternary.group_size=32"])
    cfg = read_config(r.out)
    assert cfg.ternary.enabled and cfg.ternary.group_size == 32 and cfg.ternary.targets == ["attn", "mlp"]
    got_mlx, got_torch = _ours(r.out, IDS)
    assert np.isfinite(got_mlx).all() and np.isfinite(got_torch).all()
    want = _hf_logits(src, IDS)
    assert np.abs(got_mlx - want).max() > 1e-2 and np.abs(got_torch - want).max() > 1e-2
    assert np.abs(got_mlx - got_torch).max() < 1e-3


def test_default_group_size_must_divide(hf_dirs, tmp_path):
    with pytest.raises(ConfigError, match="group_size=128"):
        hf.import_hf(str(hf_dirs["f32-tied"]), tmp_path / "x")  # hidden 64: group 128 cannot divide


def _broken_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    w = load_file(str(dst / "model.safetensors"))
    edit(w)
    save_file(w, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_broken_weights(hf_dirs, tmp_path, kind):
    def edit(w):
        if kind == "missing":
            del w["model.layers.1.mlp.up_proj.weight"], w["model.norm.weight"]
        elif kind == "extra":
            w["model.layers.0.mlp.bogus.weight"] = np.zeros(3, np.float32)
            w["model.rotary_emb.inv_freq"] = np.zeros(8, np.float32)  # known buffer: skipped silently
        else:
            w["model.layers.0.self_attn.q_proj.weight"] = np.zeros((32, 64), np.float32)
    src = _broken_copy(hf_dirs["f32-untied"], tmp_path / "src", edit)
    with pytest.raises(CheckpointError) as e:
        hf.import_hf(str(src), tmp_path / "out", ternary=False)
    msg = str(e.value)
    if kind == "missing":
        assert "missing (2)" in msg and "model.layers.1.mlp.up_proj.weight" in msg and "model.norm.weight" in msg
    elif kind == "extra":
        assert "unexpected (1)" in msg and "bogus" in msg and "inv_freq" not in msg
    else:
        assert "wrong shape" in msg and "q_proj" in msg and "(64, 64)" in msg
    assert not (tmp_path / "out").exists()


def test_tied_head_must_equal_embedding(hf_dirs, tmp_path):
    def edit(w):
        w["lm_head.weight"] = w["model.embed_tokens.weight"] + 1.0
    src = _broken_copy(hf_dirs["f32-tied"], tmp_path / "src", edit)
    with pytest.raises(CheckpointError, match="differs from"):
        hf.import_hf(str(src), tmp_path / "out", ternary=False)


def test_tied_head_equal_is_dropped(hf_dirs, tmp_path):
    def edit(w):
        w["lm_head.weight"] = w["model.embed_tokens.weight"].copy()
    src = _broken_copy(hf_dirs["f32-tied"], tmp_path / "src", edit)
    r = _import(src, tmp_path / "out", ternary=False)
    assert r.dropped_tied_head
    assert "lm_head.weight" not in load_file(str(r.out / "model.safetensors"))


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                               "n_embd": 64}))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel.*Qwen3ForCausalLM, LlamaForCausalLM"):
        hf.import_hf(str(d), tmp_path / "out")


def test_bad_source_is_clean_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory, and not a valid Hugging Face hub id"):
        hf.import_hf(str(tmp_path / "does" / "not" / "exist"), tmp_path / "out")


def test_hub_id_goes_through_snapshot_download(hf_dirs, tmp_path, monkeypatch):
    import huggingface_hub
    calls = []

    def fake(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        return str(hf_dirs["f32-tied"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    r = _import("someone/tiny-qwen3", tmp_path / "out", ternary=False, revision="v1")
    assert calls == [("someone/tiny-qwen3", "v1", hf.HUB_PATTERNS)]
    manifest = json.loads((r.out / "manifest.json").read_text())
    assert manifest["writer"]["backend"] == "import-hf" and manifest["writer"]["source"] == "someone/tiny-qwen3"


def test_tokenizer_copied(hf_dirs, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from shared.data.tokenizers import get_tokenizer
    src = tmp_path / "src"
    shutil.copytree(hf_dirs["f32-tied"], src)
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["the", "cat", "sat", "on", "mat"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    r = hf.import_hf(str(src), out, ternary=False)
    cfg = read_config(out)
    assert cfg.data.tokenizer == str(out.resolve() / "tokenizer") == r.tokenizer
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert get_tokenizer(cfg.data.tokenizer).encode("the cat").tolist() == [1, 2]
    # re-import over it needs --force, and replaces checkpoint and tokenizer
    with pytest.raises(CheckpointError, match="--force"):
        hf.import_hf(str(src), out, ternary=False)
    hf.import_hf(str(src), out, ternary=False, force=True)
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "manifest.json").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "convert.cli", "import-hf", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli(hf_dirs, tmp_path):
    ok = _cli(str(hf_dirs["bf16-tied"]), "--out", str(tmp_path / "ok"), "--set", "ternary.group_size=16")
    assert ok.returncode == 0, ok.stderr
    assert "Qwen3ForCausalLM" in ok.stdout and "bfloat16 -> float32" in ok.stdout
    assert "ternary train --init" in ok.stdout and "ternary: warning:" in ok.stderr
    assert read_config(tmp_path / "ok").ternary.group_size == 16
    for bad in ([str(tmp_path / "missing"), "--out", str(tmp_path / "o1")],
                [str(hf_dirs["f32-tied"]), "--out", str(tmp_path / "o2"), "--set", "model.hidden_size=32"]):
        r = _cli(*bad)
        assert r.returncode == 2 and r.stderr.startswith("ternary: error:"), r.stderr
        assert "Traceback" not in r.stderr


def test_force_replaces_only_what_import_hf_wrote(hf_dirs, tmp_path):
    out = tmp_path / "ck"
    _import(hf_dirs["f32-tied"], out, ternary=False)
    _import(hf_dirs["f32-tied"], out, ternary=False, force=True)  # its own checkpoint: replaced
    for extra in ("notes.md", "experiments/a.txt"):
        (out / extra).parent.mkdir(exist_ok=True)
        (out / extra).write_text("precious")
        with pytest.raises(CheckpointError, match=f"{extra.split('/')[0]}.*nothing was changed"):
            hf.import_hf(str(hf_dirs["f32-tied"]), out, ternary=False, force=True)
        assert (out / extra).read_text() == "precious" and (out / "manifest.json").exists()
        (out / extra).unlink()
        if "/" in extra:
            (out / extra).parent.rmdir()
    # never a directory holding the source: a Hugging Face model kept inside the checkpoint directory
    src = out / "tokenizer"
    shutil.copytree(hf_dirs["f32-tied"], src)
    with pytest.raises(CheckpointError, match="nothing was changed"):
        hf.import_hf(str(src), out, ternary=False, force=True)
    assert (src / "model.safetensors").exists()
