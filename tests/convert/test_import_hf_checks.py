"""`ternary import-hf` (convert/formats/hf_import.py): what it refuses and the training settings it
stores (issue 13). The source directories are written here from config.json, safetensors and a
WordLevel tokenizer.json; no transformers needed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.formats import hf_import as hf
from shared.spec.checkpoint import read_config
from shared.spec.config import model_config_from_hf
from shared.spec.params import parameter_shapes
from shared.spec.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]
HF_CONFIG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 256, "hidden_size": 64,
             "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": True, "hidden_act": "silu"}


def make_hf_dir(path: Path, tokenizer_tokens: int | None, vocab_size: int = 256) -> Path:
    """A tiny Hugging Face Qwen3 directory; with a WordLevel tokenizer.json of `tokenizer_tokens` tokens
    (the characters U+0100...; one word per token)."""
    from safetensors.numpy import save_file
    path.mkdir(parents=True)
    cfg = {**HF_CONFIG, "vocab_size": vocab_size}
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = parameter_shapes(model_config_from_hf(cfg))
    save_file({n: (0.02 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()},
              str(path / "model.safetensors"))
    if tokenizer_tokens is not None:
        from tokenizers import Tokenizer, models, pre_tokenizers
        tok = Tokenizer(models.WordLevel({chr(0x100 + i): i for i in range(tokenizer_tokens)}, unk_token=chr(0x100)))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(path / "tokenizer.json"))
    return path


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", "import-hf", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_before_writing(tmp_path):
    """Before: imported with a warning, leaving a model that cannot embed ids 256..299."""
    pytest.importorskip("tokenizers")
    src = make_hf_dir(tmp_path / "src", tokenizer_tokens=300)
    r = _cli(src, "--out", tmp_path / "out", "--set", "ternary.group_size=16")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == (f"ternary: error: {src / 'tokenizer.json'}: the tokenizer has 300 tokens but the model's "
                        "vocab_size (config.json) is 256: its ids 256 and up have no embedding rows\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(hf.ImportHFError, match="data.tokenizer 'synthetic-bpe-512': the tokenizer has 512 tokens"):
        hf.import_hf(str(make_hf_dir(tmp_path / "src2", 200)), tmp_path / "out2",
                     overrides=["ternary.group_size=16", "data.tokenizer=synthetic-bpe-512"])
    assert not (tmp_path / "out2").exists()


def test_an_import_stores_fine_tuning_defaults_and_says_so(tmp_path):
    """Before: TrainConfig's small-model defaults (batch 8, lr 3e-3, 131,072 evaluation tokens)."""
    pytest.importorskip("tokenizers")
    r = _cli(make_hf_dir(tmp_path / "src", 200), "--out", tmp_path / "out", "--set", "ternary.group_size=16")
    assert r.returncode == 0, r.stderr
    t = read_config(tmp_path / "out").train
    assert (t.lr, t.batch_size, t.seq_len, t.eval_tokens) == (1e-4, 2, 128, 16_384)  # seq_len: max_position 128
    assert ("  training:   lr 0.0001, batch 2 x 128 tokens, 200 steps, evaluation of 16,384 tokens every 100 "
            "steps (fine-tuning defaults; change with --set train.*)") in r.stdout.splitlines()


def test_a_qwen3_0_6b_shaped_import_gets_the_fine_tuning_settings():
    from shared.spec.presets import FINETUNE_TRAIN
    model = get_preset("qwen3-0.6b").model
    cfg = hf.build_run_config(model, ternary=True, tokenizer="bytes")
    t = cfg.train
    assert {k: getattr(t, k) for k in FINETUNE_TRAIN} == FINETUNE_TRAIN
    assert (t.lr, t.batch_size, t.seq_len, t.eval_tokens) == (1e-4, 2, 512, 16_384)
    assert hf.build_run_config(model, ternary=True, tokenizer="bytes",
                               overrides=["train.eval_tokens=4096"]).train.eval_tokens == 4096
