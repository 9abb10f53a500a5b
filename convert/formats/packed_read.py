"""Reading a packed artifact (the layout: convert/formats/packed.py's docstring): the header and
its checks, the tensor table, each entry decoded as the format says, and the forms a model is built
from (load_packed, load_for_model, effective_config). packed.py re-exports every public name here."""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from shared.spec.checkpoint import CheckpointError, check_finite, check_tensor_set
from shared.spec.config import ConfigError, RunConfig
from shared.spec.params import float_matrices, parameter_shapes, parameter_specs, ternary_parameters
from shared.spec.ternary import unpack_base3

from convert.formats.packed_codecs import (COMPRESSIONS, FLOAT_MODES, ROW_QMAX, PackedError, decompress_payload,
                                   float_matrix_storage)
from convert.formats import packed_hadamard as hadamard_rule
from convert.formats import packed_pgrecord as pgrecord

MAGIC = b"TERNPK1\n"  # unchanged across versions: the version lives in the header
FORMAT = "ternary-packed"
VERSION = 2  # what the default layout writes: 2 added zstd, --floats int8, header key "floats"
PG_RECORD_VERSION = 3  # --artifact pg-record files (header key "artifact"); older readers refuse them
QUANT_VERSION = 4  # --floats int6|int5|mixed or --hadamard (header key "hadamard"); older readers refuse them
MAX_VERSION = QUANT_VERSION  # the newest this reader reads
V2_FLOAT_MODES = ("fp16", "int8")  # what versions 2 and 3 may say
ARTIFACTS = ("default", pgrecord.ARTIFACT)
MAX_HEADER = 64 << 20


