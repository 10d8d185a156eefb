"""Per-element rounding and overflow in compiled code (docs/datapath.md §2-4).

The one-pass form of ``fixed.round_shift`` and ``fixed.requantize`` for a right shift and
the deterministic rounding modes, plus the scalar pieces the compiled update kernels share
(leading-one count, one code's rounding, the §5 hash). ``fixed``'s numpy code stays the
reference; these functions are bit-identical to it on every int64 input (tests/test_fixed.py
runs both on the same operands).

Modes are integer codes in the order of ``fixed.Rounding`` (AP_TRN 0, AP_TRN_ZERO 1, AP_RND 2,
AP_RND_ZERO 3, AP_RND_MIN_INF 4, AP_RND_INF 5, AP_RND_CONV 6, STOCHASTIC 7) and of
``fixed.Overflow`` (AP_SAT 0, AP_SAT_ZERO 1, AP_SAT_SYM 2, AP_WRAP 3), plus ``NO_OVERFLOW``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

STOCHASTIC = 7
NO_OVERFLOW = 4  # round only (fixed.round_shift)


def inner(*signatures):
    """``numba.njit(cache=True)`` for a function that only compiled code calls: without the
    CPython and C wrappers nothing from Python needs (on an empty cache, building them was
    about a tenth of the recurrent kernels' compile time)."""
    return numba.njit(*signatures, cache=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)


@inner()
def bitlen(v):
    """Bit length of v >= 0; 63 for a negative v (as the reference's leading-one scan)."""
    return 63 if v < 0 else 64 - leading_zeros(v)  # a count-leading-zeros instruction


@inner()
def lshift(x, s):
    """numpy's int64 ``x << s``: wraps, and 0 from 64 bits on."""
    return x << s if s < 64 else 0


@inner()
def round_shift_one(x, s, mode, word):
    """``fixed.round_shift`` of one code by 0 < s <= 62 (word: its stochastic word)."""
    if mode == STOCHASTIC:  # floor((x + r) / 2^s), r the top s bits of the word
        r = (word >> (32 - s)) if s <= 32 else (word << (s - 32))
        return (x >> s) + (((x & ((np.int64(1) << s) - 1)) + r) >> s)
    base, odd, neg, pos = _carry_terms(s, mode)
    return _rounded(x, s, (np.int64(1) << s) - 1, base, odd, neg, pos)


@inner()
def mix32(x):
    """``prng.mix32`` of one word (every product below 2^63)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


@inner()
def overflow_one(c, lo, hi, mode, width):
    """``fixed._overflow`` of one code (lo already symmetric for AP_SAT_SYM)."""
    if mode == 3:  # AP_WRAP
        return ((c - lo) & ((np.int64(1) << width) - 1)) + lo
    if mode == 1:  # AP_SAT_ZERO
        return 0 if (c < lo or c > hi) else c
    if mode == NO_OVERFLOW:
        return c
    return min(max(c, lo), hi)


@inner()
def _carry_terms(s, mode):
    """(base, odd, negative, positive): the floor ``v >> s`` gets one more LSB exactly when
    ``(v & (2^s - 1)) + base + odd * (q & 1) + negative * (v < 0) + positive * (v >= 0)``
    reaches 2^s, for the deterministic mode ``mode`` (``fixed._round_up``'s table, branch-free:
    the residual plus these terms stays below 2^(s+1), so nothing overflows)."""
    half = np.int64(1) << (s - 1)
    if mode == 0:  # AP_TRN
        return np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    if mode == 1:  # AP_TRN_ZERO: up when inexact and negative
        return np.int64(0), np.int64(0), (np.int64(1) << s) - 1, np.int64(0)
    if mode == 2:  # AP_RND: ties up
        return half, np.int64(0), np.int64(0), np.int64(0)
    if mode == 3:  # AP_RND_ZERO: ties up when negative
        return half - 1, np.int64(0), np.int64(1), np.int64(0)
    if mode == 4:  # AP_RND_MIN_INF: ties down
        return half - 1, np.int64(0), np.int64(0), np.int64(0)
    if mode == 5:  # AP_RND_INF: ties up when not negative
        return half - 1, np.int64(0), np.int64(0), np.int64(1)
    return half - 1, np.int64(1), np.int64(0), np.int64(0)  # AP_RND_CONV: ties up when odd


@inner()
def _rounded(v, s, mask, base, odd, neg, pos):
    """``v >> s`` plus its carry: the rounding of one code by the terms of ``_carry_terms``."""
    q = v >> s
    n = (v >> 63) & 1
    return q + (((v & mask) + base + odd * (q & 1) + neg * n + pos * (1 - n)) >> s)


@inner(numba.int64(numba.int64, numba.int64, numba.int64, numba.int64, numba.int64, numba.int64,
                   numba.int64))  # one compilation whatever literal arguments a caller passes
def requantize_one(x, s, rmode, lo, hi, omode, width):
    """``fixed.requantize`` of one code by a shift s <= 62 (s <= 0 a left shift, widened into
    the destination exactly as ``fixed._widen_into`` does), deterministic rounding modes."""
    if s > 0:
        base, odd, neg, pos = _carry_terms(s, rmode)
        return overflow_one(_rounded(x, s, (np.int64(1) << s) - 1, base, odd, neg, pos), lo, hi, omode, width)
    t = -s
    if t == 0:
        return overflow_one(x, lo, hi, omode, width)
    if omode == 3:  # AP_WRAP: only the bits that land in the low W matter
        v = np.int64(0) if t >= width else (x & ((np.int64(1) << (width - t)) - 1)) << t
        return overflow_one(v, lo, hi, omode, width)
    t = min(t, width + 1)
    cap = ((np.int64(1) << width) >> t) + 1  # |x| >= cap overflows after the shift
    return overflow_one(min(max(x, -cap), cap) << t, lo, hi, omode, width)


@numba.njit(cache=True)
def requantize_right(x, s, rmode, lo, hi, omode, width, out):
    """out[i] = overflow(round_shift(x[i], s)) for 0 < s <= 62 and a deterministic rounding
    mode, in one branch-free pass (x, out: flat int64)."""
    base, odd, neg, pos = _carry_terms(s, rmode)
    mask = (np.int64(1) << s) - 1
    for i in range(x.size):
        out[i] = overflow_one(_rounded(x[i], s, mask, base, odd, neg, pos), lo, hi, omode, width)


@numba.njit(cache=True)
def narrow_right(x, s, rmode, lim, out):
    """out[i] = clip(round_shift(x[i], s), -lim - 1, lim) for 0 < s <= 62 and a deterministic
    rounding mode (``fixed.narrow_dynamic``'s shift and saturation in one pass); returns the
    number of codes clipped and of non-zero codes rounded to zero."""
    base, odd, neg, pos = _carry_terms(s, rmode)
    mask = (np.int64(1) << s) - 1
    clipped = zeroed = 0
    for i in range(x.size):
        q = _rounded(x[i], s, mask, base, odd, neg, pos)
        c = min(max(q, -lim - 1), lim)
        clipped += c != q
        zeroed += c == 0 and x[i] != 0
        out[i] = c
    return clipped, zeroed


@numba.njit(cache=True)
def max_abs(x):
    """``np.abs(x).max()`` of a non-empty flat int64 array (|-2^63| wraps to -2^63, as numpy's)."""
    m = np.abs(x[0])
    for i in range(1, x.size):
        m = max(m, np.abs(x[i]))
    return m


@numba.njit(cache=True)
def observe_counts(x, lo, hi, out, has_out):
    """(min, max, #codes outside [lo, hi], #out codes 0 where x is not) of flat int64 arrays
    in one pass: ``scaling.observe``'s peak and tallies (``out`` is read only if has_out)."""
    mn = x[0]
    mx = x[0]
    clipped = 0
    zeroed = 0
    for i in range(x.size):
        v = x[i]
        mn = min(mn, v)
        mx = max(mx, v)
        clipped += v < lo or v > hi
        if has_out:
            zeroed += out[i] == 0 and v != 0
    return mn, mx, clipped, zeroed
