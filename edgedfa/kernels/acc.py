"""The accumulator register of the compiled backends: its overflow step as a numba function,
the mode codes it takes, and the bounds that let a backend skip the check (§4).

``step`` is ``fixed.acc_step`` for one scalar register; mode 4 (``EXACT``) means a bound
proved that no partial sum can leave the register, so no check is needed.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import EdgeDFAError
from ..fixed import Overflow, acc_limits

MODE_CODE = {Overflow.AP_SAT: 0, Overflow.AP_SAT_SYM: 1, Overflow.AP_SAT_ZERO: 2, Overflow.AP_WRAP: 3}
EXACT = 4


def max_abs(a) -> int:
    """Largest |code| of an integer array (exact for every dtype: no abs of the minimum)."""
    return max(-int(a.min()), int(a.max())) if a.size else 0


def check_products(amax: int, bmax: int) -> None:
    """Reject operands (their largest magnitudes) whose single product could exceed 62 bits (§4)."""
    if amax * bmax >= 1 << 62:  # exact: Python ints
        raise EdgeDFAError("gemm: a single product exceeds 62 bits; narrow the operand formats")


@numba.njit(cache=True, inline="always")
def step(acc, lo, hi, mode, bits):
    if mode == 3:
        return ((acc - lo) & ((np.int64(1) << bits) - 1)) + lo
    if mode == 2:
        return acc if lo <= acc <= hi else np.int64(0)
    return min(max(acc, lo), hi)


@numba.njit(cache=True, inline="always")
def step_or_exact(acc, lo, hi, mode, bits):
    if mode == 4:  # EXACT
        return acc
    return step(acc, lo, hi, mode, bits)


def register_mode(acc_bits, overflow, bound=None):
    """(lo, hi, mode, bits) for the numba loops; mode 4 when ``bound`` fits (no check needed)."""
    lo, hi = acc_limits(acc_bits)
    if overflow is Overflow.AP_SAT_SYM:
        lo = -hi
    mode = EXACT if bound is not None and bound <= hi else MODE_CODE[overflow]
    return np.int64(lo), np.int64(hi), mode, np.int64(acc_bits)
