"""Reading checkpoints that are damaged in ways a checksum does not catch (issue 13): valid JSON of
the wrong shape, malformed optimizer/trainer state, and weights holding NaN or inf. Each is one
CheckpointError naming the file (and the key or tensor), never a KeyError or AttributeError."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import shared.spec.checkpoint as ck
from shared.spec.checkpoint import CheckpointError, read_checkpoint, verify_manifest, write_checkpoint
from shared.spec.init import init_weights
from tests.variants import tiny_config

WRITER = {"backend": "unit-test"}


@pytest.fixture
def cfg():
    return tiny_config(num_hidden_layers=1)


@pytest.fixture
def ckpt(tmp_path, cfg):
    """A checkpoint with every optional part, as a training run writes it."""
    w = init_weights(cfg.model, seed=0)
    opt = {f"{n}.exp_avg": np.zeros_like(v) for n, v in w.items()}
    state = {"step": 6, "bad_evals": 0, "best_val_loss": 3.5, "train_time_s": 1.5,
             "loader": {"epoch": 0, "position": 12, "seed": 0, "seq_len": 32, "num_windows": 100}}
    return write_checkpoint(tmp_path / "ck", cfg, w, writer=WRITER, optimizer_state=opt,
                            optimizer_meta={"step": 6}, trainer_state=state)


def rehash(path):
    """Re-sign the manifest after changing a file, as a tool (or a person) editing it would: the damage
    is then invisible to the checksums."""
    mf = path / "manifest.json"
    man = json.loads(mf.read_text())
    for name in man["files"]:
        data = (path / name).read_bytes()
        man["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    mf.write_text(json.dumps(man))


def _edit_manifest(path, edit):
    mf = path / "manifest.json"
    mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))


# ---- manifest shape ------------------------------------------------------------------------------
WRONG_SHAPES = {
    "a list": (lambda m: [], "a JSON list, expected an object"),
    "an entry without bytes": (lambda m: {**m, "files": {k: {"sha256": v["sha256"]} for k, v in m["files"].items()}},
                               "needs a 'sha256' string and a 'bytes' count"),
    "files as a list": (lambda m: {**m, "files": list(m["files"])}, "'files' is list"),
    "an entry that is a string": (lambda m: {**m, "files": {k: "x" for k in m["files"]}}, "needs a 'sha256'"),
    "bytes as a string": (lambda m: {**m, "files": {k: {**v, "bytes": str(v["bytes"])} for k, v in m["files"].items()}},
                          "a 'bytes' count"),
    "a version string": (lambda m: {**m, "version": "1"}, "version '1' is not an integer"),
    "a path for a name": (lambda m: {**m, "files": {"../config.json": next(iter(m["files"].values()))}},
                          "not a plain name"),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_a_manifest_of_the_wrong_shape_is_one_clear_error(ckpt, case):
    edit, fragment = WRONG_SHAPES[case]
    _edit_manifest(ckpt, edit)
    with pytest.raises(CheckpointError) as e:
        verify_manifest(ckpt)
    msg = str(e.value)
    assert msg.startswith(str(ckpt / "manifest.json")) and "damaged manifest" in msg and fragment in msg, msg
    assert "\n" not in msg


# ---- optimizer and trainer state -----------------------------------------------------------------
@pytest.mark.parametrize("text,fragment", [
    ("{oops", "damaged (Expecting property name"), ("[]", "a JSON list, expected an object"),
    ('{"step": "six"}', 'step must be a count (an integer >= 0), got "six"'),
    ('{"step": -1}', "step must be a count"), ('{"step": true}', "step must be a count"),
    ('{"train_time_s": "x"}', "train_time_s must be a number >= 0"),
    ('{"best_val_loss": "low"}', "best_val_loss must be a number or null"),
    ('{"loader": {"epoch": 0}}', "loader must be an object with counts epoch and position"),
    ('{"loader": {"epoch": 0, "position": 1, "seed": "x"}}', "loader must be"),
])
def test_malformed_trainer_state_names_the_file_and_key(ckpt, text, fragment):
    (ckpt / "trainer_state.json").write_text(text)
    rehash(ckpt)
    with pytest.raises(CheckpointError) as e:
        ck.read_trainer_state(ckpt)
    assert str(e.value).startswith(str(ckpt / "trainer_state.json")) and fragment in str(e.value), str(e.value)


def test_a_valid_trainer_state_reads_back(ckpt):
    assert ck.read_trainer_state(ckpt)["loader"]["position"] == 12
    (ckpt / "trainer_state.json").write_text('{"step": 3, "best_val_loss": null, "loader": null}')
    assert ck.read_trainer_state(ckpt)["step"] == 3


@pytest.mark.parametrize("text,fragment", [("{oops", "damaged (Expecting"), ("[1]", "a JSON list, expected an object")])
def test_malformed_optimizer_json_names_the_file(ckpt, text, fragment):
    (ckpt / "optimizer.json").write_text(text)
    rehash(ckpt)
    with pytest.raises(CheckpointError) as e:
        ck.read_optimizer(ckpt)
    assert str(e.value).startswith(str(ckpt / "optimizer.json")) and fragment in str(e.value)


def test_missing_optimizer_json_is_an_incomplete_checkpoint(ckpt):
    (ckpt / "optimizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.json: missing"):
        ck.read_optimizer(ckpt)


# ---- non-finite weights --------------------------------------------------------------------------
def _poison(path, file, name, value, index=0):
    tensors = ck.read_safetensors(path / file)
    tensors[name].reshape(-1)[index] = value
    save_file(tensors, str(path / file), metadata={"format": ck.FORMAT})
    rehash(path)


@pytest.mark.parametrize("value,counts", [(np.nan, "1 NaN, 0 inf"), (np.inf, "0 NaN, 1 inf"), (-np.inf, "0 NaN, 1 inf")])
def test_weights_with_nan_or_inf_are_refused_naming_the_tensor(ckpt, value, counts):
    """Issue 13: `generate` and `convert --to packed` succeeded on such a checkpoint and `eval`
    printed a traceback; every command reads weights through read_checkpoint."""
    name = "model.layers.0.mlp.up_proj.weight"
    _poison(ckpt, ck.MODEL_FILE, name, value)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt)
    assert str(e.value) == (f"{ckpt / ck.MODEL_FILE}: non-finite values in 1 tensor(s): {name} ({counts}); "
                            "these weights cannot be used")


def test_non_finite_optimizer_state_is_refused(ckpt):
    """Its moments restart a run as NaN; its EMA weights are what `eval` scores."""
    name = "model.norm.weight.exp_avg"
    _poison(ckpt, ck.OPTIMIZER_FILE, name, np.nan)
    with pytest.raises(CheckpointError, match=rf"{ck.OPTIMIZER_FILE}: non-finite values in 1 tensor\(s\): {name}"):
        ck.read_optimizer(ckpt)


def test_the_message_lists_three_tensors_and_counts_the_rest(ckpt, cfg):
    w = init_weights(cfg.model, seed=0)
    for v in w.values():
        v.reshape(-1)[0] = np.nan
    with pytest.raises(CheckpointError) as e:
        ck.check_finite(w, "here")
    msg = str(e.value)
    assert msg.startswith(f"here: non-finite values in {len(w)} tensor(s): ") and msg.count("NaN") == 3
    assert ", ...;" in msg


def test_a_packed_file_with_non_finite_values_is_refused(ckpt, cfg, tmp_path):
    from convert.formats.packed import load_packed, pack
    w = init_weights(cfg.model, seed=0)
    w["model.norm.weight"][0] = np.inf
    blob, _ = pack(cfg, w, "none")
    f = tmp_path / "m.tpk"
    f.write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"m\.tpk: non-finite values in 1 tensor\(s\): model\.norm\.weight"):
        load_packed(f, form="latent")
