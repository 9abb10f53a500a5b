"""The main job's model exports to every stock format (convert/formats/support.py): the `smoke` preset
itself, randomly initialised, through `ternary convert --to hf|mlx-lm|hf-bitnet|gguf`, with stock
transformers and mlx-lm giving our logits; and `ternary convert --help` / `ternary presets` say which
presets export where, as the exporters' own checks decide."""
from __future__ import annotations

import re

import numpy as np
import pytest

from convert.cli import build_parser, main
from convert.formats.support import STOCK_FORMATS, refusal, stock_formats
from shared.spec.checkpoint import write_checkpoint
from shared.spec.init import init_weights
from shared.spec.presets import PRESETS, get_preset
from shared.spec.reference_model import reference_logits


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    cfg = get_preset("smoke")
    path = tmp_path_factory.mktemp("smoke") / "ck"
    write_checkpoint(path, cfg, init_weights(cfg.model, seed=0), writer={"backend": "test"})
    return cfg, path


def test_smoke_preset_is_a_stock_shape():
    cfg = get_preset("smoke")
    assert {f: refusal(cfg, f) for f in STOCK_FORMATS} == dict.fromkeys(STOCK_FORMATS)


@pytest.mark.parametrize("fmt", STOCK_FORMATS + ("packed", "canonical"))
def test_smoke_model_exports_to_every_format(smoke_ckpt, tmp_path, capsys, fmt):
    if fmt == "gguf":
        pytest.importorskip("gguf")
    if fmt == "mlx-lm":
        pytest.importorskip("mlx.core")
    _, ck = smoke_ckpt
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m.tpk" if fmt == "packed" else "out")
    assert main(["convert", str(ck), "--to", fmt, "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "LOSSY" not in printed.out and "lossy: ternary.group_size" not in printed.err
    if fmt == "gguf":
        import gguf
        fields = gguf.GGUFReader(str(out)).fields
        assert fields["tokenizer.ggml.model"].contents() == "llama"  # the built-in SentencePiece tokenizer


def _window(cfg):
    return np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(1, 24))


def test_smoke_export_loads_in_transformers_and_mlx_lm(smoke_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, ck = smoke_ckpt
    from shared.spec.checkpoint import read_checkpoint
    ids = _window(cfg)
    ours = reference_logits(cfg, read_checkpoint(ck)[1], ids)
    assert main(["convert", str(ck), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs - ours).max() <= 1e-4
    mx = pytest.importorskip("mlx.core")
    from mlx_lm.utils import load_model
    assert main(["convert", str(ck), "--to", "mlx-lm", "--out", str(tmp_path / "mlx")]) == 0
    model, _ = load_model(tmp_path / "mlx")
    theirs = np.array(model(mx.array(ids)).astype(mx.float32))
    assert np.abs(theirs - ours).max() <= 1e-4


def _help_table() -> dict[str, list[str]]:
    """The per-preset format table of `ternary convert --help`: preset -> formats."""
    text = build_parser()._subparsers._group_actions[0].choices["convert"].format_help()
    block = text.split("Stock formats per preset")[1].split("\n\n")[0]
    table = {}
    for line in block.splitlines()[1:]:
        fmts, names = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        fmts = list(STOCK_FORMATS) if fmts.startswith("all") else [] if fmts.startswith("none") else fmts.split(", ")
        for name in re.sub(r"\(.*?\)", "", names).split(","):
            table[name.strip()] = fmts
    return table


def test_convert_help_says_which_presets_export_where():
    assert _help_table() == {name: stock_formats(get_preset(name)) for name in PRESETS}


def test_presets_command_lists_the_export_formats(capsys):
    assert main(["presets"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:] if line and not line[0].isspace()]
    listed = {r[0]: r[3] for r in rows}
    want = {name: stock_formats(get_preset(name)) for name in PRESETS}
    assert listed == {n: "all" if len(f) == len(STOCK_FORMATS) else ",".join(f) or "-" for n, f in want.items()}
    assert listed["smoke"] == "all"
