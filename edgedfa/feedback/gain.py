"""The default feedback gain of a module whose target is a conv map (§10.2)."""

from __future__ import annotations

import numpy as np

from .base import half_log2

GAIN_REFERENCE_SHIFT = 1  # a 4-unit reference (set on the holdout split, docs/benchmarks.md)


def map_gain_shift(shape, source_shape=()) -> int:
    """Feedback onto a conv map [Ch, positions...]: 2^-g with g = max(0, ceil(log2(n)/2) - 1),
    n = Ch x the target positions per source cell (all positions for the output error): the
    units one source value reaches. A conv weight gradient sums the projected error over the
    positions, and BP's error at a map falls like 1/sqrt(its units) through the fan-in-scaled
    weights above it; the feedback follows the same law (docs/algorithms.md, datapath §10.2)."""
    if len(shape) < 2:
        return 0
    positions = int(np.prod(shape[1:]))
    src = tuple(source_shape)[1:] if np.ndim(source_shape) else ()
    if len(src) == len(shape) - 1:
        positions //= max(1, int(np.prod(src)))
    return max(0, half_log2(int(shape[0]) * positions) - GAIN_REFERENCE_SHIFT)
