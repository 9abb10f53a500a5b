"""DESIGN 4: with ternary.enabled = false both backends are Hugging Face Qwen3ForCausalLM (and Llama).

A tiny random model is written with transformers' `save_pretrained`, read back through
shared.spec.config.model_config_from_hf and safetensors, and the logits compared with transformers'.
Measured differences are printed (pytest -s) and appended to $PARITY_REPORT as JSON lines.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

from shared.spec.config import RunConfig, TernaryConfig, TrainConfig, model_config_from_hf  # noqa: E402
from ternary_cuda.model import Model as TorchModel  # noqa: E402
from ternary_mlx.model import Model as MLXModel  # noqa: E402
from tests.variants import TINY  # noqa: E402

from .helpers import mlx_logits, record, torch_logits  # noqa: E402

BASE = dict(TINY, rope_theta=10000.0, rms_norm_eps=1e-6)  # as Hugging Face config kwargs
CASES = {
    # name -> (architecture, config overrides)
    "qwen3-tied-hd16": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "qwen3-untied-hd16": ("qwen3", dict(head_dim=16, tie_word_embeddings=False)),
    "qwen3-tied-hd32": ("qwen3", dict(head_dim=32, tie_word_embeddings=True)),  # head_dim != hidden/heads
    "qwen3-untied-hd32-mha": ("qwen3", dict(head_dim=32, num_key_value_heads=4, tie_word_embeddings=False)),
    "llama-untied": ("llama", dict(tie_word_embeddings=False)),  # no q/k norm
}
SEQ_LENS = [1, 7, 64]
ATTN = ["eager", "sdpa"]


def _write_hf_model(path: Path, arch: str, overrides: dict) -> None:
    if arch == "qwen3":
        cfg = transformers.Qwen3Config(**{**BASE, **overrides})
        cls = transformers.Qwen3ForCausalLM
    else:
        cfg = transformers.LlamaConfig(**{**BASE, **overrides})
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32)
    with torch.no_grad():  # random norm gains: unit gains would hide q_norm / k_norm / layernorm mix-ups
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # keep `pytest -s` output readable
    try:
        for name, (arch, overrides) in CASES.items():
            _write_hf_model(root / name, arch, overrides)
            out[name] = root / name
        yield out
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _ours(path: Path):
    hf_cfg = json.loads((path / "config.json").read_text())
    m = model_config_from_hf(hf_cfg, where=str(path / "config.json"))
    cfg = RunConfig(model=m, ternary=TernaryConfig(enabled=False), train=TrainConfig(seq_len=64)).validate()
    weights = load_file(str(path / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in weights.values())
    if m.tie_word_embeddings:
        head = weights.pop("lm_head.weight", None)  # HF may or may not write the tied head
        if head is not None:
            assert np.array_equal(head, weights["model.embed_tokens.weight"])
    return cfg, weights


@pytest.mark.parametrize("name", list(CASES))
def test_config_read_from_hf(hf_dirs, name):
    arch, overrides = CASES[name]
    cfg, weights = _ours(hf_dirs[name])
    m = cfg.model
    assert m.model_type == arch
    assert m.qk_norm == (arch == "qwen3")
    for k, v in {**BASE, **overrides}.items():
        assert getattr(m, k) == v, k
    if "head_dim" not in overrides:
        assert m.head_dim == BASE["hidden_size"] // BASE["num_attention_heads"]
    assert ("lm_head.weight" in weights) == (not m.tie_word_embeddings)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(hf_dirs, name, attn):
    path = hf_dirs[name]
    cfg, weights = _ours(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn,
                                                          dtype=torch.float32).eval()
    m_mlx, m_torch = MLXModel(cfg, weights), TorchModel(cfg, weights)
    for seq_len in SEQ_LENS:
        ids = np.random.default_rng(seq_len).integers(0, cfg.model.vocab_size, (2, seq_len))
        with torch.no_grad():
            want = hf(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()
        got_mlx, got_torch = mlx_logits(m_mlx, ids), torch_logits(m_torch, ids)
        assert want.shape == got_mlx.shape == got_torch.shape
        assert np.abs(want).max() > 0.5  # non-trivial logits
        d_mlx = float(np.abs(got_mlx - want).max())
        d_torch = float(np.abs(got_torch - want).max())
        record("vs_transformers", f"{name}/{attn}/T{seq_len}", mlx_max_abs_diff=d_mlx,
               torch_max_abs_diff=d_torch, max_abs_logit=float(np.abs(want).max()))
        assert d_mlx < 1e-4, f"MLX vs transformers ({name}, {attn}, T={seq_len}): {d_mlx}"
        assert d_torch < 1e-4, f"torch vs transformers ({name}, {attn}, T={seq_len}): {d_torch}"
