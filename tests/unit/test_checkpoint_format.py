"""The checkpoint directory format (shared/spec/checkpoint.py, DESIGN 3.4) and seeded init (shared/spec/init.py)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file as st_save_file

import shared.spec.checkpoint as ck
from shared.spec.checkpoint import CheckpointError, read_checkpoint, verify_manifest, write_checkpoint
from shared.spec.config import RunConfig
from shared.spec.init import init_weights
from shared.spec.params import parameter_shapes
from tests.variants import tiny_config

WRITER = {"backend": "unit-test"}


def _config(**model) -> RunConfig:
    """The tiny config, narrower (16 wide, 2 query / 1 key-value heads of 8): the tests below
    write some of these shapes out."""
    return tiny_config(ternary=dict(group_size=8), train=dict(seq_len=32, batch_size=2),
                       **{"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1, **model})


@pytest.fixture
def cfg() -> RunConfig:
    return _config()


@pytest.fixture
def ckpt(tmp_path, cfg):
    path = write_checkpoint(tmp_path / "ckpt", cfg, init_weights(cfg.model, seed=0), writer=WRITER)
    return path


def _visible_siblings(parent):
    return sorted(p.name for p in parent.iterdir())


# ---- round trip ----------------------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path, cfg):
    w = init_weights(cfg.model, seed=3)
    path = write_checkpoint(tmp_path / "c", cfg, w, writer=WRITER)
    assert path == tmp_path / "c"
    cfg2, w2 = read_checkpoint(path)
    assert cfg2.to_dict() == cfg.to_dict()
    assert set(w2) == set(w)
    for k in w:
        assert w2[k].dtype == np.float32 and w2[k].shape == w[k].shape
        assert w2[k].tobytes() == w[k].tobytes(), k
    # config.json is plain JSON of the resolved config; its model part uses Hugging Face key names.
    on_disk = json.loads((path / "config.json").read_text())
    assert on_disk == cfg.to_dict()
    assert on_disk["model"]["hidden_size"] == 16 and on_disk["model"]["head_dim"] == 8


def test_optional_parts_round_trip(tmp_path, cfg):
    w = init_weights(cfg.model, seed=0)
    opt = {f"{k}.exp_avg": np.full(v.shape, 0.5, np.float32) for k, v in w.items()}
    meta = {"step": 7, "betas": [0.9, 0.95]}
    state = {"step": 7, "tokens_seen": 1234, "best_val": 3.5}
    path = write_checkpoint(tmp_path / "c", cfg, w, writer=WRITER, optimizer_state=opt,
                            optimizer_meta=meta, trainer_state=state)
    got = ck.read_optimizer(path)
    assert got is not None
    o2, m2 = got
    assert set(o2) == set(opt) and all(np.array_equal(o2[k], opt[k]) for k in opt)
    assert m2 == meta
    assert ck.read_trainer_state(path) == state
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert {"optimizer.safetensors", "optimizer.json", "trainer_state.json"} <= set(files)


def test_without_optional_parts(ckpt):
    assert ck.read_optimizer(ckpt) is None
    assert ck.read_trainer_state(ckpt) is None


def test_manifest_lists_sha256_and_bytes(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format"] == "ternary-checkpoint"
    assert manifest["version"] == 1
    assert manifest["writer"]["backend"] == "unit-test"
    files = manifest["files"]
    assert {"config.json", "model.safetensors"} <= set(files)
    on_disk = {p.name for p in ckpt.iterdir()} - {"manifest.json"}
    assert set(files) == on_disk
    for name, meta in files.items():
        data = (ckpt / name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert meta["bytes"] == len(data) == os.path.getsize(ckpt / name), name
    assert verify_manifest(ckpt) == manifest


# ---- damage --------------------------------------------------------------------------------------
def test_flipped_byte_fails_sha256(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01  # inside the tensor data, so the header still parses and the size is unchanged
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt)
    assert "model.safetensors" in str(e.value) and "sha256" in str(e.value)


def test_truncated_file_reports_bytes(ckpt):
    f = ckpt / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:size - 100])
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt)
    msg = str(e.value)
    assert "model.safetensors" in msg and "bytes" in msg
    assert str(size - 100) in msg and str(size) in msg


def test_changed_config_fails_sha256(ckpt):
    f = ckpt / "config.json"
    f.write_text(f.read_text().replace('"hidden_size": 16', '"hidden_size": 32'))
    with pytest.raises(CheckpointError, match="config.json"):
        read_checkpoint(ckpt)


def test_missing_manifest_is_partial(ckpt):
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt)
    msg = str(e.value)
    assert "manifest.json" in msg and ("partial" in msg or "not a checkpoint" in msg)


def test_missing_listed_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing"):
        read_checkpoint(ckpt)


def test_damaged_manifest_and_not_a_directory(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere")
    (ckpt / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest"):
        read_checkpoint(ckpt)


def test_newer_format_version_is_refused(ckpt):
    mf = ckpt / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest["version"] = 99
    mf.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="99"):
        read_checkpoint(ckpt)


# ---- tensor set checks ---------------------------------------------------------------------------
def _bad_weights(cfg):
    w = init_weights(cfg.model, seed=0)
    del w["model.layers.1.mlp.up_proj.weight"]
    w["model.layers.0.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
    w["model.layers.0.self_attn.k_proj.weight"] = np.zeros((9, 16), np.float32)
    return w


def _assert_lists_all_three(msg):
    assert "model.layers.1.mlp.up_proj.weight" in msg
    assert "model.layers.0.mlp.extra.weight" in msg
    assert "model.layers.0.self_attn.k_proj.weight" in msg
    assert "(8, 16)" in msg and "(9, 16)" in msg  # expected and found shapes


def test_write_refuses_wrong_tensor_set_listing_every_problem(tmp_path, cfg):
    with pytest.raises(CheckpointError) as e:
        write_checkpoint(tmp_path / "c", cfg, _bad_weights(cfg), writer=WRITER)
    _assert_lists_all_three(str(e.value))
    assert _visible_siblings(tmp_path) == []


def test_read_refuses_wrong_tensor_set_listing_every_problem(ckpt, cfg):
    # Replace the weights file and re-sign the manifest so only the tensor check can catch it.
    f = ckpt / "model.safetensors"
    st_save_file(_bad_weights(cfg), str(f))
    mf = ckpt / "manifest.json"
    manifest = json.loads(mf.read_text())
    data = f.read_bytes()
    manifest["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                              "bytes": len(data)}
    mf.write_text(json.dumps(manifest))
    verify_manifest(ckpt)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt)
    _assert_lists_all_three(str(e.value))


@pytest.mark.parametrize("problem", ["extra", "missing", "misshapen"])
def test_each_problem_alone_is_refused(tmp_path, cfg, problem):
    w = init_weights(cfg.model, seed=0)
    if problem == "extra":
        w["model.layers.0.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
        name = "model.layers.0.mlp.extra.weight"
    elif problem == "missing":
        name = "model.layers.0.mlp.up_proj.weight"
        del w[name]
    else:
        name = "model.norm.weight"
        w[name] = np.ones(17, np.float32)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        write_checkpoint(tmp_path / "c", cfg, w, writer=WRITER)
    assert not (tmp_path / "c").exists()


def test_check_tensor_set_accepts_an_exact_match():
    ck.check_tensor_set({"a": (2, 3)}, {"a": (2, 3)}, "x")
    with pytest.raises(CheckpointError, match="a: expected \\(2, 3\\), found \\(3, 2\\)"):
        ck.check_tensor_set({"a": (2, 3)}, {"a": (3, 2)}, "x")


# ---- atomic writes -------------------------------------------------------------------------------
def test_overwrite_replaces_and_leaves_no_temp_dirs(tmp_path, cfg):
    path = tmp_path / "c"
    write_checkpoint(path, cfg, init_weights(cfg.model, seed=0), writer=WRITER)
    w1 = init_weights(cfg.model, seed=1)
    write_checkpoint(path, cfg, w1, writer=WRITER, trainer_state={"step": 2})
    _, got = read_checkpoint(path)
    assert all(np.array_equal(got[k], w1[k]) for k in w1)
    assert ck.read_trainer_state(path) == {"step": 2}
    assert _visible_siblings(tmp_path) == ["c"]  # no .c.tmp-* / .c.old-* left


def test_writes_into_an_existing_empty_directory(tmp_path, cfg):
    (tmp_path / "c").mkdir()
    write_checkpoint(tmp_path / "c", cfg, init_weights(cfg.model), writer=WRITER)
    read_checkpoint(tmp_path / "c")
    assert _visible_siblings(tmp_path) == ["c"]


def test_creates_missing_parents(tmp_path, cfg):
    path = tmp_path / "runs" / "a" / "step_10"
    write_checkpoint(path, cfg, init_weights(cfg.model), writer=WRITER)
    read_checkpoint(path)


def test_refuses_to_overwrite_a_non_checkpoint(tmp_path, cfg):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        write_checkpoint(d, cfg, init_weights(cfg.model), writer=WRITER)
    assert (d / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="refusing"):
        write_checkpoint(f, cfg, init_weights(cfg.model), writer=WRITER)
    assert f.read_text() == "x"
    assert _visible_siblings(tmp_path) == ["file", "precious"]


def _interrupting_save_file(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_write_leaves_nothing(tmp_path, cfg, monkeypatch):
    monkeypatch.setattr(ck, "save_streaming", _interrupting_save_file)  # the tensor writer
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path / "c", cfg, init_weights(cfg.model), writer=WRITER)
    assert _visible_siblings(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_checkpoint(tmp_path, cfg, monkeypatch):
    path = tmp_path / "c"
    w0 = init_weights(cfg.model, seed=0)
    write_checkpoint(path, cfg, w0, writer=WRITER)
    monkeypatch.setattr(ck, "save_streaming", _interrupting_save_file)  # the tensor writer
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, cfg, init_weights(cfg.model, seed=1), writer=WRITER)
    _, got = read_checkpoint(path)
    assert all(np.array_equal(got[k], w0[k]) for k in w0)
    assert _visible_siblings(tmp_path) == ["c"]


# ---- init ----------------------------------------------------------------------------------------
def test_init_weights_names_shapes_dtype(cfg):
    w = init_weights(cfg.model, seed=0)
    shapes = parameter_shapes(cfg.model)
    assert list(w) == list(shapes)
    for k, v in w.items():
        assert v.shape == shapes[k] and v.dtype == np.float32, k


def test_init_weights_deterministic_per_seed_and_differs_across_seeds(cfg):
    a, b, c = (init_weights(cfg.model, seed=s) for s in (5, 5, 6))
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
        if a[k].ndim == 2:
            assert not np.array_equal(a[k], c[k]), k
    # Every matrix is its own draw: no two share their leading values (a shared stream would).
    mats = {k: v.ravel() for k, v in a.items() if v.ndim == 2}
    heads = {k: tuple(v[:8].tolist()) for k, v in mats.items()}
    assert len(set(heads.values())) == len(heads)


def test_init_norms_are_ones_and_matrices_have_the_configured_std(cfg):
    w = init_weights(cfg.model, seed=0)
    for k, v in w.items():
        if v.ndim == 1:
            assert np.array_equal(v, np.ones_like(v)), k
    big = np.concatenate([v.ravel() for v in w.values() if v.ndim == 2]).astype(np.float64)
    assert big.size > 5000
    assert abs(big.mean()) < 0.1 * cfg.model.initializer_range
    assert big.std() == pytest.approx(cfg.model.initializer_range, rel=0.05)


def test_init_adding_a_layer_keeps_the_others():
    w2 = init_weights(_config(num_hidden_layers=2).model, seed=0)
    w3 = init_weights(_config(num_hidden_layers=3).model, seed=0)
    assert set(w2) < set(w3)
    for k in w2:
        assert np.array_equal(w2[k], w3[k]), k
