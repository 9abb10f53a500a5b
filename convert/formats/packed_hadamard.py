"""`ternary convert --to packed --hadamard`: a randomized Hadamard rotation of each ternary weight's
input dimension before it is ternarized, at export only (SEEDS S15: the SKC-600 report found such a
rotation hurts when trained with and lowers the quantization error when applied at export).

For a ternary weight W (out x n) with group size G, the rotation is R = D B (n x n): D = diag(signs),
one random sign per input column (seeded, and stored in the file, so nothing depends on a random
generator's stream), and B block-diagonal with n / b copies of the Sylvester-Hadamard matrix H_b /
sqrt(b), b the largest power of two dividing G (or n when G = 0), so that every block lies inside
one scale group. R is orthogonal (R R^T = D B B^T D = I), so W R R^T = W exactly in real arithmetic
(in float64 to about 1e-15 relative).

The file stores T(W R): the ternary codes q and fp16 scales s of the rotated weight, under the
checkpoint's own group size and eps, and the signs and b of each tensor. The loader rebuilds
W_eff = T(W R) R^T = (q * s) R^T as a float32 matrix (computed in float64, rounded once), and the
model is run with ternary projection off (packed.effective_config): y = W_eff x = (q * s)(R^T x),
i.e. the ternary matrix applied to rotated activations, up to float32 rounding. W_eff is not a
ternary matrix, so such a file has no latent form, and a model that quantizes activations (whose
activations would have to be quantized after the rotation) is refused at export.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from convert.formats.packed_codecs import PackedError
from shared.spec.config import ConfigError


@lru_cache(maxsize=16)
def hadamard_block(b: int) -> np.ndarray:
    """H_b / sqrt(b), float64 (b a power of two): Sylvester's construction, symmetric and orthogonal."""
    if b < 1 or b & (b - 1):
        raise ValueError(f"Hadamard block {b} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    out = h / np.sqrt(b)
    out.flags.writeable = False
    return out


def block_size(n: int, group_size: int) -> int:
    """The largest power of two dividing `group_size` (or n when it is 0): the Hadamard block."""
    m = group_size or n
    return m & -m


@dataclass(frozen=True)
class Rotation:
    """R = diag(signs) blockdiag(H_b / sqrt(b)) on the input dimension (the module docstring)."""
    block: int
    signs: np.ndarray  # (n,) of +-1, float64

    def rotate(self, w: np.ndarray) -> np.ndarray:
        """W R, float64: sign-flip the columns, then each block of b columns times H_b / sqrt(b)."""
        out_, n = w.shape
        x = (np.asarray(w, np.float64) * self.signs).reshape(out_, n // self.block, self.block)
        return (x @ hadamard_block(self.block)).reshape(out_, n)

    def unrotate(self, w: np.ndarray) -> np.ndarray:
        """W R^T = W B^T D, float64 (H_b is symmetric)."""
        out_, n = w.shape
        x = np.asarray(w, np.float64).reshape(out_, n // self.block, self.block) @ hadamard_block(self.block).T
        return x.reshape(out_, n) * self.signs


def new_rotation(n: int, group_size: int, seed: int, index: int) -> Rotation:
    """The rotation of the `index`-th ternary weight (canonical order) of a file written with `seed`."""
    b = block_size(n, group_size)
    if b < 2:
        raise ConfigError(f"--hadamard: no power-of-two block of at least 2 divides the input dimension {n} "
                          f"(group size {group_size}); this model cannot be rotated")
    rng = np.random.default_rng([seed, index])
    return Rotation(b, np.where(rng.integers(0, 2, n) == 1, 1.0, -1.0))


def signs_bytes(rot: Rotation) -> bytes:
    """One bit per input column (1 = +1), numpy.packbits order (most significant bit first)."""
    return np.packbits(rot.signs > 0).tobytes()


def read_rotation(raw_signs: bytes, entry: dict, n: int, group_size: int, what: str, path) -> Rotation:
    """The Rotation of one table entry's "hadamard" record, checked against the tensor's shape."""
    b = entry.get("block")
    if not isinstance(b, int) or b != block_size(n, group_size) or b < 2:
        raise PackedError(f"{path}: {what}: Hadamard block {b!r} is not the one the format fixes for input "
                          f"dimension {n} and group size {group_size} ({block_size(n, group_size)})")
    if len(raw_signs) != (n + 7) // 8:
        raise PackedError(f"{path}: {what}: {len(raw_signs)} bytes of rotation signs where {(n + 7) // 8} are needed")
    bits = np.unpackbits(np.frombuffer(raw_signs, np.uint8))
    if bits[n:].any():
        raise PackedError(f"{path}: {what}: rotation signs have nonzero padding bits (damaged data)")
    return Rotation(b, np.where(bits[:n] == 1, 1.0, -1.0))
