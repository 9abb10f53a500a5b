"""`ternary convert --to hf-bitnet` (convert/formats/hf_bitnet.py): stock transformers loads the export with
its BitNet quantizer (AutoBitLinear, offline, 2-bit packed) on CPU and computes our ternary forward pass.

AutoBitLinear always quantizes its input to 8 bits per token, as our ternary.activation_bits = 8 does.
With the same input every layer agrees to float rounding (checked module by module); end to end, a
1-ulp difference can flip one activation's 8-bit rounding and random tiny models amplify that, so the
logits are compared at 1e-2 absolute (measured: ~2.4e-3 on logits of magnitude ~1.3; a wrong scale
direction, layout or code would be off by O(1)).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' BitNet quantizer requires it

from convert.cli import main  # noqa: E402
from convert.formats.hf_bitnet import tensor_bytes, to_hf_bitnet  # noqa: E402
from shared.spec.config import ConfigError, RunConfig  # noqa: E402
from shared.spec.ternary import quantize, unpack_2bit  # noqa: E402
from ternary_cuda.checkpoint import load, save  # noqa: E402
from tests.variants import DEFAULT_INIT, TINY, tiny_sets  # noqa: E402
from ternary_cuda.model import Model  # noqa: E402

BASE = tiny_sets(ternary=dict(group_size=0), initializer_range=DEFAULT_INIT)  # the bounds above were measured there
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 12))


@pytest.fixture(autouse=True)
def _eager():
    """transformers' BitNet code is @torch.compile'd; eager runs the same ops (measured: identical logits)
    without ~20 s of CPU compilation per test."""
    with torch._dynamo.config.patch(disable=True):
        yield


def _ckpt(path, extra=()):
    cfg = RunConfig().with_overrides(BASE + list(extra))
    save(Model(cfg, seed=0), cfg, path)
    return cfg


def _load_hf(out):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()


@pytest.mark.parametrize("extra", [[], ["model.tie_word_embeddings=false", "ternary.targets=['attn','mlp','lm_head']"]],
                         ids=["tied", "untied-ternary-head"])
def test_bitnet_export_matches_ternary_forward(tmp_path, capsys, extra):
    from safetensors.numpy import load_file
    from transformers.integrations.bitnet import AutoBitLinear, unpack_weights
    _ckpt(tmp_path / "ck", ["ternary.activation_bits=8"] + extra)
    ours, cfg = load(tmp_path / "ck")
    out = tmp_path / "bn"
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf-bitnet", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "linear_class", "quantization_mode")} == \
        {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    assert qc["modules_to_not_convert"] == ([] if extra else ["lm_head"])

    # The files: packed codes unpack (ours and transformers' unpacker) to our codes; the scale is s.
    files, latent = load_file(str(out / "model.safetensors")), ours.numpy_weights()
    packed = [n for n in ours.ternary_modules()]
    assert len(packed) == 14 + (1 if extra else 0)
    for name in packed:
        q, s = quantize(latent[name], 0, cfg.ternary.eps)
        assert files[name].dtype == np.uint8 and files[name].shape == ((q.shape[0] + 3) // 4, q.shape[1])
        assert np.array_equal(unpack_2bit(files[name], q.shape[0]), q)
        theirs = unpack_weights(torch.from_numpy(files[name]), dtype=torch.float32).numpy()[:q.shape[0]]
        assert np.array_equal(theirs, q)
        scale = files[name[:-len("weight")] + "weight_scale"]
        assert scale.shape == (1,) and scale.dtype == np.float32 and scale[0] == s.reshape(())

    assert tensor_bytes(cfg) == sum(a.nbytes for a in files.values())  # inspect's size

    hf = _load_hf(out)
    mods = {n: m for n, m in hf.named_modules() if isinstance(m, AutoBitLinear)}
    assert sorted(f"{n}.weight" for n in mods) == sorted(packed)
    # Layer by layer: the same input gives the same output (8-bit activations, codes, multiplying scale).
    seen = {}

    def record(name):
        def hook(mod, inputs, output):
            seen.setdefault(name, (inputs[0], output))  # returns None: the output is left as it is
        return hook
    hooks = [m.register_forward_hook(record(n)) for n, m in mods.items()]
    with torch.no_grad():
        theirs = hf(torch.from_numpy(IDS)).logits.numpy()
        for h in hooks:
            h.remove()
        ours_mods = dict(ours.named_modules())
        for n, (x, y) in seen.items():
            assert torch.allclose(ours_mods[n](x), y, rtol=1e-5, atol=1e-6 * float(y.abs().max())), n
        mine = ours(torch.from_numpy(IDS)).numpy()
    assert np.abs(theirs - mine).max() <= 1e-2, np.abs(theirs - mine).max()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bitnet_without_activation_quantization_warns(tmp_path, capsys):
    _ckpt(tmp_path / "ck")
    out = tmp_path / "bn"
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf-bitnet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "8 bits per token" in err
    hf = _load_hf(out)
    ours, _ = load(tmp_path / "ck")
    with torch.no_grad():
        d = np.abs(hf(torch.from_numpy(IDS)).logits.numpy() - ours(torch.from_numpy(IDS)).numpy()).max()
    assert 0 < d <= 5e-2, d  # inherently lossy: HF rounds activations, our model does not


@pytest.mark.parametrize("extra,words", [
    (["ternary.group_size=32"], ["group_size = 32", "(1,)"]),
    (["ternary.group_size=64", "model.intermediate_size=64"], ["group_size = 64", "per-row"]),  # group = row
    (["ternary.enabled=false"], ["no ternary weights"]),
    (["ternary.targets=['attn','mlp','embed','lm_head']", "ternary.activation_bits=8"], ["tied"]),
    (["model.qk_norm=false"], ["qk_norm"]),
])
def test_bitnet_refusals(tmp_path, capsys, extra, words):
    _ckpt(tmp_path / "ck", extra)
    with pytest.raises(ConfigError) as e:
        to_hf_bitnet(tmp_path / "ck", tmp_path / "never")
    assert all(w in str(e.value) for w in words), str(e.value)
    assert tensor_bytes(RunConfig().with_overrides(BASE + list(extra))) is None
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf-bitnet", "--out", str(tmp_path / "never")]) == 2
    assert words[0] in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_bitnet_force_and_ternary_embedding(tmp_path):
    from safetensors.numpy import load_file
    _ckpt(tmp_path / "ck", ["model.tie_word_embeddings=false", "ternary.targets=['attn','mlp','embed']"])
    to_hf_bitnet(tmp_path / "ck", tmp_path / "o")
    with pytest.raises(Exception, match="--force"):
        to_hf_bitnet(tmp_path / "ck", tmp_path / "o")
    r = to_hf_bitnet(tmp_path / "ck", tmp_path / "o", force=True)
    assert r["packed"] == 14 and r["ternary"] == 15
    ours, cfg = load(tmp_path / "ck")
    emb = load_file(str(tmp_path / "o" / "model.safetensors"))["model.embed_tokens.weight"]
    q, s = quantize(ours.numpy_weights()["model.embed_tokens.weight"], 0, cfg.ternary.eps)
    assert emb.dtype == np.float32 and np.array_equal(emb, q * s.reshape(()))
    cfgj = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfgj["quantization_config"]["modules_to_not_convert"] == ["lm_head"]
