"""Exponent-management unit (§13): per managed tensor a max tracker and a leading-one
detector on the value entering its requantizer (forward) or leaving the update unit
(parameters), and, at the end of a step, one decision per tensor: grow the exponent at once
when the top bit was used, shrink it by one after ``patience`` steps with the top two bits
unused (a counter per tensor), never finer than the tensor's floor.

Ports per tensor: ``max_in`` (magnitude, ``src_frac`` fraction bits), ``fmt`` (width W,
integer bits I) -> ``delta`` (signed change of I), the counter ``low``. A change of a stored
tensor (a parameter) is a rescale pass through the shifter lanes: ``codes >> delta`` to
nearest even, or ``codes << 1``; an output format change only rewrites the requantizer's
shift register for the next step.
"""

from __future__ import annotations

import numpy as np

from edgedfa.fixed import FixedFormat

from .requant_unit import shift_round


def leading_one(magnitude: int) -> int:
    """Position of the highest set bit, plus one (0 for 0)."""
    n = 0
    while magnitude >> n:
        n += 1
    return n


class ExponentUnit:
    """Decisions and rescale passes; ``lanes`` elements per cycle in a rescale."""

    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)
        self.changes = 0

    @staticmethod
    def in_lsbs(maxabs: int, src_frac: int, fmt: FixedFormat) -> int:
        """Bits of the largest magnitude counted in ``fmt``'s LSBs (truncated)."""
        d = int(src_frac) - fmt.frac_bits
        return leading_one(int(maxabs) >> d if d >= 0 else int(maxabs) << -d)

    @staticmethod
    def decide(bits: int, fmt: FixedFormat, low: int, patience: int, finest: int | None) -> tuple:
        """(delta of I, new counter) for a peak of ``bits`` bits; ``finest`` caps the fraction."""
        w = fmt.width
        if bits > w - 2:
            return bits - (w - 2), 0
        if bits >= w - 2:
            return 0, 0
        if low + 1 < patience:
            return 0, low + 1
        if finest is not None and fmt.frac_bits + 1 > finest:
            return 0, 0
        return -1, 0

    def rescale(self, codes, delta: int) -> np.ndarray:
        """Stored codes into a format ``delta`` integer bits wider (or narrower if negative)."""
        self.changes += 1
        return shift_round(codes, delta, "AP_RND_CONV")

    def cycles(self, n: int) -> int:
        return -(-int(n) // self.lanes)


def moved(fmt: FixedFormat, delta: int) -> FixedFormat:
    return FixedFormat(fmt.width, fmt.int_bits + int(delta), fmt.signed)
