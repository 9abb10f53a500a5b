"""Score-first test-time training (train.ttt, shared/train/ttt.py; SEEDS S14): legality, restoration,
parity between the backends, the end of training and `ternary eval`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from convert.cli import main
from shared.data.dataset import load_token_dataset
from shared.data.tokenizers import get_tokenizer
from shared.spec import checkpoint as fmt
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import parameter_specs
from shared.train.ttt import TTTPlan, mean_gradients, plain_score, score_first_ttt
from tests.train.common import backend, config, records, run

BACKENDS = ["mlx", "torch"]
SEQ, CHUNK = 32, 64  # windows of 32 tokens, two per chunk
PLANS = {"full": TTTPlan("full", 0.05, 2, CHUNK, 4, ("q_proj", "v_proj"), 0),
         "lora": TTTPlan("lora", 0.5, 2, CHUNK, 4, ("q_proj", "v_proj"), 0)}


@pytest.fixture(scope="module")
def data():
    return load_token_dataset("synthetic", get_tokenizer("bytes"), synthetic_train_bytes=50000,
                              synthetic_val_bytes=10000, seed=0)


def _model(name, seed=1):
    cfg = config()
    return backend(name).Model(cfg, seed=seed), cfg


def _evaluate_module(name):
    import importlib
    return importlib.import_module("ternary_mlx.evaluate" if name == "mlx" else "ternary_cuda.evaluate")


def _copy(weights):
    return {k: np.array(v, copy=True) for k, v in weights.items()}


def _ttt_with_snapshots(name, tokens, plan, tokenizer):
    """score_first_ttt on a real backend model, recording the weights each chunk was scored with."""
    model, cfg = _model(name)
    ev = _evaluate_module(name)
    score = plain_score(lambda x, y: ev.token_nll(model, x, y), tokenizer, SEQ, 2)
    snapshots = []

    def scored(piece):
        snapshots.append(_copy(model.numpy_weights()))
        return score(piece)
    out = score_first_ttt(plan, _copy(model.numpy_weights()), parameter_specs(cfg.model), tokens, SEQ, None,
                          score=scored, load=model.load_numpy,
                          gradients=lambda w, n: mean_gradients(lambda b, nn: ev.loss_gradients(model, b, nn), w, n, 2))
    return out, snapshots, model


# ---- the order, without a model -----------------------------------------------------------------
def test_every_update_is_on_tokens_already_scored_and_chunk_i_sees_i_updates():
    """A stand-in backend whose tokens are their own positions: each gradient's windows lie in
    chunks already scored, chunk i is scored after exactly i * steps updates, the last chunk is
    never trained on, and the weights are put back at the end."""
    tokens = np.arange(5 * CHUNK + 1 - 10)  # 5 chunks, the last one short
    events, scored_upto, loaded = [], [-1], []
    weights = {"w": np.zeros(3, np.float32)}

    def score(piece):
        events.append(("score", int(piece[0]), len(loaded)))
        scored_upto[0] = int(piece[-1])
        return float(len(piece) - 1), len(piece) - 1, len(piece) - 1

    def gradients(windows, names):
        assert windows.max() <= scored_upto[0], "an update saw tokens that were not scored yet"
        events.append(("grad", int(windows.min())))
        return {"w": np.ones(3, np.float32)}

    plan = TTTPlan("full", 0.1, 3, CHUNK, 4, ("q_proj",), 0)
    out = score_first_ttt(plan, weights, {}, tokens, SEQ, None, score=score, gradients=gradients,
                          load=lambda w: loaded.append(_copy(w)))
    scores = [e for e in events if e[0] == "score"]
    assert [(s, n) for _, s, n in scores] == [(i * CHUNK, 3 * i) for i in range(5)]
    assert len([e for e in events if e[0] == "grad"]) == 4 * 3  # not on the last chunk
    np.testing.assert_array_equal(loaded[-1]["w"], np.zeros(3))  # put back
    np.testing.assert_allclose(loaded[-2]["w"], -0.1 * 12 * np.ones(3), rtol=1e-6)  # the updates persisted
    assert out["ttt_chunks"] == 5 and "score-first TTT: full weights, chunk 64 tokens, 3 SGD steps" in out["ttt_mode"]


# ---- real models ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", PLANS)
@pytest.mark.parametrize("name", BACKENDS)
def test_chunk_scores_never_depend_on_their_own_tokens(name, mode, data):
    """Chunk 0's TTT score is the plain score; chunk i (here 2) is scored with weights that do not
    change when chunk i's later tokens change, and its score is the plain score of those weights;
    later chunks see the updates; the model's weights are as before afterwards."""
    tokens = np.asarray(data.val[:4 * CHUNK + 1], np.int64)
    changed = tokens.copy()
    changed[2 * CHUNK + 40:3 * CHUNK + 1] = tokens[10:10 + CHUNK - 39]  # the later part of chunk 2
    out, snaps, model = _ttt_with_snapshots(name, tokens, PLANS[mode], data.tokenizer)
    for k, v in model.numpy_weights().items():  # put back: the weights chunk 0 was scored with
        np.testing.assert_array_equal(v, snaps[0][k], err_msg=k)
    out2, snaps2, _ = _ttt_with_snapshots(name, changed, PLANS[mode], data.tokenizer)
    ev = _evaluate_module(name)
    fresh, _ = _model(name)
    plain = [ev.evaluate(fresh, tokens[i * CHUNK:(i + 1) * CHUNK + 1], data.tokenizer, SEQ, batch_size=2)["val_loss"]
             for i in range(4)]
    assert out["ttt_chunk_loss"][0] == plain[0]
    assert not np.array_equal(snaps[2]["model.layers.0.self_attn.q_proj.weight"],
                              snaps[0]["model.layers.0.self_attn.q_proj.weight"])  # chunk 2 saw two chunks' updates
    for k in snaps[2]:
        np.testing.assert_array_equal(snaps2[2][k], snaps[2][k], err_msg=k)
    assert out2["ttt_chunk_loss"][:2] == out["ttt_chunk_loss"][:2]
    model.load_numpy(snaps2[2])
    want = ev.evaluate(model, changed[2 * CHUNK:3 * CHUNK + 1], data.tokenizer, SEQ, batch_size=2)["val_loss"]
    np.testing.assert_allclose(out2["ttt_chunk_loss"][2], want, rtol=1e-12)
    assert out["ttt_chunk_loss"][2] != out2["ttt_chunk_loss"][2]
    assert all(abs(a - b) > 1e-6 for a, b in zip(out["ttt_chunk_loss"][1:], plain[1:]))  # it adapts