# ---- packed: reading ----------------------------------------------------------------------------
def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(header, offset of the payload); checks magic, header length, JSON, format and version."""
    path = Path(path)
    if not path.is_file():
        raise PackedError(f"{path}: not a packed file" + (" (it does not exist)" if not path.exists() else ""))
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
            raise PackedError(f"{path}: not a ternary packed file (bad magic or too short)")
        (n,) = struct.unpack("<Q", head[len(MAGIC):])
        if n > MAX_HEADER:
            raise PackedError(f"{path}: header length {n} is implausible (damaged file)")
        hb = f.read(n)
    if len(hb) != n:
        raise PackedError(f"{path}: truncated inside the header ({len(hb)} of {n} bytes)")
    try:
        header = json.loads(hb.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackedError(f"{path}: damaged header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise PackedError(f"{path}: header format is not {FORMAT!r}")
    if not isinstance(header.get("version"), int) or not 1 <= header["version"] <= MAX_VERSION:
        raise PackedError(f"{path}: format version {header.get('version')} is not one this tool reads "
                          f"(1 to {MAX_VERSION}); a newer ternary may read it")
    for key in ("compress", "payload_bytes", "raw_payload_bytes", "payload_sha256", "config", "tensors"):
        if key not in header:
            raise PackedError(f"{path}: header lacks {key!r}")
    known = COMPRESSIONS if header["version"] >= 2 else ("lzma", "none")
    if header["compress"] not in known:
        raise PackedError(f"{path}: unknown compression {header['compress']!r} for format version "
                          f"{header['version']} (this tool reads {', '.join(known)})")
    artifact = header.get("artifact", "default")
    if artifact not in (ARTIFACTS if header["version"] >= 3 else ("default",)):
        raise PackedError(f"{path}: unknown artifact layout {artifact!r} (this tool reads {', '.join(ARTIFACTS)})")
    floats = header.get("floats", "fp16")  # version 1 had fp16 floats only
    v = header["version"]
    modes = (("fp8",) if artifact == pgrecord.ARTIFACT else FLOAT_MODES if v >= QUANT_VERSION
             else V2_FLOAT_MODES if v >= 2 else ("fp16",))
    if floats not in modes:
        raise PackedError(f"{path}: unknown float storage {floats!r} for format version {v} (this tool reads "
                          f"{', '.join(modes)})")
    if "hadamard" in header and (v < QUANT_VERSION or artifact != "default"
                                 or not isinstance(header["hadamard"], dict)):
        raise PackedError(f"{path}: a Hadamard rotation in a file of format version {v} / artifact {artifact} "
                          f"(only version {QUANT_VERSION} default files have one)")
    return header, len(MAGIC) + 8 + n


def describe(path: str | Path) -> str:
    """One line on what a packed file keeps exactly and what it rounded (for `ternary eval FILE`)."""
    h, _ = read_header(path)
    if h.get("artifact") == pgrecord.ARTIFACT:
        return ("pg-record: codes and fp16 scales (used as q * s; the record's shrinkage fix is the latent form), float 2-D "
                f"tensors fp8 e4m3, 1-D fp16; format version {h['version']}, {h['compress']}")
    mode = h.get("floats", "fp16")
    floats = ("float parameters fp16" if mode == "fp16" else
              "float matrices int5 (MLP) / int6 (attention, others) / int8 (untied head), embedding and "
              "small ones fp16 (--floats mixed), other float parameters fp16" if mode == "mixed" else
              f"float matrices per-row {mode}, other float parameters fp16")
    rot = ("; ternary weights ternarized after a Hadamard rotation, loaded as T(W R) R^T in float32"
           if "hadamard" in h else "")
    return f"codes exact, scales fp16, {floats}{rot}; format version {h['version']}, {h['compress']}"


def _slice(raw: bytes, span, what: str, path) -> bytes:
    try:
        off, n = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError):
        raise PackedError(f"{path}: bad offsets for {what}") from None
    if off < 0 or n < 0 or off + n > len(raw):
        raise PackedError(f"{path}: {what} lies outside the payload")
    return raw[off:off + n]


def _array(raw: bytes, span, dtype: str, count: int, what: str, path) -> np.ndarray:
    """`count` little-endian values of `dtype` at `span` of the raw payload."""
    if dtype not in ("int8", "float16", "float32"):
        raise PackedError(f"{path}: {what}: unknown dtype {dtype!r}")
    a = np.frombuffer(_slice(raw, span, what, path), np.dtype(dtype).newbyteorder("<"))
    if a.size != count:
        raise PackedError(f"{path}: {what}: {a.size} values where {count} are needed (wrong shape)")
    return a


def read_packed(path: str | Path, dequantize_floats: bool = True
                ) -> tuple[RunConfig, dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray]]:
    """(config, {name: (codes int8, scales float32) for ternary weights, float32 array otherwise}).

    In a --hadamard file each ternary weight comes back as (codes, scales, packed_hadamard.Rotation):
    the codes and scales are T(W R), and the weight is (q * s) R^T (load_packed does that).
    With dequantize_floats=False a row-coded float matrix (int8/int6/int5) comes back as (codes int8
    shaped like the matrix, row scales float32 [rows]) instead of codes * scales."""
    path = Path(path)
    header, start = read_header(path)
    raw = _raw_payload(path, header, start)
    config, table = _config_and_table(path, header)
    tern = set(ternary_parameters(config))
    floats = header.get("floats", "fp16")
    rule = None  # version 4 files: each float matrix's storage must be the one --floats fixes for it
    if header["version"] >= QUANT_VERSION:
        specs, matrices = parameter_specs(config.model), set(float_matrices(config))
        rule = {n: float_matrix_storage(floats, specs[n]) for n in matrices}
    rotated = "hadamard" in header
    out: dict[str, Any] = {}
    for e in table:
        name = e["name"]
        try:
            out[name] = _read_entry(raw, e, config, tern, floats, dequantize_floats, path, rule, rotated)
        except PackedError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise PackedError(f"{path}: {name}: damaged table entry or data ({err})") from None
    return config, out


def _raw_payload(path: Path, header: dict, start: int) -> bytes:
    """The payload after `start`, its size and checksum verified, decompressed."""
    size = path.stat().st_size
    if size - start != header["payload_bytes"]:
        raise PackedError(f"{path}: payload has {size - start} bytes, the header says {header['payload_bytes']} "
                          "(truncated or appended to)")
    payload = path.read_bytes()[start:]
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise PackedError(f"{path}: payload fails its sha256 checksum (the file is damaged)")
    raw = decompress_payload(payload, header["compress"], header["raw_payload_bytes"], path)
    if len(raw) != header["raw_payload_bytes"]:
        raise PackedError(f"{path}: payload decompresses to {len(raw)} bytes, the header says "
                          f"{header['raw_payload_bytes']}")
    return raw


def _config_and_table(path: Path, header: dict) -> tuple[RunConfig, list[dict]]:
    """The header's config and tensor table, the table checked against the config's tensor set."""
    try:
        config = RunConfig.from_dict(header["config"], where=f"{path} header config")
    except ConfigError as e:
        raise PackedError(str(e)) from None
    table = header["tensors"]
    if not isinstance(table, list) or not all(isinstance(e, dict) and "name" in e for e in table):
        raise PackedError(f"{path}: damaged tensor table")
    try:
        check_tensor_set(parameter_shapes(config.model), {e["name"]: tuple(e["shape"]) for e in table},
                         f"{path} tensor table")
    except CheckpointError as e:
        raise PackedError(str(e)) from None
    return config, table


def _read_entry(raw: bytes, e: dict, config: RunConfig, tern: set[str], floats: str, dequantize_floats: bool,
                path: Path, rule: dict[str, str] | None = None, rotated: bool = False
                ) -> tuple[np.ndarray, ...] | np.ndarray:
    """One tensor of the table: (codes, scales) for a ternary weight, else float32 (or, int8 with
    dequantize_floats=False, (codes, row scales)). pg-record too gives (codes, s): the record's
    "shrinkage fix" is how it rebuilds latent weights (load_packed's form="latent"), not a change of
    the weights its forward pass uses."""
    record = floats == "fp8"
    name, shape = e["name"], tuple(e["shape"])
    if (e["kind"] == "ternary") != (name in tern):
        raise PackedError(f"{path}: {name} is stored as {e['kind']} but the config says "
                          f"{'ternary' if name in tern else 'float'}")
    if e["kind"] == "ternary":
        if e["group_size"] != config.ternary.group_size or e["count"] != math.prod(shape):
            raise PackedError(f"{path}: {name}: group size or code count disagrees with the config")
        codes = unpack_base3(np.frombuffer(_slice(raw, e["codes"], f"{name} codes", path), np.uint8),
                             e["count"]).reshape(shape)
        want = (1, 1) if config.ternary.group_size == 0 else (shape[0], shape[1] // config.ternary.group_size)
        if tuple(e["scale_shape"]) != want:
            raise PackedError(f"{path}: {name}: scales have the wrong shape")
        scales = _array(raw, e["scales"], e["scale_dtype"], math.prod(want), f"{name} scales", path)
        scales = scales.astype(np.float32).reshape(want)
        if record != (e.get("dequantize") == "shrinkage-fix"):
            raise PackedError(f"{path}: {name}: dequantization rule does not match the file's artifact layout")
        if rotated != ("hadamard" in e):
            raise PackedError(f"{path}: {name}: Hadamard rotation {'missing' if rotated else 'present'} in a file "
                              f"{'with' if rotated else 'without'} --hadamard")
        if rotated:
            rot = e["hadamard"]
            signs = _slice(raw, rot["signs"], f"{name} rotation signs", path)
            return codes, scales, hadamard_rule.read_rotation(signs, rot, shape[1], config.ternary.group_size, name, path)
        return codes, scales
    if e["dtype"] == pgrecord.FP8:
        if not record:
            raise PackedError(f"{path}: {name}: fp8 entry in a file without --artifact pg-record")
        return pgrecord.read_fp8(raw, e["data"], math.prod(shape), name, path).reshape(shape)
    stored = e["dtype"] if e["dtype"] in ROW_QMAX else "fp16"
    if rule is not None and name in rule and rule[name] != stored:
        raise PackedError(f"{path}: {name}: stored as {stored}, but --floats {floats} stores it as {rule[name]}")
    if e["dtype"] in ROW_QMAX:
        kind, qmax = e["dtype"], ROW_QMAX[e["dtype"]]
        if (kind != floats and floats != "mixed") or len(shape) < 1 or list(e["scale_shape"]) != [shape[0]]:
            raise PackedError(f"{path}: {name}: {kind} entry in a file without --floats {kind} (it says "
                              f"{floats}), or its scales have the wrong shape")
        q = _array(raw, e["data"], "int8", math.prod(shape), name, path)
        s = _array(raw, e["scales"], e["scale_dtype"], shape[0], f"{name} scales", path).astype(np.float32)
        if q.size and np.abs(q.astype(np.int16)).max() > qmax:  # the writer never goes past Q
            bad = int(q[np.abs(q.astype(np.int16)) > qmax][0])
            raise PackedError(f"{path}: {name}: {kind} code {bad} outside [-{qmax}, {qmax}] (damaged data)")
        if not (np.isfinite(s).all() and (s >= 0).all()):
            raise PackedError(f"{path}: {name}: negative or non-finite row scale (damaged data)")
        q = q.reshape(shape)
        return ((q.reshape(shape[0], -1) * s[:, None]).reshape(shape).astype(np.float32)
                if dequantize_floats else (q, s))
    if e["dtype"] not in ("float16", "float32"):
        raise PackedError(f"{path}: {name}: unknown float dtype {e['dtype']!r}")
    arr = _array(raw, e["data"], e["dtype"], math.prod(shape), name, path)
    return arr.astype(np.float32).reshape(shape)


def effective_config(config: RunConfig) -> RunConfig:
    """The config under which a model built from load_packed's weights runs the same forward pass:
    ternary projection off (the weights are already W_t). Activation quantization lives in the
    ternary layers, so it cannot be kept this way; use load_packed(form="latent") for it."""
    if config.ternary.enabled and config.ternary.activation_bits:
        raise ConfigError("this model quantizes activations; build it from load_packed(path, form='latent') "
                          "with its own config instead")
    return config.with_overrides(["ternary.enabled=false"])


def load_packed(path: str | Path, form: str = "dequantized") -> tuple[RunConfig, dict[str, np.ndarray]]:
    """(config, float32 weights) from a packed file.

    form="dequantized": ternary weights are W_t = q * s (float32 from the stored fp16 scales); build a
    model with effective_config(config). Float parameters are float32 (int8 ones dequantized).
    form="latent": ternary weights W' = q * s / mean|q| = q * s * G / nnz(group) (0 for an all-zero group), whose
    projection is q again and whose scale mean|W'| is s up to float32 rounding; build a model with
    `config` itself (keeps activation quantization).
    A --hadamard file has only the dequantized form: W_eff = (q * s) R^T (float64, rounded once to
    float32; convert/formats/packed_hadamard.py), which is not ternary.
    """
    if form not in ("dequantized", "latent"):
        raise ValueError(f"form must be 'dequantized' or 'latent', got {form!r}")
    if form == "latent" and "hadamard" in read_header(path)[0]:
        raise PackedError(f"{path}: a --hadamard file has no latent form (its weights T(W R) R^T are not ternary); "
                          "load it with form='dequantized' and effective_config(config)")
    config, parts = read_packed(path)
    G = config.ternary.group_size
    weights = {}
    for name, v in parts.items():
        if not isinstance(v, tuple):
            weights[name] = v
            continue
        codes, scales = v[:2]
        out_, inp = codes.shape
        g = codes.reshape(1, 1, -1) if G == 0 else codes.reshape(out_, inp // G, G)
        s = scales.astype(np.float32)
        if form == "latent":  # s / mean|q| = s * G / nnz per group: the record's shrinkage fix
            s = pgrecord.effective_scales(codes, s, G)
        w = (g.astype(np.float32) * s[..., None]).reshape(codes.shape)  # exact: q in {-1, 0, 1}
        weights[name] = (v[2].unrotate(w) if len(v) == 3 else w).astype(np.float32)
    check_finite(weights, str(path))  # refused as a checkpoint's would be (fp16 overflows to inf)
    return config, weights


def load_for_model(path: str | Path) -> tuple[RunConfig, dict[str, np.ndarray]]:
    """(config to build the model with, its float32 weights): the latent form under the file's own
    config (keeps activation quantization), or for a --hadamard file the dequantized W_eff under
    effective_config (its config with ternary projection off). What `ternary eval FILE` runs."""
    if "hadamard" in read_header(path)[0]:
        config, weights = load_packed(path, form="dequantized")
        return effective_config(config), weights
    return load_packed(path, form="latent")
