"""`ternary convert --to gguf` (convert/formats/gguf_export.py): read the file back with gguf.GGUFReader,
dequantize every tensor with gguf.quants.dequantize and compare with our effective weights: codes
exact; scales exact up to fp16 rounding when the group is 0 or a multiple of 256, else the
least-squares block scale (lossy, warned); llama.cpp's qwen3 names and hparams; tokenizer metadata."""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from convert.cli import main  # noqa: E402
from convert.formats.gguf_export import tensor_bytes, to_gguf  # noqa: E402
from shared.spec.checkpoint import write_checkpoint  # noqa: E402
from shared.spec.config import ConfigError, RunConfig  # noqa: E402
from shared.spec.init import init_weights  # noqa: E402
from shared.spec.params import parameter_shapes, ternary_parameters  # noqa: E402
from shared.spec.ternary import quantize  # noqa: E402
from tests.variants import tiny_sets  # noqa: E402

# TQ blocks are 256 values of a row: every ternary input dimension is 256 or 512 here. The bytes
# tokenizer (256 ids) fits the 320-id vocabulary; its metadata is tested in test_export_gguf_vocab.py.
BASE = tiny_sets(vocab_size=320, hidden_size=256, intermediate_size=512, ternary=dict(group_size=128),
                 data=dict(tokenizer="bytes"))
