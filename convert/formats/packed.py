"""Exports of a checkpoint: `ternary convert SRC --to canonical|packed` (convert/commands/convert.py).

canonical: the checkpoint re-written by `shared.spec.checkpoint.write_checkpoint` (atomic) with the
latent weights only (no optimizer or trainer state), float32, and read back (verified) afterwards.

packed: one compact file holding what the ternary forward pass needs, nothing else:

    MAGIC (8 bytes) | header length (uint64 little endian) | header (UTF-8 JSON) | payload

The header is never compressed (so it can be read without touching the payload). It holds the run
config, the compression codec ("lzma", "zstd" or "none"), the float storage ("fp16", "int8", "int6",
"int5" or "mixed"), the stored and raw payload sizes, the sha256 of the stored payload, with
--hadamard a "hadamard" record (the seed), and the tensor table: for each parameter in canonical
order its name, kind ("ternary" or "float"), shape, and for ternary weights the group size, the code
count and the scale shape/dtype, each with (offset, bytes) into the raw (decompressed) payload. The
raw payload is six sections, in this order so that the compressor sees like data together (sections
3 and 4 are empty with --floats fp16, section 6 without --hadamard):
  1. codes        of every ternary weight: shared.spec.ternary.pack_base3 (5 codes per byte)
  2. scales       of every ternary weight: float16 (float32 for a tensor whose scales fall outside
                  the fp16 normal range, where fp16 would lose more than 2^-11 relative precision)
  3. float codes  row codes (one int8 per value; entry dtype "int8", "int6" or "int5" says the range)
                  of the float MATRICES (by their spec: the embedding, a float lm_head, block matrices
                  ternary does not target) that --floats quantizes: int8/int6/int5 all of them, mixed
                  by the record's rule (packed_codecs.float_matrix_storage); one row = one slice
                  along the first axis (a token's vector)
  4. float scales one scale per such row, float16 (float32 for a tensor whose rows reach Q * 65504)
  5. floats       every other float parameter: float16 (float32 for a tensor that would overflow
                  fp16): the 1-D ones (norm gains) and controls always, kept fp16 because they are
                  few and an error in a gain scales a whole channel; under mixed the embedding and
                  small matrices too.
  6. rotations    --hadamard only: the signs of each ternary weight's rotation, one bit per input
                  column (convert/formats/packed_hadamard.py); its table entry has "hadamard":
                  {"block": b, "signs": [offset, bytes]}.
All numbers are little endian.

The row rules, the mixed rule and the compressors: convert/formats/packed_codecs.py. The rotation:
convert/formats/packed_hadamard.py. The reader and the load forms: convert/formats/packed_read.py
(every public name re-exported here).

--artifact pg-record (convert/formats/packed_pgrecord.py) fills the same layout with what parameter-golf's
ternary record stores: codes quantized from fp16 scales, float 2-D tensors in float8 e4m3, 1-D ones in
float16, sections codes | scales | fp8 | fp16; header "artifact": "pg-record", "floats": "fp8", and its
ternary entries say "dequantize": "shrinkage-fix": the record rebuilds latent weights q * s / mean|q|,
which its forward pass re-quantizes to exactly q and s; that is load_packed's form="latent" here, and
the forward weights (the default form) are q * s as for every packed file.

Versions: 4 is written only for --floats int6|int5|mixed or --hadamard (header key "hadamard"), so
that an older reader refuses such a file instead of misreading it, and a version 4 reader also checks
that every float matrix is stored as --floats fixes for it; 3 is written for --artifact pg-record
only (header key "artifact"); 2 (the default layout) added "zstd", --floats int8 and the header key
"floats"; version 1 files (lzma/none, fp16 floats) are a subset and still read. Files that need none
of version 4's additions are written as before (2), byte for byte.

`load_packed(path)` -> (config, weights): the weights the ternary forward pass uses, W_t = q * s in
float32 (scales widened from fp16), floats widened to float32 (int8 ones dequantized). Building a
model from them needs `effective_config(config)` (ternary projection off: the weights are already
projected). With `form="latent"` it instead returns latent weights whose projection under the
original config is q * s again (to float32 rounding of the group mean), which also keeps
activation quantization. A --hadamard file has the dequantized form only: W_eff = (q * s) R^T.
`load_for_model(path)` picks what `ternary eval FILE` builds: the latent form, or W_eff under
effective_config.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.formats.replace import check_checkpoint_out, check_file_out
from shared.spec.checkpoint import CheckpointError, check_tensor_set, read_checkpoint, write_checkpoint
from shared.spec.config import ConfigError, RunConfig
from shared.spec.options import inexpressible
from shared.spec.params import float_matrices, parameter_shapes, parameter_specs, ternary_parameters
from shared.spec.ternary import pack_base3, quantize

from convert.formats.packed_codecs import (FLOAT_MODES, FP16_MAX, FP16_MIN_NORMAL, LARGE_PAYLOAD,  # noqa: F401
                                   WRITE_COMPRESSIONS, PackedError, codec_for, compress_payload,
                                   describe_compression, float_matrix_storage, quantize_rows,
                                   quantize_rows_int8, zstd_module)
from convert.formats.lazy_weights import open_weights, tensor_shapes
from convert.formats import packed_codecs
from convert.formats import packed_hadamard as hadamard_rule
from convert.formats import packed_pgrecord as pgrecord
# the reader, re-exported: callers import the format from this one module
from convert.formats.packed_read import (ARTIFACTS, FORMAT, MAGIC, MAX_HEADER, MAX_VERSION, PG_RECORD_VERSION,  # noqa: F401
                                         QUANT_VERSION, V2_FLOAT_MODES, VERSION, _config_and_table, _raw_payload,
                                         _read_entry, describe,
                                         effective_config, load_for_model, load_packed, read_header, read_packed)


# ---- canonical ----------------------------------------------------------------------------------
def check_format(config: RunConfig, fmt: str) -> None:
    """Refuse a model option the format has not declared it can express (shared/spec/options.py)."""
    bad = inexpressible(config.model, fmt)
    if bad:
        raise ConfigError(f"--to {fmt}: this model uses options the format cannot store: " + "; ".join(bad))


def to_canonical(src: str | Path, out: str | Path, *, dtype: str = "float32", force: bool = False) -> dict[str, Any]:
    """Verified read of `src`, latent weights only, rewritten atomically at `out` and re-verified."""
    if dtype != "float32":
        raise ConfigError(f"--dtype {dtype}: only float32 is supported (NumPy has no bfloat16)")
    src, out = Path(src), Path(out)
    check_checkpoint_out(out, src, force)  # only a checkpoint, never the source (convert/formats/replace.py)
    config, weights = read_checkpoint(src)
    check_format(config, "canonical")
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
def _le(x: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(x, np.dtype(dtype).newbyteorder("<")).tobytes()


def _float_dtype(x: np.ndarray) -> str:
    # max and -min rather than max(abs): no temporary copy of a 0.6 GB embedding
    return "float16" if (x.size == 0 or max(float(x.max()), -float(x.min())) <= FP16_MAX) else "float32"


def _scale_dtype(s: np.ndarray) -> str:
    a = np.abs(s)
    return "float16" if (a.min() >= FP16_MIN_NORMAL and a.max() <= FP16_MAX) else "float32"


@dataclass
class PackedStats:
    bytes: int  # whole file
    raw_payload: int
    codes_bytes: int  # base-3 section, uncompressed
    scales_bytes: int  # ternary scales
    floats_bytes: int  # every float parameter: float codes + float scales + plain floats, uncompressed
    header_bytes: int
    ternary_weights: int
    float_weights: int
    codes_only_compressed: int | None  # the codes section compressed on its own (None: not measured)
    compress: str = "lzma"
    floats: str = "fp16"
    payload_bytes: int = 0  # the payload as stored (compressed)
    float_codes_bytes: int = 0  # int8 codes of float matrices (--floats int8)
    float_scales_bytes: int = 0  # their row scales
    plain_floats_bytes: int = 0  # fp16/fp32 float parameters
    artifact: str = "default"  # or "pg-record": float_codes_bytes are then the fp8 section
    rotation_bytes: int = 0  # --hadamard: the rotation signs, one bit per input column of each ternary weight
    hadamard_seed: int | None = None
    float_kinds: dict[str, int] | None = None  # float matrices by storage ("fp16", "int8", "int6", "int5")
    compression: str = ""  # what the compressor did, e.g. "zstd level 9, multi-threaded" (describe_compression)
    raw_sha256: str = ""  # of the raw payload, for the read-back check

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


def _check_options(compress: str, floats: str, artifact: str = "default", hadamard: int | None = None) -> None:
    if artifact not in ARTIFACTS:
        raise ConfigError(f"--artifact {artifact!r}: expected one of {', '.join(ARTIFACTS)}")
    if artifact == pgrecord.ARTIFACT and (compress not in ("lzma", "auto") or floats != "fp16" or hadamard is not None):
        raise ConfigError("--artifact pg-record fixes the storage (LZMA; fp8 and fp16 floats; no rotation); "
                          "leave out --compress, --floats and --hadamard")
    if compress not in WRITE_COMPRESSIONS:
        raise ConfigError(f"--compress {compress!r}: expected one of {', '.join(WRITE_COMPRESSIONS)}")
    if floats not in FLOAT_MODES:
        raise ConfigError(f"--floats {floats!r}: expected one of {', '.join(FLOAT_MODES)}")
    if hadamard is not None and (not isinstance(hadamard, int) or hadamard < 0):
        raise ConfigError(f"--hadamard-seed {hadamard!r}: expected a non-negative integer")
    if compress.startswith("zstd"):  # ("auto" needs it only for a large payload, known after packing)
        zstd_module()  # a missing package is an error now, not after reading the checkpoint


def check_hadamard_model(config: RunConfig) -> None:
    """Refuse --hadamard for a model it cannot serve (packed_hadamard.py's docstring)."""
    if not ternary_parameters(config):
        raise ConfigError("--hadamard rotates ternary weights, and this model has none (ternary disabled)")
    if config.ternary.activation_bits:
        raise ConfigError(f"--hadamard: this model quantizes activations (ternary.activation_bits = "
                          f"{config.ternary.activation_bits}); the rotated weights load as float matrices, which "
                          "cannot keep that")


def pack(config: RunConfig, weights, compress: str = "auto",
         measure_codes: bool = True, floats: str = "fp16", artifact: str = "default",
         hadamard: int | None = None, progress=None) -> tuple[bytes, PackedStats]:
    """The packed file's bytes and its size breakdown. `hadamard`: None, or the seed of the rotation
    applied before ternarizing (convert/formats/packed_hadamard.py). `weights`: arrays, or a
    lazy_weights.LazyWeights (each tensor read once, when it is packed). `progress`: None, or a
    function that gets a line before each long step."""
    _check_options(compress, floats, artifact, hadamard)
    compress = "lzma" if artifact == pgrecord.ARTIFACT else compress  # the record's storage, whatever the size
    check_tensor_set(parameter_shapes(config.model), tensor_shapes(weights), "weights to pack")
    head, payload, stats = _pack_pieces(config, weights, compress, floats, artifact, hadamard, progress,
                                        measure_codes)
    return head + payload, stats


def _pack_tensors(config: RunConfig, weights, tern: set[str], floats: str, hadamard: int | None
                  ) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """The sections and tensor table of the default layout (module docstring)."""
    parts: dict[str, list] = {k: [] for k in SECTIONS}
    table: list[dict[str, Any]] = []
    matrices = set(float_matrices(config))
    for name, spec in parameter_specs(config.model).items():
        entry, items = pack_tensor(config, name, spec, weights[name], tern, matrices, floats, hadamard,
                                   len(parts["codes"]))
        table.append(entry)
        for sec, target, key, b in items:
            parts[sec].append((target, key, b))
    return parts, table


SECTIONS = ("codes", "scales", "float_codes", "float_scales", "floats", "rotations")  # the payload's order


def pack_tensor(config: RunConfig, name: str, spec, w: np.ndarray, tern: set[str], matrices: set[str],
                floats: str, hadamard: int | None, index: int, quantized=None) -> tuple[dict[str, Any], list[tuple[str, dict, str, bytes]]]:
    """One parameter's table entry and its byte strings as (section, dict that gets the span, key,
    bytes); `matrices`: the float matrices (float_matrices); `index`: the ternary weights packed before
    it (the rotation's seed offset); `quantized`: quantize(w)'s (codes, scales) when the caller has them
    (no rotation)."""
    w, shape, G = np.asarray(w, np.float32), spec.shape, config.ternary.group_size
    if name in tern:
        rot = None
        if hadamard is not None:
            rot = hadamard_rule.new_rotation(shape[1], G, hadamard, index)
            w = rot.rotate(w).astype(np.float32)
        q, s = quantized if (quantized is not None and rot is None) else quantize(w, G, config.ternary.eps)
        sd = _scale_dtype(s)
        entry = {"name": name, "kind": "ternary", "shape": list(shape), "group_size": G,
                 "count": int(q.size), "scale_shape": list(s.shape), "scale_dtype": sd}
        items = [("codes", entry, "codes", pack_base3(q).tobytes()), ("scales", entry, "scales", _le(s.astype(sd), sd))]
        if rot is not None:
            entry["hadamard"] = {"block": rot.block}
            items.append(("rotations", entry["hadamard"], "signs", hadamard_rule.signs_bytes(rot)))
        return entry, items
    kind = float_matrix_storage(floats, spec) if name in matrices else "fp16"
    if kind != "fp16":
        q, s = quantize_rows(w, kind, name)
        sd = str(s.dtype)
        entry = {"name": name, "kind": "float", "shape": list(shape), "dtype": kind,
                 "scale_shape": [int(shape[0])], "scale_dtype": sd}
        return entry, [("float_codes", entry, "data", q.tobytes()), ("float_scales", entry, "scales", _le(s, sd))]
    fd = _float_dtype(w)
    entry = {"name": name, "kind": "float", "shape": list(shape), "dtype": fd}
    return entry, [("floats", entry, "data", _le(w.astype(fd), fd))]


def _version(artifact: str, floats: str, hadamard: int | None) -> int:
    """The oldest version that can say what this file holds (so that existing layouts stay byte-identical)."""
    if artifact != "default":
        return PG_RECORD_VERSION
    return QUANT_VERSION if (floats not in V2_FLOAT_MODES or hadamard is not None) else VERSION


def place_sections(parts: dict[str, list]) -> dict[str, int]:
    """Give every item its [offset, bytes] span in the raw payload (sections in order) and return each
    section's size. An item's data is its bytes, or (an estimate's stand-in) their count."""
    off, sections = 0, {}
    for sec_name, sec in parts.items():
        start = off
        for entry, key, b in sec:
            n = b if isinstance(b, int) else len(b)
            entry[key] = [off, n]
            off += n
        sections[sec_name] = off - start
    return sections


def header_bytes(config: RunConfig, table: list[dict[str, Any]], codec: str, floats: str, artifact: str,
                 hadamard: int | None, payload_bytes: int, raw_payload_bytes: int, sha256: str) -> bytes:
    """MAGIC, the header's length and the header (module docstring); `codec` as the header names it."""
    header = {"format": FORMAT, "version": _version(artifact, floats, hadamard), "compress": codec, "floats": floats,
              "payload_bytes": payload_bytes, "raw_payload_bytes": raw_payload_bytes, "payload_sha256": sha256,
              "config": config.to_dict(), "tensors": table}
    if artifact != "default":
        header["artifact"] = artifact
    if hadamard is not None:
        header["hadamard"] = {"seed": hadamard, "weights": "W_eff = T(W R) R^T, R = diag(signs) blockdiag(H_b / sqrt(b))"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<Q", len(hb)) + hb


def header_codec(compress: str, raw_payload_bytes: int) -> str:
    """The header's "compress": the codec --compress writes ("zstd" for every level; "auto" resolved)."""
    codec = codec_for(compress, raw_payload_bytes)
    return "zstd" if codec == "zstd-22" else codec  # the level is the writer's


def _assemble(config: RunConfig, parts: dict[str, list], table: list[dict[str, Any]], compress: str, floats: str,
              artifact: str, measure_codes: bool, hadamard: int | None = None, progress=None,
              threads: int | None = None) -> tuple[bytes, bytes, PackedStats]:
    """Lay the sections out in order, compress (zstd on `threads` workers above LARGE_PAYLOAD; None:
    every CPU), and build the header: (MAGIC + header, payload, stats)."""
    sections = place_sections(parts)
    raw_payload = b"".join(b for sec in parts.values() for _, _, b in sec)
    for sec in parts.values():  # the joined copy is all that is needed from here: free the pieces
        sec.clear()
    if progress:
        how = describe_compression(compress, len(raw_payload))
        slow = len(raw_payload) > packed_codecs.LARGE_PAYLOAD and ("lzma" in how or "level 22" in how)
        progress(f"compressing {len(raw_payload):,d} bytes: {how}" + (
            f" (slow: 1-3 MB/s on a 2-core machine, about {len(raw_payload) / 2e6 / 60:.0f} min; "
            "--compress zstd takes seconds)" if slow else ""))
    payload = compress_payload(raw_payload, compress, threads=threads)
    head = header_bytes(config, table, header_codec(compress, len(raw_payload)), floats, artifact, hadamard,
                        len(payload), len(raw_payload), hashlib.sha256(payload).hexdigest())
    codes_c = None
    if measure_codes and codec_for(compress, len(raw_payload)) != "none" and sections["codes"]:
        codes_c = len(compress_payload(raw_payload[:sections["codes"]], compress, len(raw_payload), threads))
    stats = _stats(config, table, sections, compress, floats, artifact, hadamard, len(raw_payload), len(head),
                   len(payload), codes_c)
    stats.raw_sha256 = hashlib.sha256(raw_payload).hexdigest()
    return head, payload, stats


def _stats(config: RunConfig, table: list[dict[str, Any]], sections: dict[str, int], compress: str, floats: str,
           artifact: str, hadamard: int | None, raw: int, head: int, payload: int, codes_c: int | None) -> PackedStats:
    n_tern = sum(e["count"] for e in table if e["kind"] == "ternary")
    n_float = sum(math.prod(e["shape"]) for e in table if e["kind"] == "float")
    float_total = sum(n for k, n in sections.items() if k not in ("codes", "scales", "rotations"))
    kinds: dict[str, int] = {}
    matrices = set(float_matrices(config))
    for e in table:
        if e["kind"] == "float" and e["name"] in matrices:
            k = "fp16" if e["dtype"] in ("float16", "float32") else e["dtype"]
            kinds[k] = kinds.get(k, 0) + 1
    return PackedStats(
        bytes=head + payload, raw_payload=raw, codes_bytes=sections["codes"],
        scales_bytes=sections["scales"], floats_bytes=float_total, header_bytes=head,
        ternary_weights=n_tern, float_weights=n_float, codes_only_compressed=codes_c,
        compress=codec_for(compress, raw) if compress == "auto" else compress,
        floats=floats, payload_bytes=payload,
        float_codes_bytes=sections.get("float_codes", sections.get("fp8", 0)),
        float_scales_bytes=sections.get("float_scales", 0),
        plain_floats_bytes=sections.get("floats", sections.get("fp16", 0)), artifact=artifact,
        rotation_bytes=sections.get("rotations", 0), hadamard_seed=hadamard, float_kinds=kinds,
        compression=describe_compression(compress, raw))


def to_packed(src: str | Path, out: str | Path, *, compress: str = "auto", floats: str = "fp16",
              force: bool = False, artifact: str = "default", hadamard: int | None = None,
              progress=None, threads: int | None = None) -> PackedStats:
    """Verified read of the checkpoint `src`, packed into the single file `out` (written atomically).
    The tensors are read one at a time (lazy_weights.py); `progress`: as for pack; `threads`: zstd's
    workers above LARGE_PAYLOAD (None: every CPU; the bytes do not depend on it)."""
    out = Path(out)
    check_file_out(out, src, "packed", force, MAGIC, "ternary packed file")
    _check_options(compress, floats, artifact, hadamard)  # before the (slow) read
    compress = "lzma" if artifact == pgrecord.ARTIFACT else compress  # the record's storage, whatever the size
    if progress:
        progress(f"checking {src} (manifest sha256)")
    config, weights = open_weights(src)
    check_format(config, "packed")
    if progress:
        progress(f"packing {len(weights)} tensors ({artifact} layout, floats {floats})")
    head, payload, stats = _pack_pieces(config, weights, compress, floats, artifact, hadamard, progress,
                                        threads=threads)
    del weights  # closes the checkpoint before the read-back
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(head)  # two writes, not one joined copy of a payload that may be hundreds of MB
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    del payload
    if progress:
        progress(f"verifying {out} (read back: checksums, decompressed, compared)")
    _verify(out, stats)
    return stats


def _verify(out: Path, stats: PackedStats) -> None:
    """The file reads back: header and tensor table valid, payload checksum, and the decompressed
    payload the very bytes that were compressed (sha256). A small file is also decoded tensor by
    tensor; a large one is not, since decoding is a function of those bytes and took 10-20 s at
    Qwen3-0.6B's size (440M codes unpacked, a 0.6 GB float32 embedding)."""
    if stats.raw_payload <= packed_codecs.LARGE_PAYLOAD:  # the module's: tests lower it
        read_packed(out)
    header, start = read_header(out)
    _config_and_table(out, header)
    if hashlib.sha256(_raw_payload(out, header, start)).hexdigest() != stats.raw_sha256:
        raise PackedError(f"{out}: the payload did not read back as written")


def _pack_pieces(config: RunConfig, weights, compress: str, floats: str, artifact: str, hadamard: int | None,
                 progress, measure_codes: bool = True, threads: int | None = None
                 ) -> tuple[bytes, bytes, PackedStats]:
    """pack's work, returning (MAGIC + header, payload, stats) rather than their joined copy."""
    if hadamard is not None:
        check_hadamard_model(config)
    tern = set(ternary_parameters(config))
    if artifact == pgrecord.ARTIFACT:
        parts, table = pgrecord.pack_tensors(config, parameter_shapes(config.model), weights, tern)
        floats = "fp8"
    else:
        parts, table = _pack_tensors(config, weights, tern, floats, hadamard)
    return _assemble(config, parts, table, compress, floats, artifact, measure_codes, hadamard, progress, threads)
