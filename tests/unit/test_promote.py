"""shared/train/promote.py: shape scaling, the artifact estimate against the real packer, the lr rules,
the memory/FLOP/time model and the errors of `ternary promote` (NumPy only, no backend)."""
from __future__ import annotations

import math

import pytest

from convert.formats.packed import pack
from shared.train import promote
from shared.spec.config import ConfigError, RunConfig
from shared.spec.init import init_weights
from shared.train.loop import count_parameters
from shared.spec.params import parameter_shapes, parameter_specs
from shared.train.optim_rules import muon_scale, uses_muon
from shared.spec.presets import get_preset
from tests.variants import tiny_sets


@pytest.fixture(scope="module")
def mac():
    return get_preset("mac-ablation")


# ---- artifact estimate ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    [],
    ["model.tie_word_embeddings=false", "ternary.group_size=0"],
])
def test_artifact_estimate_matches_pack(extra):
    """Sections and header are exact; the total is an upper bound of the LZMA file, within 10%
    (measured: 6.8% and 4.5% above; LZMA shrinks the random fp16 floats and the scales a little)."""
    cfg = RunConfig().with_overrides(tiny_sets(vocab_size=128, hidden_size=128, intermediate_size=512,
                                               ternary=dict(group_size=64)) + extra)
    weights = init_weights(cfg.model, seed=0)
    est = promote.artifact_estimate(cfg)
    blob, stats = pack(cfg, weights, "lzma", measure_codes=False)
    assert (est.codes, est.scales, est.floats) == (stats.codes_bytes, stats.scales_bytes, stats.floats_bytes)
    raw_blob, raw_stats = pack(cfg, weights, "none", measure_codes=False)
    assert est.header == raw_stats.header_bytes and est.total == len(raw_blob)  # exact without compression
    assert abs(est.header - stats.header_bytes) <= 2  # only the digits of payload_bytes can differ
    assert len(blob) <= est.total <= 1.10 * len(blob), (len(blob), est.total)


def test_artifact_estimate_of_the_16mb_shape_is_near_the_record(mac):
    """The parameter-golf record packed 73.7M parameters into 15.99 MB; our rule is ~1.7 bits per
    ternary weight, so a 16 MB budget lands at 60-75M parameters."""
    cfg = promote.choose_shape(mac, "artifact", 16e6)
    total, tern = count_parameters(cfg)
    assert promote.artifact_estimate(cfg).total <= 16e6
    assert 55e6 < total < 75e6
    bits = 8 * (promote.artifact_estimate(cfg).codes + promote.artifact_estimate(cfg).scales) / tern
    assert 1.6 <= bits <= 1.75


# ---- shape rules ----------------------------------------------------------------------------------
def _widths(base):
    return [w for w in range(64, 8193, 64) if promote.shape_at(base, w, 1) is not None]


@pytest.mark.parametrize("kind,budgets", [
    ("params", [5e6, 2e7, 4e7, 6e7, 1e8, 2e8, 5e8]),
    ("artifact", [2e6, 4e6, 8e6, 16e6, 32e6, 64e6]),
])
def test_scaling_is_monotonic_and_under_budget(mac, kind, budgets):
    prev = (0, 0, 0)
    for b in budgets:
        cfg = promote.choose_shape(mac, kind, b)
        m = cfg.model
        measure = count_parameters(cfg)[0] if kind == "params" else promote.artifact_estimate(cfg).total
        assert measure <= b
        cur = (measure, m.hidden_size, m.num_hidden_layers)
        assert all(c >= p for c, p in zip(cur, prev)), (b, prev, cur)
        prev = cur


def test_shape_keeps_the_ablation_choices(mac):
    cfg = promote.choose_shape(mac, "params", 1.5e8)
    m, b = cfg.model, mac.model
    assert m.hidden_size % 64 == 0 and m.hidden_size > b.hidden_size
    assert m.head_dim == b.head_dim
    assert m.num_attention_heads * b.hidden_size == b.num_attention_heads * m.hidden_size  # heads scale with width
    assert m.num_attention_heads // m.num_key_value_heads == b.num_attention_heads // b.num_key_value_heads
    assert m.intermediate_size * b.hidden_size == b.intermediate_size * m.hidden_size  # ratio 2 is exact here
    for key in ("vocab_size", "hidden_act", "tie_word_embeddings", "final_logit_softcapping", "qk_norm",
                "rope_theta", "rms_norm_eps", "initializer_range", "model_type"):
        assert getattr(m, key) == getattr(b, key), key
    assert cfg.ternary == mac.ternary and cfg.data == mac.data
    for shape in (s for n, s in parameter_shapes(m).items() if len(s) == 2 and n.startswith("model.layers.")):
        assert shape[1] % cfg.ternary.group_size == 0
    cfg.validate()