QWEN3_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _llama_cpp_name(name: str) -> str:
    """llama.cpp's tensor names, written out by hand (independent of gguf.TensorNameMap)."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, _, i, rest = name.split(".", 3)
    return f"blk.{i}.{QWEN3_NAMES[rest[:-len('.weight')]]}.weight"


def _ckpt(path, extra=(), tokenizer=None):
    cfg = RunConfig().with_overrides(BASE + list(extra)
                                     + ([f"data.tokenizer='{tokenizer}'"] if tokenizer else []))
    weights = init_weights(cfg.model, seed=0)
    write_checkpoint(path, cfg, weights, writer={"backend": "test"})
    return cfg, weights


def _effective(cfg, w):
    G = cfg.ternary.group_size
    q, s = quantize(w, G, cfg.ternary.eps)
    g = q.reshape(1, 1, -1) if G == 0 else q.reshape(w.shape[0], -1, G)
    full_s = np.broadcast_to(s[..., None], g.shape).reshape(w.shape)
    return q, full_s.astype(np.float32)


def _read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("gtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("group,tie", [(0, True), (256, False)])
def test_gguf_exact_codes_and_fp16_scales(tmp_path, capsys, gtype, group, tie):
    extra = [f"ternary.group_size={group}"] + ([] if tie else ["model.tie_word_embeddings=false"])
    cfg, weights = _ckpt(tmp_path / "ck", extra)
    out = tmp_path / "m.gguf"
    assert main(["convert", str(tmp_path / "ck"), "--to", "gguf", "--gguf-type", gtype, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "codes exact" in printed.out and "LOSSY" not in printed.out and "group_size" not in printed.err
    assert "Q8_K" in printed.err  # llama.cpp's 8-bit activations: always said (float-activation model here)
    fields, tensors = _read(out)
    m = cfg.model
    assert fields["general.architecture"] == "qwen3"
    assert fields["general.file_type"] == int(getattr(gguf.LlamaFileType, f"MOSTLY_{gtype}"))
    want = {"block_count": 2, "context_length": m.max_position_embeddings, "embedding_length": 256,
            "feed_forward_length": 512, "attention.head_count": 4, "attention.head_count_kv": 2,
            "attention.key_length": 64, "attention.value_length": 64, "rope.freq_base": m.rope_theta}
    for k, v in want.items():
        assert fields[f"qwen3.{k}"] == v, k
    assert fields["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(m.rms_norm_eps, rel=1e-6)

    assert set(tensors) == {_llama_cpp_name(n) for n in parameter_shapes(m)}
    assert ("output.weight" in tensors) == (not tie)
    tern = set(ternary_parameters(cfg))
    for name, w in weights.items():
        t = tensors[_llama_cpp_name(name)]
        assert tuple(int(x) for x in t.shape[::-1]) == w.shape, name  # GGUF lists dims innermost first
        if name in tern:
            assert t.tensor_type.name == gtype
            back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
            q, s = _effective(cfg, w)
            s16 = s.astype(np.float16).astype(np.float32)
            assert np.array_equal(back, q * s16), name  # exact codes, fp16 scales
            assert np.abs(back - q * s).max() <= 2.0 ** -11 * s.max(), name
        elif w.ndim == 1:
            assert t.tensor_type.name == "F32" and np.array_equal(np.asarray(t.data), w), name
        else:
            assert t.tensor_type.name == "F16"
            assert np.array_equal(np.asarray(t.data).reshape(w.shape), w.astype(np.float16)), name
    assert tensor_bytes(cfg, gtype) == sum(int(t.n_bytes) for t in tensors.values())  # inspect's size
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_gguf_grouped_64_is_lossy_but_keeps_codes(tmp_path, capsys):
    cfg, weights = _ckpt(tmp_path / "ck", ["ternary.group_size=64", "ternary.activation_bits=8"])
    out = tmp_path / "m.gguf"
    assert main(["convert", str(tmp_path / "ck"), "--to", "gguf", "--gguf-float", "f32", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "lossy" in printed.err and "Q8_K" in printed.err and "LOSSY" in printed.out
    _, tensors = _read(out)
    worst = 0.0
    for name in ternary_parameters(cfg):
        w = weights[name]
        back = gguf.quants.dequantize(tensors[_llama_cpp_name(name)].data, gguf.GGMLQuantizationType.TQ2_0)
        back = back.reshape(w.shape)
        q, s = _effective(cfg, w)
        assert np.array_equal(np.sign(back), q), name  # codes kept exactly
        # one scale per 256-block: the least-squares one for these codes, in fp16
        qb, sb = q.reshape(-1, 256).astype(np.float64), s.reshape(-1, 256).astype(np.float64)
        d = (qb ** 2 * sb).sum(1) / np.maximum((qb ** 2).sum(1), 1)
        assert np.array_equal(back.reshape(-1, 256), (qb * d.astype(np.float32).astype(np.float16)[:, None]).astype(np.float32))
        worst = max(worst, float(np.abs(back - q * s).max()))
    assert worst > 1e-4  # grouped scales really differ inside a block
    r = to_gguf(tmp_path / "ck", out, force=True)
    assert not r["exact_scales"] and r["lossless_codes"] and r["max_abs_weight_error"] == pytest.approx(worst, rel=1e-6)
    assert tensors["token_embd.weight"].tensor_type.name == "F32"


@pytest.mark.parametrize("extra,word", [
    (["model.hidden_size=128", "model.num_attention_heads=2", "model.num_key_value_heads=1"], "% 256"),
    (["ternary.enabled=false"], "no ternary weights"),
    (["model.qk_norm=false"], "qk_norm"),
])
def test_gguf_refusals(tmp_path, capsys, extra, word):
    _ckpt(tmp_path / "ck", extra)
    with pytest.raises(ConfigError, match=word):
        to_gguf(tmp_path / "ck", tmp_path / "x.gguf")
    assert main(["convert", str(tmp_path / "ck"), "--to", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    assert word in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "ck"]


def test_gguf_force_and_flags(tmp_path, capsys):
    _ckpt(tmp_path / "ck", ["ternary.group_size=0"])
    to_gguf(tmp_path / "ck", tmp_path / "m.gguf")
    with pytest.raises(Exception, match="--force"):
        to_gguf(tmp_path / "ck", tmp_path / "m.gguf")
    assert main(["convert", str(tmp_path / "ck"), "--to", "hf", "--gguf-type", "TQ1_0", "--out", str(tmp_path / "h")]) == 2
    assert "--gguf-type" in capsys.readouterr().err


def _bpe_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat and the dog sat on the log"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
    return path, tok.get_vocab_size()


def test_gguf_tokenizer_metadata(tmp_path):
    tok_dir, n = _bpe_tokenizer(tmp_path / "tok")
    _ckpt(tmp_path / "ck", tokenizer=tok_dir)
    r = to_gguf(tmp_path / "ck", tmp_path / "m.gguf")
    assert r["tokenizer"].startswith("written")
    fields, _ = _read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.model"] == "gpt2"
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 320  # padded to model.vocab_size
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    assert [hf.convert_tokens_to_ids(t) for t in tokens[:n]] == list(range(n))
    assert tokens[n] == f"[PAD{n}]" and types[n] == int(gguf.TokenType.UNUSED)
    eos = fields["tokenizer.ggml.eos_token_id"]
    assert tokens[eos] == "<|endoftext|>" and types[eos] == int(gguf.TokenType.CONTROL)
    assert len(fields["tokenizer.ggml.merges"]) > 0
    # this test tokenizer's pre-tokenizer is plain byte-level, not Qwen2's regex: written as
    # llama.cpp's 'default', and the report says it may split text differently
    assert fields["tokenizer.ggml.pre"] == "default"
    assert "WARNING: the pre-tokenizer is not Qwen2's" in r["tokenizer"]
