"""tests/variants.py itself: every row is a valid config, and the --set strings give the same one."""
from __future__ import annotations

import pytest

from shared.spec.config import RunConfig
from tests.variants import FAST_VARIANTS, VARIANTS, tiny_config, tiny_dict, tiny_sets, variant_config


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_strings_and_dicts_give_the_variant_config(variant):
    model, ternary = VARIANTS[variant]
    cfg = variant_config(variant)
    assert RunConfig().with_overrides(tiny_sets(ternary, **model)).to_dict() == cfg.to_dict()
    assert RunConfig.from_dict(tiny_dict(ternary, **model)).to_dict() == cfg.to_dict()


def test_overrides_of_every_section_reach_the_config():
    kw = dict(ternary=dict(targets=["attn", "mlp", "embed", "lm_head"], activation_bits=8),
              train=dict(lr=1e-5, ema_decay=0.9, seq_len=32), data=dict(tokenizer="bytes", source="/tmp/a b"),
              hidden_act="relu2", final_logit_softcapping=30.0, num_hidden_layers=1)
    cfg = tiny_config(**kw)
    assert RunConfig().with_overrides(tiny_sets(**kw)).to_dict() == cfg.to_dict()
    assert (cfg.data.source, cfg.train.ema_decay, cfg.ternary.activation_bits, cfg.model.num_hidden_layers) == \
        ("/tmp/a b", 0.9, 8, 1)


def test_fast_variants_are_rows():
    assert set(FAST_VARIANTS) <= set(VARIANTS)