@pytest.mark.parametrize("mode", PLANS)
def test_both_backends_give_the_same_chunk_scores(mode, data):
    tokens = np.asarray(data.val[:4 * CHUNK + 1], np.int64)
    got = {}
    for name in BACKENDS:
        model, _ = _model(name, seed=2)
        got[name] = _evaluate_module(name).evaluate_ttt(model, tokens, data.tokenizer, SEQ, PLANS[mode], batch_size=2)
    np.testing.assert_allclose(got["mlx"]["ttt_chunk_loss"], got["torch"]["ttt_chunk_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["mlx"]["val_bpb_ttt"], got["torch"]["val_bpb_ttt"], rtol=1e-5)
    assert got["mlx"]["ttt_mode"] == got["torch"]["ttt_mode"]


TTT_SETS = ["train.ttt=lora", "train.ttt_lr=0.5", "train.ttt_chunk_tokens=256", "train.ttt_lora_rank=4",
            "train.steps=4", "train.warmup_steps=1"]


@pytest.mark.parametrize("name", BACKENDS)
def test_the_final_evaluation_reports_ttt_beside_the_plain_numbers(name, tmp_path):
    r_ttt, summary, logs = run(config(*TTT_SETS), name, tmp_path / "ttt")
    r_off, summary_off, _ = run(config("train.steps=4", "train.warmup_steps=1"), name, tmp_path / "off")
    assert summary["val_bpb"] == summary_off["val_bpb"] and summary["val_loss"] == summary_off["val_loss"]
    assert summary["ttt_mode"] == "score-first TTT: lora r=4 on q_proj,v_proj, chunk 256 tokens, 1 SGD step per chunk at lr 0.5"
    assert summary["val_bpb_ttt"] != summary["val_bpb"] and "val_bpb_ttt" not in summary_off
    final = [r["eval"] for r in records(tmp_path / "ttt") if "eval" in r][-1]
    assert final["val_bpb"] == summary["val_bpb"] and final["val_bpb_ttt"] == summary["val_bpb_ttt"]
    assert any(f"({summary['ttt_mode']})" in line and "val_bpb" in line for line in logs)
    _, w_ttt = fmt.read_checkpoint(tmp_path / "ttt" / "checkpoint")
    _, w_off = fmt.read_checkpoint(tmp_path / "off" / "checkpoint")
    for k in w_off:  # TTT put the weights back before the checkpoint was written
        np.testing.assert_array_equal(w_ttt[k], w_off[k], err_msg=k)


def test_ternary_eval_ttt_reports_both_and_refuses_a_stride(tmp_path, capsys):
    run(config("train.steps=2", "train.warmup_steps=1"), "torch", tmp_path / "r")
    base = ["eval", str(tmp_path / "r"), "--backend", "torch", "--json", "--max-tokens", "1024"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(base + ["--ttt", "full", "--ttt-lr", "0.01", "--ttt-chunk-tokens", "256"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["val_bpb"] == plain["val_bpb"] and "val_bpb_ttt" not in plain
    assert out["ttt_mode"].startswith("score-first TTT: full weights, chunk 256 tokens") and out["ttt_chunks"] == 4
    assert main(base + ["--ttt", "lora", "--stride", "8"]) == 2
    assert "--stride 8 with score-first TTT" in capsys.readouterr().err
    assert main(base + ["--ttt", "lora", "--ttt-chunk-tokens", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("ternary: error:") == 1 and "train.ttt_chunk_tokens must be a positive multiple" in err


@pytest.mark.parametrize("sets,message", [
    (["train.ttt=lra"], "train.ttt: 'lra' is not one of off, full, lora (did you mean 'lora'?)"),
    (["train.ttt_lr=0"], "train.ttt_lr must be positive, got 0.0"),
    (["train.ttt_steps=0"], "train.ttt_steps must be >= 1, got 0"),
    (["train.ttt_lora_rank=0"], "train.ttt_lora_rank must be >= 1, got 0"),
    (["train.ttt=full", "train.ttt_chunk_tokens=300"], "train.ttt_chunk_tokens must be a positive multiple of train.seq_len (256)"),
    (['train.ttt_lora_targets=["qproj"]'], "train.ttt_lora_targets: 'qproj' names no block projection"),
    (["train.ttt=full", "train.eval_stride=64"], "train.ttt = 'full' scores non-overlapping windows"),
])
def test_bad_ttt_values_are_one_clear_line(sets, message):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides(sets)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_ttt_is_refused_on_several_ranks_before_any_work(tmp_path):
    from shared.train.runner import train
    with pytest.raises(ConfigError, match=r"runs in one process, not on 2 ranks"):
        train(config("train.ttt=full", "train.ttt_chunk_tokens=256"), backend("torch"), tmp_path / "r",
              log=lambda _m: None, progress=False, world_size=2)
    assert not (tmp_path / "r").exists()
