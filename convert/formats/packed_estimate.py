"""The size of `convert --to packed` without writing it: what `ternary inspect` reports by default.

Building the file means compressing the whole raw payload (about 400 MB for Qwen3-0.6B, minutes
with LZMA); the estimate instead packs every tensor as the writer does (packed.pack_tensor, so the
raw payload, the section sizes and the header are exact, up to the digits of the payload size in
the header) and compresses only a sample of each section: from every tensor's bytes in a section a
contiguous slice from the middle, a fraction min(1, sample_bytes / section size) of them, the
slices of a section compressed together with the codec and level the real file would get
(packed_codecs.codec_for, zstd_level: chosen by the whole raw payload's size). A section's
estimate is its size times the sample's compression ratio (the stream's fixed cost, the size of an
empty input compressed, counted once). When every section fits its budget the samples are the
whole raw payload, compressed as one: the estimate is then the file's size exactly (every small
model). Sampled, it was within ESTIMATE_TOLERANCE (3%) of the file on the tests' tiny models with
budgets of 4 and 16 KB (tests/convert/test_inspect.py: the worst case, slices of a few bytes per
tensor and payloads of one zstd block) and within 0.04% on a random Qwen3-0.6B (378,312,397 B
estimated, 378,159,397 B written).
`ternary inspect --measure` builds the real file in memory instead.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from convert.formats.packed import SECTIONS, header_bytes, header_codec, pack_tensor, place_sections
from convert.formats.packed_codecs import (FP16_MAX, ROW_QMAX, ROW_SCALE_FP16_BELOW, codec_for, compress_payload,
                                           describe_compression, float_matrix_storage)
from shared.spec.params import float_matrices, parameter_specs, ternary_parameters

SAMPLE_BYTES = 1 << 20  # per section: about 1 s of LZMA 9e on this project's 2-core VM
ESTIMATE_TOLERANCE = 0.03  # relative, sampled (module docstring); unsampled estimates are exact
_MAX_RATIO = 1.001  # incompressible data: a compressor adds a few bytes per block, never more


class PackedEstimate:
    """Fed one tensor at a time (`add`, in the order of parameter_specs), then `result()`: the
    estimated file of --floats `floats` and --compress `compress` (default layout, no --hadamard)."""

    def __init__(self, config, floats: str = "fp16", compress: str = "auto", sample_bytes: int = SAMPLE_BYTES):
        self.config, self.floats, self.compress, self.sample_bytes = config, floats, compress, sample_bytes
        self.specs = parameter_specs(config.model)
        self.tern = set(ternary_parameters(config))
        self.matrices = set(float_matrices(config))
        self.fraction = self._fractions()
        self.table: list[dict[str, Any]] = []
        self.lengths: dict[str, list] = {k: [] for k in SECTIONS}  # (span holder, key, byte count)
        self.samples: dict[str, list[bytes]] = {k: [] for k in SECTIONS}
        self._index = 0

    def _fractions(self) -> dict[str, float]:
        """The sampled fraction of each section, from its size as the shapes predict it (fp16
        scales; the sampling needs no more precision than that)."""
        G, size = self.config.ternary.group_size, {k: 0 for k in SECTIONS}
        for name, spec in self.specs.items():
            n = math.prod(spec.shape)
            if name in self.tern:
                size["codes"] += (n + 4) // 5
                size["scales"] += 2 * (n // G if G else 1)
            elif name in self.matrices and self.floats != "fp16":
                size["float_codes"] += n
                size["float_scales"] += 2 * spec.shape[0]
            else:
                size["floats"] += 2 * n
        return {k: min(1.0, self.sample_bytes / v) if v else 1.0 for k, v in size.items()}

    def add(self, name: str, w: np.ndarray, packed=None) -> None:
        """`packed`: pack_tensor's (entry, items) for `w` when the caller has them (a ternary weight's
        are the same under every --floats; inspect packs each once for both of its estimates)."""
        if packed is None and self._rows_sampled(name, w):
            return
        entry, items = packed or pack_tensor(self.config, name, self.specs[name], w, self.tern, self.matrices,
                                             self.floats, None, self._index)
        self._index += name in self.tern
        self.table.append(entry)
        for sec, target, key, b in items:
            self.lengths[sec].append((target, key, len(b)))
            n = min(len(b), math.ceil(self.fraction[sec] * len(b)))
            start = (len(b) - n) // 2
            self.samples[sec].append(b[start:start + n])

    def _rows_sampled(self, name: str, w: np.ndarray) -> bool:
        """A big float matrix: pack only a block of rows from its middle as the sample (the fp16 copy
        or the row codes of a whole 151,936 x 1024 embedding cost seconds), its entry and sizes from
        the shape. False (pack it whole) where the section is not sampled or where the whole tensor
        needs float32 storage, which the rows alone might not show."""
        spec = self.specs[name]
        if name in self.tern or len(spec.shape) < 2:
            return False
        kind = float_matrix_storage(self.floats, spec) if name in self.matrices else "fp16"
        sec = "floats" if kind == "fp16" else "float_codes"
        amax = max(float(w.max()), -float(w.min())) if w.size else 0.0
        fp16 = amax <= FP16_MAX if kind == "fp16" else amax / ROW_QMAX[kind] < ROW_SCALE_FP16_BELOW
        if self.fraction[sec] >= 1.0 or not fp16:
            return False
        rows = spec.shape[0]
        r = max(1, math.ceil(self.fraction[sec] * rows))
        r0 = (rows - r) // 2
        entry, items = pack_tensor(self.config, name, spec, w[r0:r0 + r], self.tern, self.matrices, self.floats,
                                   None, self._index)  # the entry's shapes come from the spec: the whole tensor's
        full = {"floats": 2 * w.size, "float_codes": w.size, "float_scales": 2 * rows}
        self.table.append(entry)
        for sec_name, target, key, b in items:
            self.lengths[sec_name].append((target, key, full[sec_name]))
            self.samples[sec_name].append(b)
        return True

    def result(self) -> dict[str, Any]:
        sections = place_sections(self.lengths)
        raw = sum(sections.values())
        # a compressed stream's fixed cost (container, headers, checksum) once for the file, not per section
        empty = len(compress_payload(b"", self.compress, raw)) if raw else 0
        est = {k: self._section_estimate(k, n, raw, empty) for k, n in sections.items()}
        payload = sum(est.values()) + empty
        if all(f == 1.0 for f in self.fraction.values()):  # the samples are the whole raw payload: exact
            payload = len(compress_payload(b"".join(b for k in SECTIONS for b in self.samples[k]), self.compress))
        head = header_bytes(self.config, self.table, header_codec(self.compress, raw), self.floats, "default", None,
                            payload, raw, "0" * 64)
        n_tern = sum(e["count"] for e in self.table if e["kind"] == "ternary")
        codes_c = est["codes"] if codec_for(self.compress, raw) != "none" and sections["codes"] else None
        return {"bytes": len(head) + payload, "header_bytes": len(head), "payload_bytes": payload,
                "raw_payload_bytes": raw, "compression": describe_compression(self.compress, raw),
                "sampled": {k: round(f, 6) for k, f in self.fraction.items() if sections[k]},
                "bits_per_ternary_weight": 8 * (len(head) + payload) / n_tern if n_tern else None,
                "code_bits_per_weight_compressed": 8 * codes_c / n_tern if (codes_c is not None and n_tern) else None}

    def _section_estimate(self, sec: str, size: int, raw: int, empty: int) -> int:
        """The section's compressed bytes, less the stream's fixed cost `empty`."""
        if size == 0:
            return 0
        sample = b"".join(self.samples[sec])
        compressed = len(compress_payload(sample, self.compress, raw)) - empty
        if len(sample) == size:
            return compressed
        return int(round(size * min(compressed / len(sample), _MAX_RATIO)))
