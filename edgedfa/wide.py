"""Exact wide arithmetic on QTensors: products, sums and concatenations that lose no bit.

Used where a datapath adds or multiplies values of different formats before one narrowing
(the recurrent cells of docs/datapath.md §9.6-9.7): a sum aligns its terms to the finest
fraction that keeps every term below 2^60 (``WIDE_BITS``; a sum of eight or more terms keeps
``sum_headroom`` bits more, so that it cannot pass int64); terms finer than that are rounded
there. Results carry a nominal 48-bit format (``wide_fmt``).
"""

from __future__ import annotations

import functools

import numpy as np

from .fixed import FixedFormat, QTensor, round_shift

WIDE_BITS = 60  # an exact sum aligns its terms to the finest fraction that keeps them < 2^60


@functools.lru_cache(maxsize=None)
def wide_fmt(frac: int) -> FixedFormat:
    """Nominal format of an exact intermediate with ``frac`` fraction bits."""
    return FixedFormat.with_frac(48, int(frac))


def mul(*ts):
    """Exact element-wise product of QTensors (None if any factor is None)."""
    if any(t is None for t in ts):
        return None
    codes, frac = ts[0].codes, ts[0].fmt.frac_bits
    for t in ts[1:]:
        codes, frac = codes * t.codes, frac + t.fmt.frac_bits
    return QTensor(codes, wide_fmt(frac))


def sum_headroom(k: int) -> int:
    """Bits a sum of ``k`` live terms keeps below the 2^60 bound: none up to seven terms
    (7 · 2^60 < 2^63), then one more per doubling, so that no sum passes int64 (§9.6)."""
    return max(0, int(k).bit_length() - 3)


def common_frac(ts, headroom: int = 0) -> int:
    """Finest fraction of the terms, unless aligning there would take one to 2^(60 - headroom)."""
    finest = max(t.fmt.frac_bits for t in ts)
    bound = WIDE_BITS - headroom
    return min([finest] + [t.fmt.frac_bits + bound - int(np.abs(t.codes).max()).bit_length() for t in ts])


def align(t: QTensor, frac: int, rounding) -> np.ndarray:
    """Codes of ``t`` at ``frac`` fraction bits (rounded by ``rounding`` when coarser)."""
    shift = t.fmt.frac_bits - frac
    return t.codes if shift == 0 else round_shift(t.codes, shift, rounding)


def live(ts):
    """The terms that are present and not all zero."""
    return [t for t in ts if t is not None and t.codes.size and t.codes.any()]


def add(ts, rounding):
    """Exact sum of the non-zero terms in their common_frac (terms finer than it rounded by
    ``rounding``); None when every term is zero."""
    ts = live(ts)
    if not ts:
        return None
    frac = common_frac(ts, sum_headroom(len(ts)))
    total = sum(align(t, frac, rounding) for t in ts)
    return QTensor(total, wide_fmt(frac))


def total(ts, rounding) -> QTensor:
    """``add`` for forward values: zeros (in the first term's format) instead of None."""
    return add(ts, rounding) or QTensor(np.zeros_like(ts[0].codes), ts[0].fmt)


def cat(parts, shape, rounding):
    """Concatenate along the last axis in one common_frac; None parts are zeros."""
    present = live(parts)
    if not present:
        return None
    frac = common_frac(present)
    out = [np.zeros(shape, np.int64) if p is None else align(p, frac, rounding) for p in parts]
    return QTensor(np.concatenate(out, axis=-1), wide_fmt(frac))


def one_minus(t: QTensor) -> QTensor:
    """1 - t exactly, in t's fraction bits."""
    return QTensor((1 << t.fmt.frac_bits) - t.codes, wide_fmt(t.fmt.frac_bits))


def neg(t: QTensor) -> QTensor:
    return QTensor(-t.codes, t.fmt)