def test_choice_is_the_largest_on_the_aspect_line(mac):
    """Depth stays between the ratio depth of its width and (excluded) that of the next width; one
    more layer, or the next width at its ratio depth, would break the budget."""
    budget = 9e7
    cfg = promote.choose_shape(mac, "params", budget)
    w, d = cfg.model.hidden_size, cfg.model.num_hidden_layers
    widths = _widths(mac)
    nxt = widths[widths.index(w) + 1]
    lo, hi = promote.ratio_depth(mac, w), max(promote.ratio_depth(mac, w), promote.ratio_depth(mac, nxt) - 1)
    assert lo == round(w * 9 / 512) and lo <= d <= hi
    assert d == hi or count_parameters(promote.shape_at(mac, w, d + 1))[0] > budget
    assert count_parameters(promote.shape_at(mac, nxt, promote.ratio_depth(mac, nxt)))[0] > budget


def test_widths_respect_heads_and_group_size(mac):
    """8/4 heads of 64 and group 128: only multiples of 128 give an even head count and divisible dims."""
    assert _widths(mac)[:4] == [128, 256, 384, 512]
    q = get_preset("qwen3-0.6b")  # 16/8 heads of 128 on width 1024: q width is 2x the hidden width
    cfg = promote.shape_at(q, 2048, 4)
    assert cfg.model.num_attention_heads == 32 and cfg.model.num_key_value_heads == 16
    assert cfg.model.intermediate_size == 6144 and cfg.model.head_dim == 128


# ---- learning rates -------------------------------------------------------------------------------
def test_adam_lr_scales_with_base_over_new_width(mac):
    adam = mac.with_overrides(["train.optimizer=adamw"])  # mac-ablation itself trains with muon
    p = promote.plan(adam, "8xh100", params=int(1e8))
    assert p.config.train.lr == pytest.approx(adam.train.lr * 512 / p.config.model.hidden_size)
    assert p.config.train.muon_lr == adam.train.muon_lr


def test_muon_lr_is_kept_and_its_shape_factor_is_unchanged(mac):
    base = mac.with_overrides(["train.optimizer=muon", "train.muon_lr=0.04", "train.lr=0.01"])
    p = promote.plan(base, "8xh100", params=int(1e8))
    assert p.config.train.muon_lr == 0.04 and p.config.train.lr == 0.01
    def factors(cfg):
        return {n.split(".", 3)[-1]: muon_scale(s.shape) for n, s in parameter_specs(cfg.model).items()
                if uses_muon(s, cfg.train)}
    assert factors(p.config) == factors(base) and factors(base)  # e.g. up_proj sqrt(2) at both widths


# ---- memory, FLOPs, time --------------------------------------------------------------------------
def test_memory_components(mac):
    mac = mac.with_overrides(["train.optimizer=adamw"])  # mac-ablation itself trains with muon
    n = count_parameters(mac)[0]
    m = promote.memory_per_gpu(mac, 4, 1024, 8, "ddp")
    assert (m.weights, m.grads, m.optimizer, m.ddp_buckets) == (4 * n, 4 * n, 8 * n, 4 * n)  # AdamW: 2 fp32 slots
    assert m.activations == 4 * 1024 * 9 * 34 * 512
    assert m.logits == 4 * 1024 * 1024 * 12
    m8 = promote.memory_per_gpu(mac, 8, 1024, 8, "ddp")
    assert m8.activations == 2 * m.activations and m8.weights == m.weights
    f = promote.memory_per_gpu(mac, 4, 1024, 8, "fsdp2")
    assert (f.weights, f.grads, f.optimizer, f.ddp_buckets) == (n / 2, n / 2, n, 0)
    ema = mac.with_overrides(["train.ema_decay=0.99"])
    assert promote.memory_per_gpu(ema, 4, 1024, 8, "ddp").optimizer == 12 * n
    muon = mac.with_overrides(["train.optimizer=muon"])
    n_muon = sum(math.prod(s.shape) for k, s in parameter_specs(mac.model).items()
                 if s.role == "matrix" and k.startswith("model.layers."))  # not resid_mix (2, hidden)
    assert promote.memory_per_gpu(muon, 4, 1024, 8, "ddp").optimizer == 4 * n_muon + 8 * (n - n_muon)


def test_flops_per_token(mac):
    fpt, n_mm = promote.flops_per_token(mac, 1024)
    per_layer = 512 * 512 * 2 + 2 * 256 * 512 + 2 * 1024 * 512  # q, o; k, v; up, down
    assert n_mm == 9 * per_layer + 1024 * 512  # + the tied head
    assert fpt == 6 * n_mm + 12 * 9 * 8 * 64 * 1024
    # a factored tied embedding: its two projections are matmuls, and the head is vocab x embed_dim
    _, n_factored = promote.flops_per_token(mac.with_overrides(["model.embed_dim=64"]), 1024)
    assert n_factored == 9 * per_layer + 2 * 512 * 64 + 1024 * 64


