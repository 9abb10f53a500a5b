"""`ternary convert --to hf|mlx-lm` (convert/formats/hf_export.py): stock transformers / mlx-lm load the
export and give our ternary forward pass's logits (CPU, float32, within 1e-4)."""
from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from convert.formats import hf_export as export_hf  # noqa: E402
from convert.cli import main  # noqa: E402
from shared.spec.config import ConfigError, RunConfig  # noqa: E402
from ternary_mlx.checkpoint import save  # noqa: E402
from tests.variants import TINY, tiny_sets  # noqa: E402
from ternary_mlx.model import Model  # noqa: E402

BASE = tiny_sets()
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 12))
TIES = {"tied": [], "untied": ["model.tie_word_embeddings=false"]}


@pytest.fixture(autouse=True)
def _cpu():
    prev = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(prev)


def _ckpt(path, extra=(), tokenizer=None):
    extra = list(extra) + ([f"data.tokenizer={json.dumps(str(tokenizer))}"] if tokenizer else [])
    cfg = RunConfig().with_overrides(BASE + extra)
    model = Model(cfg, seed=0)
    save(model, cfg, path)
    return cfg, model


def _ours(model) -> np.ndarray:
    return np.array(model(mx.array(IDS)).astype(mx.float32))


def _hf_tokenizer(path):
    """A tiny Hugging Face tokenizer directory (256 byte-level word tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(255)} | {"<unk>": 255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>").save_pretrained(str(path))
    return path


@pytest.mark.parametrize("tie", list(TIES))
def test_hf_export_matches_ternary_logits(tmp_path, tie):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3ForCausalLM
    cfg, model = _ckpt(tmp_path / "ck", TIES[tie])
    out = tmp_path / "hf"
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf", "--out", str(out)]) == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == ["Qwen3ForCausalLM"] and conf["model_type"] == "qwen3"
    from safetensors.numpy import load_file
    names = set(load_file(str(out / "model.safetensors")))
    assert ("lm_head.weight" in names) == (tie == "untied")
    hf = Qwen3ForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(IDS)).logits.float().numpy()
    ours = _ours(model)
    assert np.abs(theirs - ours).max() <= 1e-4, np.abs(theirs - ours).max()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_hf_export_refuses_and_is_atomic(tmp_path, capsys):
    for extra, word in ((["model.qk_norm=false"], "qk_norm"), (["model.hidden_act=relu2"], "hidden_act"),
                        (["model.final_logit_softcapping=30.0"], "final_logit_softcapping"),
                        (["ternary.activation_bits=8"], "activation_bits")):
        ck = tmp_path / f"ck-{word}"
        _ckpt(ck, extra)
        with pytest.raises(ConfigError, match=word):
            export_hf.to_hf(ck, tmp_path / "never")
        assert main(["convert", str(ck), "--to", "hf", "--out", str(tmp_path / "never")]) != 0
        assert word in capsys.readouterr().err
        assert not (tmp_path / "never").exists()
    _ckpt(tmp_path / "ok")
    export_hf.to_hf(tmp_path / "ok", tmp_path / "out")
    with pytest.raises(Exception, match="--force"):
        export_hf.to_hf(tmp_path / "ok", tmp_path / "out")
    r = export_hf.to_hf(tmp_path / "ok", tmp_path / "out", force=True)
    assert "not written" in r["tokenizer"]  # synthetic-bpe-512's 512 ids do not fit this 256-id model


def test_hf_export_copies_hf_tokenizer(tmp_path):
    tok = _hf_tokenizer(tmp_path / "tok")
    _ckpt(tmp_path / "ck", tokenizer=tok)
    r = export_hf.to_hf(tmp_path / "ck", tmp_path / "hf")
    assert r["tokenizer"].startswith("copied") and (tmp_path / "hf" / "tokenizer.json").is_file()
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).convert_tokens_to_ids("t7") == 7


def test_mlx_pack_matches_dequantize():
    q = np.random.default_rng(1).integers(-1, 2, size=(8, 128)).astype(np.int8)
    s = np.random.default_rng(2).uniform(0.1, 1, size=(8, 2)).astype(np.float32)
    back = np.array(mx.dequantize(mx.array(export_hf.pack_mlx_2bit(q)), mx.array(s), mx.array(-s),
                                  group_size=64, bits=2))
    assert np.array_equal(back, (q.reshape(8, 2, 64) * s[..., None]).reshape(8, 128))


@pytest.mark.parametrize("tie", list(TIES))
def test_mlx_lm_export_matches_ternary_logits(tmp_path, tie):
    mlx_lm = pytest.importorskip("mlx_lm")
    tok = _hf_tokenizer(tmp_path / "tok")
    cfg, model = _ckpt(tmp_path / "ck", TIES[tie] + ["ternary.group_size=64"], tokenizer=tok)
    out = tmp_path / "mlxlm"
    assert main(["convert", str(tmp_path / "ck"), "--to", "mlx-lm", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": 64, "bits": 2}
    lm, tokenizer = mlx_lm.load(str(out))
    theirs = np.array(lm(mx.array(IDS)).astype(mx.float32))
    ours = _ours(model)
    assert np.abs(theirs - ours).max() <= 1e-4, np.abs(theirs - ours).max()


def test_mlx_lm_refuses_group_size(tmp_path):
    _ckpt(tmp_path / "ck")  # group 32
    with pytest.raises(ConfigError, match="group_size = 32"):
        export_hf.to_mlx_lm(tmp_path / "ck", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,group", [
    (["ternary.group_size=0"], 64),  # one scale per tensor, repeated over MLX groups of 64 (in 64 / 128)
    (["model.hidden_size=256", "model.intermediate_size=256", "ternary.group_size=256"], 128),
])
def test_mlx_lm_repeats_per_tensor_and_large_group_scales(tmp_path, extra, group):
    """MLX quantizes in groups of 64 or 128 only: a per-tensor scale (what hf-bitnet needs) or a group of
    256 (exact for gguf) is written with each scale repeated over the MLX groups it covers, exactly."""
    mlx_lm = pytest.importorskip("mlx_lm")
    tok = _hf_tokenizer(tmp_path / "tok")
    cfg, model = _ckpt(tmp_path / "ck", extra, tokenizer=tok)
    out = tmp_path / "mlxlm"
    assert main(["convert", str(tmp_path / "ck"), "--to", "mlx-lm", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": group, "bits": 2}
    lm, _ = mlx_lm.load(str(out))
    assert np.abs(np.array(lm(mx.array(IDS)).astype(mx.float32)) - _ours(model)).max() <= 1e-4


def test_mlx_lm_refuses_per_tensor_scale_on_odd_rows(tmp_path):
    _ckpt(tmp_path / "ck", ["model.hidden_size=96", "model.intermediate_size=96", "ternary.group_size=0"])
    with pytest.raises(ConfigError, match="multiple of 64"):
        export_hf.to_mlx_lm(tmp_path / "ck", tmp_path / "o")
    assert not (tmp_path / "o").exists()
