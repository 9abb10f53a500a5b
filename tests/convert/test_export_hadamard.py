"""`ternary convert --to packed --hadamard` (convert/formats/packed_hadamard.py): the rotation is
orthogonal, the file stores T(W R) and its signs, the loader rebuilds W_eff = T(W R) R^T, the
artifact's forward pass is the ternary matrix applied to rotated activations, and the reader and
the command line refuse what the format cannot hold.

Bound of the forward check: W_eff is computed in float64 and rounded once to float32 (2^-24
relative per weight); a float32 forward pass over it against the same weights in float64 differs by
float32 arithmetic only, asserted as 1e-4 of max|logits| (measured about 1e-6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convert.formats import packed as export
from convert.formats.packed_hadamard import Rotation, block_size, hadamard_block, new_rotation
from shared.spec.checkpoint import read_checkpoint
from shared.spec.config import ConfigError
from shared.spec.params import ternary_parameters
from shared.spec.ternary import dequantize, quantize
from tests.convert.test_export import IDS, _ckpt, _logits, _rewrite
from tests.e2e.test_train_cli import assert_user_error, run
from ternary_cuda.model import Model


def _dense(rot: Rotation) -> np.ndarray:
    """R = diag(signs) kron(I, H_b / sqrt(b)) as a dense matrix, built independently of rotate()."""
    h = np.array([[1.0]])
    while h.shape[0] < rot.block:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    n = rot.signs.size
    return np.diag(rot.signs) @ np.kron(np.eye(n // rot.block), h / np.sqrt(rot.block))


@pytest.mark.parametrize("n,G", [(64, 32), (128, 0), (96, 0), (96, 32)])
def test_rotation_is_orthogonal_and_exact(n, G):
    rot = new_rotation(n, G, seed=3, index=1)
    assert rot.block == {(64, 32): 32, (128, 0): 128, (96, 0): 32, (96, 32): 32}[(n, G)]
    R = _dense(rot)
    np.testing.assert_allclose(R @ R.T, np.eye(n), atol=1e-12)
    b = hadamard_block(rot.block)
    np.testing.assert_allclose(b @ b.T, np.eye(rot.block), atol=1e-12)
    w = np.random.default_rng(0).standard_normal((5, n))
    np.testing.assert_allclose(rot.rotate(w), w @ R, atol=1e-12)
    np.testing.assert_allclose(rot.unrotate(rot.rotate(w)), w, atol=1e-12)  # W R R^T = W
    assert not np.allclose(rot.rotate(w), w)
    assert not np.array_equal(rot.signs, new_rotation(n, G, seed=4, index=1).signs)  # seeded
    assert np.array_equal(rot.signs, new_rotation(n, G, seed=3, index=1).signs)


def test_odd_input_dimension_is_refused():
    assert block_size(48, 0) == 16 and block_size(96, 24) == 8
    with pytest.raises(ConfigError, match="no power-of-two block"):
        new_rotation(33, 0, 0, 0)


def test_file_holds_T_of_W_R_and_loads_W_eff(tmp_path):
    cfg, _ = _ckpt(tmp_path / "ck")
    out = tmp_path / "h.tpk"
    st = export.to_packed(tmp_path / "ck", out, compress="zstd-22", hadamard=7)
    h, _ = export.read_header(out)
    assert h["version"] == export.QUANT_VERSION and h["hadamard"]["seed"] == 7 and st.hadamard_seed == 7
    _, latent = read_checkpoint(tmp_path / "ck")
    _, parts = export.read_packed(out)
    _, weights = export.load_packed(out)
    G, tern = cfg.ternary.group_size, ternary_parameters(cfg)
    assert st.rotation_bytes == sum(latent[n].shape[1] // 8 for n in tern)
    for i, name in enumerate(tern):
        codes, scales, rot = parts[name]
        assert np.array_equal(rot.signs, new_rotation(latent[name].shape[1], G, 7, i).signs)
        R = _dense(rot)
        q, s = quantize((latent[name].astype(np.float64) @ R).astype(np.float32), G, cfg.ternary.eps)
        assert np.array_equal(codes, q) and np.allclose(scales, s, rtol=2.0 ** -11)
        want = dequantize(codes, scales, G).astype(np.float64) @ R.T  # T(W R) R^T
        np.testing.assert_allclose(weights[name], want, rtol=0, atol=np.abs(want).max() * 2.0 ** -23)
        x = np.random.default_rng(i).standard_normal(latent[name].shape[1])
        ternary_on_rotated = dequantize(codes, scales, G).astype(np.float64) @ (R.T @ x)  # T(W R) (R^T x)
        np.testing.assert_allclose(weights[name] @ x, ternary_on_rotated, atol=1e-5 * np.abs(ternary_on_rotated).max())
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"],
                                  latent["model.embed_tokens.weight"].astype(np.float16).astype(np.float32))
    blob1 = out.read_bytes()
    export.to_packed(tmp_path / "ck", out, compress="zstd-22", hadamard=7, force=True)
    assert out.read_bytes() == blob1  # deterministic


def test_artifact_forward_is_the_float_forward_of_W_eff(tmp_path):
    """The packed model (float32 torch, ternary off) against the same W_eff in float64 NumPy."""
    from shared.spec.reference_model import reference_logits
    cfg, _ = _ckpt(tmp_path / "ck")
    export.to_packed(tmp_path / "ck", tmp_path / "h.tpk", hadamard=0)
    c, weights = export.load_for_model(tmp_path / "h.tpk")
    assert not c.ternary.enabled
    got = _logits(Model(c, weights), IDS)
    ref = reference_logits(c, {k: v.astype(np.float64) for k, v in weights.items()}, IDS)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    export.to_packed(tmp_path / "ck", tmp_path / "p.tpk")  # without the rotation: other weights
    c2, plain = export.load_packed(tmp_path / "p.tpk")
    assert np.abs(_logits(Model(export.effective_config(c2), plain), IDS) - got).max() > 1e-3


def test_rotation_lowers_the_error_of_weights_with_outlier_columns():
    """The mechanism the SKC-600 report measured (29% lower MSE at export): a few large input columns
    inflate a group's absmean and zero the rest; the rotation spreads them over the block."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)) * 0.02
    w[:, [3, 70]] *= 25
    rot = new_rotation(128, 0, 0, 0)
    plain = dequantize(*quantize(w.astype(np.float32), 0), 0)
    rotated = rot.unrotate(dequantize(*quantize(rot.rotate(w).astype(np.float32), 0), 0))
    mse = lambda a: float(((a - w) ** 2).mean())  # noqa: E731
    assert mse(rotated) < 0.8 * mse(plain), (mse(rotated), mse(plain))


