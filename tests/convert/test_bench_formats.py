"""bench/formats.py on a tiny checkpoint (sizes only): the JSON holds every format, and the sizes that
follow from the layouts come out (TQ2_0 66 bytes / TQ1_0 54 bytes per 256 weights, base-3 codes 8/5
bits, 2-bit packing + one fp32 scale per tensor, fp32 canonical)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.spec.checkpoint import write_checkpoint
from shared.spec.config import RunConfig
from shared.spec.init import init_weights
from shared.spec.params import parameter_shapes, ternary_parameters
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]


def test_bench_formats_smoke(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("mlx.core")
    cfg = RunConfig().with_overrides(tiny_sets(vocab_size=256, hidden_size=256, intermediate_size=256,
                                               num_hidden_layers=1, ternary=dict(group_size=0),
                                               data=dict(tokenizer="bytes")))  # a GGUF needs a tokenizer
    write_checkpoint(tmp_path / "ck", cfg, init_weights(cfg.model, seed=0), writer={"backend": "test"})
    p = subprocess.run([sys.executable, "bench/formats.py", "--checkpoint", str(tmp_path / "ck"), "--no-import",
                        "--json-out", str(tmp_path / "f.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out == json.loads((tmp_path / "f.json").read_text()) and "import_hf" not in out
    (m,) = out["models"]
    shapes = parameter_shapes(cfg.model)
    tern = ternary_parameters(cfg)
    n = sum(shapes[k][0] * shapes[k][1] for k in tern)
    assert m["ternary_weights"] == n and 0 < m["code_entropy_bits"] <= out["log2_3"]
    f = m["formats"]
    assert f["gguf_tq2_0"]["ternary_bits_per_weight"] == 2.0625 and f["gguf_tq1_0"]["ternary_bits_per_weight"] == 1.6875
    assert f["hf_bitnet"]["ternary_bytes"] == n // 4 + 4 * len(tern)
    assert f["packed"]["codes_bits_per_weight_uncompressed"] == pytest.approx(1.6, abs=1e-3)
    assert f["packed_int8_zstd"]["file_bytes"] < f["packed_fp16_zstd"]["file_bytes"]  # the 64 x 256 embedding
    assert f["packed_int8_lzma"]["float_bytes_uncompressed"] < f["packed"]["float_bytes_uncompressed"]
    assert f["canonical_fp32"]["ternary_bits_per_weight"] == 32.0
    # mlx-lm quantizes in groups of 64 / 128: the per-tensor scale is repeated per 128 inputs (fp32 scale + bias)
    assert f["mlx_lm"]["ternary_bits_per_weight"] == 2.5
