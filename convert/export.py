"""Exports of a checkpoint: `ternary convert SRC --to canonical|packed` (convert/cmd_convert.py).

canonical: the checkpoint re-written by `shared.checkpoint.write_checkpoint` (atomic) with the
latent weights only (no optimizer or trainer state), float32, and read back (verified) afterwards.

packed: one compact file holding what the ternary forward pass needs, nothing else:

    MAGIC (8 bytes) | header length (uint64 little endian) | header (UTF-8 JSON) | payload

The header is never compressed (so it can be read without touching the payload). It holds the run
config, the compression ("lzma" or "none"), the stored and raw payload sizes, the sha256 of the
stored payload, and the tensor table: for each parameter in canonical order its name, kind
("ternary" or "float"), shape, and for ternary weights the group size, the code count and the
scale shape/dtype, each with (offset, bytes) into the raw (decompressed) payload. The raw payload is
three sections, in this order so that the compressor sees like data together:
  1. codes   of every ternary weight: shared.ternary.pack_base3 (5 codes per byte)
  2. scales  of every ternary weight: float16 (float32 for a tensor whose scales fall outside the
             fp16 normal range, where fp16 would lose more than 2^-11 relative precision)
  3. floats  every other parameter: float16 (float32 for a tensor that would overflow fp16)
All numbers are little endian.

`load_packed(path)` -> (config, weights): the weights the ternary forward pass uses, W_t = q * s in
float32 (scales widened from fp16), floats widened to float32. Building a model from them needs
`effective_config(config)` (ternary projection off: the weights are already projected). With
`form="latent"` it instead returns latent weights whose projection under the original config is
q * s again (to float32 rounding of the group mean), which also keeps activation quantization.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.checkpoint import CheckpointError, check_tensor_set, read_checkpoint, write_checkpoint
from shared.config import ConfigError, RunConfig
from shared.naming import parameter_shapes, ternary_parameters
from shared.ternary import pack_base3, quantize, unpack_base3

MAGIC = b"TERNPK1\n"
FORMAT = "ternary-packed"
VERSION = 1
COMPRESSIONS = ("lzma", "none")
FP16_MAX = float(np.finfo(np.float16).max)
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2^-14
MAX_HEADER = 64 << 20


class PackedError(CheckpointError):
    """A packed file that is missing, damaged, truncated or inconsistent (a user error on the CLI)."""


# ---- canonical ----------------------------------------------------------------------------------
def to_canonical(src: str | Path, out: str | Path, *, dtype: str = "float32", force: bool = False) -> dict[str, Any]:
    """Verified read of `src`, latent weights only, rewritten atomically at `out` and re-verified."""
    if dtype != "float32":
        raise ConfigError(f"--dtype {dtype}: only float32 is supported (NumPy has no bfloat16)")
    src, out = Path(src), Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
    if out.exists() and out.resolve() == src.resolve():
        raise CheckpointError(f"{out} is the source checkpoint; write the copy somewhere else")
    config, weights = read_checkpoint(src)
    weights = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
    write_checkpoint(out, config, weights, writer={"backend": "convert-canonical", "source": str(src)})
    config2, weights2 = read_checkpoint(out)
    for k, v in weights.items():
        if not np.array_equal(v, weights2[k]):
            raise CheckpointError(f"{out}: {k} did not read back equal to what was written")
    files = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
    return {"out": str(out), "files": files, "bytes": sum(files.values()),
            "dropped": sorted(f.name for f in src.iterdir()
                              if f.name in ("optimizer.safetensors", "optimizer.json", "trainer_state.json"))}


# ---- packed: writing ----------------------------------------------------------------------------
def _float_dtype(x: np.ndarray) -> str:
    return "float16" if (x.size == 0 or float(np.abs(x).max()) <= FP16_MAX) else "float32"


def _scale_dtype(s: np.ndarray) -> str:
    a = np.abs(s)
    return "float16" if (a.min() >= FP16_MIN_NORMAL and a.max() <= FP16_MAX) else "float32"


@dataclass
class PackedStats:
    bytes: int  # whole file
    raw_payload: int
    codes_bytes: int  # base-3 section, uncompressed
    scales_bytes: int
    floats_bytes: int
    header_bytes: int
    ternary_weights: int
    float_weights: int
    codes_only_compressed: int | None  # the codes section LZMA-compressed on its own (None: not measured)

    @property
    def bits_per_ternary_weight(self) -> float:
        return 8 * self.bytes / self.ternary_weights if self.ternary_weights else float("nan")

    @property
    def code_bits_per_weight(self) -> float:
        return 8 * self.codes_bytes / self.ternary_weights if self.ternary_weights else float("nan")

    @property
    def code_bits_per_weight_compressed(self) -> float | None:
        if self.codes_only_compressed is None or not self.ternary_weights:
            return None
        return 8 * self.codes_only_compressed / self.ternary_weights


def pack(config: RunConfig, weights: dict[str, np.ndarray], compress: str = "lzma",
         measure_codes: bool = True) -> tuple[bytes, PackedStats]:
    """The packed file's bytes and its size breakdown."""
    if compress not in COMPRESSIONS:
        raise ConfigError(f"--compress {compress!r}: expected one of {', '.join(COMPRESSIONS)}")
    shapes = parameter_shapes(config.model)
    check_tensor_set(shapes, {k: tuple(v.shape) for k, v in weights.items()}, "weights to pack")
    tern = set(ternary_parameters(config))
    G, eps = config.ternary.group_size, config.ternary.eps
    codes_parts, scale_parts, float_parts = [], [], []
    table: list[dict[str, Any]] = []
    for name, shape in shapes.items():
        w = np.asarray(weights[name], np.float32)
        if name in tern:
            q, s = quantize(w, G, eps)
            sd = _scale_dtype(s)
            table.append({"name": name, "kind": "ternary", "shape": list(shape), "group_size": G,
                          "count": int(q.size), "scale_shape": list(s.shape), "scale_dtype": sd})
            codes_parts.append((table[-1], "codes", pack_base3(q).tobytes()))
            scale_parts.append((table[-1], "scales", s.astype(sd).astype("<" + np.dtype(sd).str[1:]).tobytes()))
        else:
            fd = _float_dtype(w)
            table.append({"name": name, "kind": "float", "shape": list(shape), "dtype": fd})
            float_parts.append((table[-1], "data", w.astype(fd).astype("<" + np.dtype(fd).str[1:]).tobytes()))
    raw, off = [], 0
    sections = {}
    for sec_name, parts in (("codes", codes_parts), ("scales", scale_parts), ("floats", float_parts)):
        start = off
        for entry, key, b in parts:
            entry[key] = [off, len(b)]
            raw.append(b)
            off += len(b)
        sections[sec_name] = off - start
    raw_payload = b"".join(raw)
    payload = lzma.compress(raw_payload, preset=9 | lzma.PRESET_EXTREME) if compress == "lzma" else raw_payload
    header = {"format": FORMAT, "version": VERSION, "compress": compress,
              "payload_bytes": len(payload), "raw_payload_bytes": len(raw_payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "config": config.to_dict(), "tensors": table}
    hb = json.dumps(header, separators=(",", ":")).encode()
    blob = MAGIC + struct.pack("<Q", len(hb)) + hb + payload
    codes_c = None
    if measure_codes and compress == "lzma" and sections["codes"]:
        codes_c = len(lzma.compress(raw_payload[:sections["codes"]], preset=9 | lzma.PRESET_EXTREME))
    n_tern = sum(e["count"] for e in table if e["kind"] == "ternary")
    n_float = sum(math.prod(e["shape"]) for e in table if e["kind"] == "float")
    return blob, PackedStats(len(blob), len(raw_payload), sections["codes"], sections["scales"],
                             sections["floats"], len(hb) + len(MAGIC) + 8, n_tern, n_float, codes_c)


def to_packed(src: str | Path, out: str | Path, *, compress: str = "lzma", force: bool = False) -> PackedStats:
    """Verified read of the checkpoint `src`, packed into the single file `out` (written atomically)."""
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
    if out.is_dir():
        raise CheckpointError(f"{out} is a directory; --to packed writes one file")
    config, weights = read_checkpoint(src)
    blob, stats = pack(config, weights, compress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    read_packed(out)  # verify the file reads back
    return stats


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
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise PackedError(f"{path}: format version {header.get('version')} is newer than this tool reads "
                          f"({VERSION}); upgrade ternary")
    for key in ("compress", "payload_bytes", "raw_payload_bytes", "payload_sha256", "config", "tensors"):
        if key not in header:
            raise PackedError(f"{path}: header lacks {key!r}")
    return header, len(MAGIC) + 8 + n


def _slice(raw: bytes, span, what: str, path) -> bytes:
    try:
        off, n = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError):
        raise PackedError(f"{path}: bad offsets for {what}") from None
    if off < 0 or n < 0 or off + n > len(raw):
        raise PackedError(f"{path}: {what} lies outside the payload")
    return raw[off:off + n]


def read_packed(path: str | Path) -> tuple[RunConfig, dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray]]:
    """(config, {name: (codes int8, scales float32) for ternary weights, float32 array otherwise})."""
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    if size - start != header["payload_bytes"]:
        raise PackedError(f"{path}: payload has {size - start} bytes, the header says {header['payload_bytes']} "
                          "(truncated or appended to)")
    payload = path.read_bytes()[start:]
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise PackedError(f"{path}: payload fails its sha256 checksum (the file is damaged)")
    if header["compress"] == "lzma":
        try:
            raw = lzma.decompress(payload)
        except lzma.LZMAError as e:
            raise PackedError(f"{path}: cannot decompress the payload ({e})") from None
    elif header["compress"] == "none":
        raw = payload
    else:
        raise PackedError(f"{path}: unknown compression {header['compress']!r}")
    if len(raw) != header["raw_payload_bytes"]:
        raise PackedError(f"{path}: payload decompresses to {len(raw)} bytes, the header says "
                          f"{header['raw_payload_bytes']}")
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
    tern = set(ternary_parameters(config))
    out: dict[str, Any] = {}
    for e in table:
        name, shape = e["name"], tuple(e["shape"])
        try:
            if (e["kind"] == "ternary") != (name in tern):
                raise PackedError(f"{path}: {name} is stored as {e['kind']} but the config says "
                                  f"{'ternary' if name in tern else 'float'}")
            if e["kind"] == "ternary":
                if e["group_size"] != config.ternary.group_size or e["count"] != math.prod(shape):
                    raise PackedError(f"{path}: {name}: group size or code count disagrees with the config")
                codes = unpack_base3(np.frombuffer(_slice(raw, e["codes"], f"{name} codes", path), np.uint8),
                                     e["count"]).reshape(shape)
                sd = np.dtype(e["scale_dtype"]).newbyteorder("<")
                sb = _slice(raw, e["scales"], f"{name} scales", path)
                scales = np.frombuffer(sb, sd).astype(np.float32)
                want = (1, 1) if config.ternary.group_size == 0 else (shape[0], shape[1] // config.ternary.group_size)
                if tuple(e["scale_shape"]) != want or scales.size != math.prod(want):
                    raise PackedError(f"{path}: {name}: scales have the wrong shape")
                out[name] = (codes, scales.reshape(want))
            else:
                fd = np.dtype(e["dtype"]).newbyteorder("<")
                arr = np.frombuffer(_slice(raw, e["data"], name, path), fd).astype(np.float32)
                if arr.size != math.prod(shape):
                    raise PackedError(f"{path}: {name}: {arr.size} values for shape {shape}")
                out[name] = arr.reshape(shape)
        except PackedError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise PackedError(f"{path}: {name}: damaged table entry or data ({err})") from None
    return config, out


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
    model with effective_config(config).
    form="latent": ternary weights W' = q * s * G / nnz(group) (0 for an all-zero group), whose
    projection is q again and whose scale mean|W'| is s up to float32 rounding; build a model with
    `config` itself (keeps activation quantization).
    """
    if form not in ("dequantized", "latent"):
        raise ValueError(f"form must be 'dequantized' or 'latent', got {form!r}")
    config, parts = read_packed(path)
    G = config.ternary.group_size
    weights = {}
    for name, v in parts.items():
        if not isinstance(v, tuple):
            weights[name] = v
            continue
        codes, scales = v
        out_, inp = codes.shape
        g = codes.reshape(1, 1, -1) if G == 0 else codes.reshape(out_, inp // G, G)
        s = scales.astype(np.float32)
        if form == "latent":
            nnz = np.count_nonzero(g, axis=-1).astype(np.float32)
            s = np.where(nnz > 0, s * (np.float32(g.shape[-1]) / np.maximum(nnz, 1)), np.float32(0))
        weights[name] = (g.astype(np.float32) * s[..., None]).reshape(codes.shape).astype(np.float32)
    return config, weights
