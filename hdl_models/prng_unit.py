"""PRNG unit: the §5 counter-based hash, one key register per tensor, one mix32 per lane.

Ports: ``seed`` (32), ``stream`` (32), ``step`` (32) -> key register; ``index`` (32) per lane
-> ``word`` (32). Two 32x32 multipliers per lane; ``lanes`` words per cycle.
"""

from __future__ import annotations

import numpy as np

WORD_WIDTH = 32
MASK32 = (1 << WORD_WIDTH) - 1
GOLDEN = 0x9E3779B9
MUL_A, MUL_B = 0x7FEB352D, 0x846CA68B

# stream purposes (§5)
P_WEIGHT_UPDATE, P_BIAS_UPDATE, P_FB_VALUE, P_FB_INDEX = 1, 2, 3, 4


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 lanes holding 32-bit values."""
    x = np.asarray(x, dtype=np.uint64) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(MUL_A)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(MUL_B)) & np.uint64(MASK32)
    return x ^ (x >> np.uint64(16))


def stream_of(layer_index: int, purpose: int) -> int:
    return ((int(layer_index) << 8) | int(purpose)) & MASK32


def key_register(seed: int, stream: int, step: int) -> int:
    """key = mix32(mix32(mix32(seed ^ golden) ^ stream) ^ step)."""
    h = int(mix32(np.uint64((int(seed) ^ GOLDEN) & MASK32)))
    h = int(mix32(np.uint64((h ^ int(stream)) & MASK32)))
    return int(mix32(np.uint64((h ^ int(step)) & MASK32)))


class PrngUnit:
    """``lanes`` hash lanes sharing one key register; counts words generated."""

    LATENCY = 3  # mix32 pipeline: xorshift-multiply | xorshift-multiply | xorshift (rtl/prng_unit.v)
    KEY_LATENCY = 10  # three mix32 passes on the key's own hash + the key register; overlaps the previous tensor

    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)
        self.words_generated = 0

    def words(self, seed: int, stream: int, step: int, shape) -> np.ndarray:
        """Words for every element of a tensor of ``shape``, C order, as int64 in 0..2^32-1."""
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64))
        key = np.uint64(key_register(seed, stream, step))
        idx = np.arange(n, dtype=np.uint64) & np.uint64(MASK32)
        self.words_generated += n
        return mix32(key ^ idx).astype(np.int64).reshape(shape)

    def cycles(self, n_words: int) -> int:
        """One word per lane per cycle, plus the pipeline's fill once per task."""
        return -(-int(n_words) // self.lanes) + self.LATENCY - 1 if n_words else 0


def words(seed, stream, step, shape) -> np.ndarray:
    """Stateless helper: the §5 words of one tensor (int64)."""
    return PrngUnit().words(seed, stream, step, shape)