def test_reader_and_loader_refuse_what_the_format_cannot_hold(tmp_path):
    _ckpt(tmp_path / "ck")
    src, bad = tmp_path / "h.tpk", tmp_path / "bad.tpk"
    export.to_packed(tmp_path / "ck", src, compress="none", hadamard=1)
    with pytest.raises(export.PackedError, match="has no latent form"):
        export.load_packed(src, form="latent")
    first = lambda hh: next(e for e in hh["tensors"] if e["kind"] == "ternary")  # noqa: E731
    cases = [
        (lambda hh: hh.update(version=2), "Hadamard rotation in a file of format version 2"),
        (lambda hh: first(hh)["hadamard"].update(block=16), "Hadamard block 16 is not the one"),
        (lambda hh: first(hh)["hadamard"]["signs"].__setitem__(1, 3), "bytes of rotation signs"),
        (lambda hh: first(hh).pop("hadamard"), "rotation missing in a file with --hadamard"),
        (lambda hh: hh.pop("hadamard"), "rotation present in a file without --hadamard"),
    ]
    for edit, match in cases:
        _rewrite(src, bad, edit)
        with pytest.raises(export.PackedError, match=match):
            export.read_packed(bad)


def test_cli_refusals(tmp_path):
    ck, x = str(tmp_path / "ck"), str(tmp_path / "x.tpk")
    _ckpt(tmp_path / "ck")
    for args, msg in [
        (("--to", "gguf", "--hadamard"), "apply to --to packed only"),
        (("--to", "packed", "--hadamard-seed", "3"), "--hadamard-seed applies to --hadamard only"),
        (("--to", "packed", "--artifact", "pg-record", "--hadamard"), "--artifact pg-record fixes the storage"),
        (("--to", "packed", "--hadamard", "--hadamard-seed", "-1"), "--hadamard-seed -1"),
    ]:
        assert_user_error(run("convert", ck, *args, "--out", x), msg)
    for extra, msg in [(["ternary.enabled=false"], "this model has none"),
                       (["ternary.activation_bits=8"], "this model quantizes activations")]:
        d = tmp_path / ("ck-" + extra[0].split("=")[0])
        _ckpt(d, extra)
        assert_user_error(run("convert", str(d), "--to", "packed", "--hadamard", "--out", x), msg)
    assert not (tmp_path / "x.tpk").exists()


def test_cli_round_trip_matches_eval(tmp_path):
    """The printed round trip is `ternary eval FILE`'s score of the loaded artifact (W_eff, ternary off)."""
    from tests.e2e.test_train_cli import train
    out = tmp_path / "run"
    train(out, "torch")
    f = tmp_path / "h.tpk"
    r = run("convert", str(out), "--to", "packed", "--floats", "mixed", "--compress", "zstd-22", "--hadamard",
            "--eval-tokens", "1024", "--out", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"wrote packed file {f}: {f.stat().st_size:,d} bytes" in r.stdout
    assert "Hadamard rotation (seed 0)" in r.stdout and "payload" in r.stdout and "zstd-22" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "round trip" in x)
    trip = float(line.split("round trip ")[1].split()[0])
    e = run("eval", str(f), "--backend", "torch", "--max-tokens", "1024", "--json")
    assert e.returncode == 0, e.stderr
    assert abs(json.loads(e.stdout)["val_bpb"] - trip) < 5e-5
