"""Which stock formats can express a config, decided by the exporters' own checks on the config alone
(no weights): what `ternary presets` lists per preset and what `ternary convert --help` says
(tests/convert/test_export_support.py holds the help text to this).

canonical and packed store any config; the stock formats below refuse what their loaders cannot
express (shared/spec/options.py, and each format's own limits: mlx-lm's groups of 64 / 128, hf-bitnet's
one scale per tensor, gguf's blocks of 256 values of a row). The tokenizer is not part of this: a
GGUF also needs one it can write (convert/formats/gguf_vocab.py), which every preset's default has.
"""
from __future__ import annotations

from shared.spec.config import ConfigError, RunConfig

STOCK_FORMATS = ("hf", "mlx-lm", "hf-bitnet", "gguf")


def refusal(config: RunConfig, fmt: str) -> str | None:
    """Why `ternary convert --to fmt` refuses a model of this config, or None if it exports."""
    from convert.formats import gguf_export, hf_bitnet, hf_export
    from shared.spec.params import ternary_parameters
    tern = set(ternary_parameters(config))
    try:
        if fmt == "hf":
            hf_export.check_expressible(config, "hf")
        elif fmt == "mlx-lm":
            hf_export.check_expressible(config, "mlx-lm")
            if not tern:
                return "--to mlx-lm: no ternary weights"
            hf_export.mlx_group(config, tern)
        elif fmt == "hf-bitnet":
            hf_bitnet.plan(config, tern)
        elif fmt == "gguf":
            hf_bitnet.check_qwen3_shape(config, "gguf")
            if gguf_export.tensor_bytes(config) is None:
                return (f"--to gguf: no ternary weights, or a ternary in_features that is not a multiple of "
                        f"{gguf_export.QK}")
        else:
            raise ValueError(f"not a stock export format: {fmt!r}")
    except ConfigError as e:
        return str(e)
    return None


def stock_formats(config: RunConfig) -> list[str]:
    """The stock formats (hf, mlx-lm, hf-bitnet, gguf) that export a model of this config."""
    return [f for f in STOCK_FORMATS if refusal(config, f) is None]
