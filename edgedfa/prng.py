"""The datapath's pseudo-random source: a counter-based 32-bit hash (docs/datapath.md §5).

Every random word is a pure function of (seed, stream, step, index), so a tensor's random
bits can be regenerated anywhere, in any order, after any number of resumes.
"""

from __future__ import annotations

import numpy as np

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9

# Stream identifiers: stream = (layer_index << 8) | purpose.
PURPOSE_WEIGHT_UPDATE = 1
PURPOSE_BIAS_UPDATE = 2
PURPOSE_FEEDBACK = 3
PURPOSE_FEEDBACK_INDEX = 4
PURPOSE_INIT = 5
PURPOSE_SHUFFLE = 6
PURPOSE_QUANTIZE = 7
PURPOSE_AUX = 8


def stream_id(layer_index: int, purpose: int) -> int:
    """Stream number of one (layer, purpose) pair."""
    return ((int(layer_index) << 8) | int(purpose)) & MASK32


def mix32(x):
    """lowbias32 finaliser: xorshift-multiply, two 32x32 multipliers in hardware."""
    x = np.asarray(x, dtype=np.uint64) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return x


def key32(seed: int, stream: int, step: int) -> int:
    """Per-tensor key register: constant for the whole tensor of one step."""
    h = mix32(np.uint64((int(seed) ^ GOLDEN32) & MASK32))
    h = mix32(h ^ np.uint64(int(stream) & MASK32))
    h = mix32(h ^ np.uint64(int(step) & MASK32))
    return int(h)


def words(seed: int, stream: int, step: int, n_or_shape) -> np.ndarray:
    """uint32 words for elements 0..n-1 (C order) of one tensor: word_i = mix32(key ^ i)."""
    shape = (n_or_shape,) if np.isscalar(n_or_shape) else tuple(n_or_shape)
    n = int(np.prod(shape, dtype=np.int64))
    idx = np.arange(n, dtype=np.uint64) & MASK32
    w = mix32(np.uint64(key32(seed, stream, step)) ^ idx)
    return w.astype(np.uint32).reshape(shape)


class Stream:
    """A named random stream: seed + stream id; draws are indexed by step, never stateful."""

    __slots__ = ("seed", "stream")

    def __init__(self, seed: int, stream: int):
        self.seed = int(seed) & MASK32
        self.stream = int(stream) & MASK32

    def words(self, step: int, shape) -> np.ndarray:
        return words(self.seed, self.stream, step, shape)

    def __repr__(self) -> str:
        return f"Stream(seed={self.seed}, stream={self.stream:#x})"