def test_plan_batch_steps_and_time(mac):
    p = promote.plan(mac, "8xh100", artifact_bytes=16e6, seconds=600)
    t = p.config.train
    assert 8 * t.batch_size * t.grad_accum * t.seq_len == promote.DEFAULT_BATCH_TOKENS == p.batch_tokens
    assert t.seq_len == 1024 and p.config.model.max_position_embeddings >= 1024
    assert p.step_time_s == pytest.approx(p.flops_per_token * 524288 / (8 * 989e12 * 0.40))
    assert t.steps == int(600 // p.step_time_s) and t.time_budget_s == 600
    assert p.tokens == t.steps * 524288
    assert p.memory.total <= 80e9 * promote.MEMORY_HEADROOM and p.parallel == "ddp"
    assert p.memory == promote.memory_per_gpu(p.config, t.batch_size, 1024, 8, "ddp")
    # a bigger micro-batch would have to be a larger divisor of 64: either none is left or it does not fit
    assert t.batch_size == 64 or promote.memory_per_gpu(
        p.config, 2 * t.batch_size, 1024, 8, "ddp").total > 80e9 * promote.MEMORY_HEADROOM
    assert (t.parallel, t.compile, t.precision, t.tf32) == (p.parallel, True, "bf16", True)
    assert t.checkpoint_every == t.steps // 10  # mac-ablation has none: a dead rank loses at most 10%


def test_plan_roundtrips_through_toml(mac, tmp_path):
    p = promote.plan(mac, "8xh100", artifact_bytes=16e6)
    p.config.save_toml(tmp_path / "p.toml")
    assert RunConfig.load_toml(tmp_path / "p.toml") == p.config


def test_micro_batch_shrinks_and_fsdp2_when_memory_is_short(mac):
    big = promote.plan(get_preset("qwen3-8b"), "8xh100", params=int(8.2e9), seq_len=4096)
    assert big.parallel == "fsdp2"  # 16 B/param replicated + buckets do not fit 64 GB
    assert big.config.train.grad_accum > 1  # 16 sequences of 4096 per GPU do not fit at once
    assert big.memory.total <= 80e9 * promote.MEMORY_HEADROOM
    with pytest.raises(ConfigError, match="does not fit one 1xh100 GPU"):
        promote.plan(get_preset("qwen3-8b"), "1xh100", params=int(8.2e9), seq_len=4096)


def test_warnings(mac):
    p = promote.plan(mac, "8xh100", params=int(5e8), seconds=60, train_tokens_available=10**6)
    assert any("tokens per parameter" in w for w in p.warnings)
    assert any("data-limited" in w and "epochs" in w for w in p.warnings)
    ok = promote.plan(mac, "8xh100", params=int(2e7), seconds=600, train_tokens_available=10**12)
    assert ok.warnings == []


# ---- errors ---------------------------------------------------------------------------------------
def test_errors(mac):
    with pytest.raises(ConfigError, match=r"unknown target '8xh10'.*did you mean '8xh100'.*8xh100.*1xh100.*8xh200"):
        promote.plan(mac, "8xh10", params=10**8)
    with pytest.raises(ConfigError, match="not both"):
        promote.plan(mac, "8xh100", params=10**8, artifact_bytes=16e6)
    with pytest.raises(ConfigError, match="give a budget"):
        promote.plan(mac, "8xh100")
    with pytest.raises(ConfigError, match=r"below the smallest shape.*width 128"):
        promote.plan(mac, "8xh100", params=10**5)
    with pytest.raises(ConfigError, match="below the smallest shape"):
        promote.plan(mac, "8xh100", artifact_bytes=1e5)
    with pytest.raises(ConfigError, match="multiple of 8,192"):
        promote.plan(mac, "8xh100", params=10**8, batch_tokens=1000)
    with pytest.raises(ConfigError, match="more than --seconds"):
        promote.plan(mac, "8xh100", params=10**9, seconds=0.01)
    with pytest.raises(ConfigError, match="--params"):
        promote.parse_count("lots")
    assert promote.parse_count("74M") == 74_000_000 and promote.parse_count("1.5B") == 1_500_000_000
    assert promote.parse_count("12_000") == 12000


def test_step_counts_keep_their_fraction_of_the_run_and_checkpoints_are_periodic():
    from shared.train.promote import scale_step_counts
    base = get_preset("mac-ablation").with_overrides(["train.steps=1000", "train.eval_every=100", "train.warmup_steps=10",
                                                       "ternary.warmup_steps=50", "train.checkpoint_every=0"])
    train, tern = scale_step_counts(base, 5000)
    assert train == {"eval_every": 500, "warmup_steps": 50, "checkpoint_every": 500}  # none before: every 10%
    assert tern == {"warmup_steps": 250}
    train, _ = scale_step_counts(base.with_overrides(["train.checkpoint_every=200", "train.eval_every=0"]), 500)
    assert train["checkpoint_every"] == 100 and train["eval_every"] == 0  # 0 = only at the end stays 0
