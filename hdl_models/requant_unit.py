"""Requantization unit: shift, round (§2, incl. STOCHASTIC), saturate/wrap (§3), narrow (§7).

Ports: ``din`` (``in_width`` bits, ``F_in`` fraction bits), ``shift`` (signed), ``rnd``
mode, ``ovf`` mode, ``rand`` (32-bit word per lane for STOCHASTIC) -> ``dout``
(``out_width`` bits). One element per lane per cycle. Independent of edgedfa.fixed's
functions: only the FixedFormat/Rounding/Overflow types are shared.
"""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, Overflow, Rounding

from . import lanes

R = Rounding


def _up(q, r, h, x, rounding):
    if rounding is R.AP_TRN:
        return np.zeros(q.shape, dtype=np.int64)
    if rounding is R.AP_TRN_ZERO:
        return (r != 0) & (x < 0)
    if rounding is R.AP_RND:
        return r >= h
    if rounding is R.AP_RND_ZERO:
        return (r > h) | ((r == h) & (x < 0))
    if rounding is R.AP_RND_MIN_INF:
        return r > h
    if rounding is R.AP_RND_INF:
        return (r > h) | ((r == h) & (x >= 0))
    if rounding is R.AP_RND_CONV:
        return (r > h) | ((r == h) & ((q & 1) == 1))
    raise EdgeDFAError(f"requant unit: unsupported rounding {rounding}")


def shift_round(x, s: int, rounding, rand=None) -> np.ndarray:
    """x * 2^-s rounded to an integer (§2); s <= 0 is an exact left shift."""
    rounding = Rounding.parse(rounding)
    x = np.asarray(x, dtype=np.int64)
    s = int(s)
    if s <= 0:
        lim = (1 << 63) >> -s if -s < 63 else 0
        if x.size and (int(x.max()) >= lim or int(x.min()) < -lim) and -s > 0:
            raise EdgeDFAError(f"requant unit: left shift by {-s} overflows 64 bits")
        return x << -s
    if s > 62:  # past the 62-position barrel: what falls off is kept as one sticky bit
        if rounding is R.STOCHASTIC:
            raise EdgeDFAError(f"requant unit: stochastic right shift {s} beyond 62")
        drop = min(s - 62, 63)
        sticky = (x != 0) if drop == 63 else (x & ((1 << drop) - 1)) != 0
        x, s = (x >> drop) | sticky.astype(np.int64), 62
    q = x >> s
    r = x & ((1 << s) - 1)
    if rounding is R.STOCHASTIC:
        if rand is None:
            raise EdgeDFAError("requant unit: STOCHASTIC rounding needs random words")
        w = np.asarray(rand, dtype=np.int64)
        u = (w >> (32 - s)) if s <= 32 else (w << (s - 32))
        return q + ((r + u) >> s)  # r + u < 2^(s+1): the carry is the 'up' bit
    return q + _up(q, r, 1 << (s - 1), x, rounding).astype(np.int64)


def saturate(x, fmt: FixedFormat, overflow) -> np.ndarray:
    """Bring an unbounded integer into fmt's code range (§3)."""
    overflow = Overflow.parse(overflow)
    x = np.asarray(x, dtype=np.int64)
    w = fmt.width
    lo = -(1 << (w - 1)) if fmt.signed else 0
    hi = (1 << (w - 1)) - 1 if fmt.signed else (1 << w) - 1
    if overflow is Overflow.AP_WRAP:
        return ((x - lo) & ((1 << w) - 1)) + lo
    if overflow is Overflow.AP_SAT_ZERO:
        return np.where((x < lo) | (x > hi), 0, x)
    if overflow is Overflow.AP_SAT_SYM and fmt.signed:
        lo = -hi
    return np.minimum(np.maximum(x, lo), hi)


def _left_into(x, s: int, dst: FixedFormat, overflow) -> np.ndarray:
    """x << s as it lands in dst: only the bits that can matter are kept (exact, no 64-bit overflow)."""
    w = dst.width
    if overflow is Overflow.AP_WRAP:
        if s >= w:
            return np.zeros_like(x)
        return (x & ((1 << (w - s)) - 1)) << s
    s_eff = min(s, w + 1)  # any non-zero value shifted by w+1 is already out of range
    cap = 1 << (w + 1 - s_eff)  # |x| >= cap overflows after the shift: keep only the side
    return np.clip(x, -cap, cap) << s_eff


def requant(x, f_src: int, dst: FixedFormat, rounding, overflow, rand=None) -> np.ndarray:
    """Codes with ``f_src`` fraction bits to codes of ``dst``: shift, round, overflow."""
    return requant_tracked(x, f_src, dst, rounding, overflow, rand)[0]


def requant_tracked(x, f_src: int, dst: FixedFormat, rounding, overflow, rand=None) -> tuple:
    """(``requant``'s codes, max |x|): the compiled lanes where the shift is 0..62, the rounding
    deterministic and the code range within a 64-bit lane, else the numpy form (``requant_reference``)."""
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    s = int(f_src) - dst.frac_bits
    if rand is None and rounding is not R.STOCHASTIC and lanes.fits(s) and dst.width <= 62:
        return lanes.requant(x, s, rounding, lanes.overflow_mode(dst, overflow))
    x = np.asarray(x, dtype=np.int64)
    return requant_reference(x, f_src, dst, rounding, overflow, rand), lanes.maxabs(x)


def requant_reference(x, f_src: int, dst: FixedFormat, rounding, overflow, rand=None) -> np.ndarray:
    """``requant`` in numpy, one operation at a time: the reference of the compiled lanes."""
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    s = int(f_src) - dst.frac_bits
    x = np.asarray(x, dtype=np.int64)
    q = _left_into(x, -s, dst, overflow) if s < 0 else shift_round(x, s, rounding, rand)
    return saturate(q, dst, overflow)


ERR_FRAC_MAX = 32  # no error is finer than 2^-32 (§7): error x operand products stay <= 64
MAX_TRACKER_LATENCY = 2  # |x| and lane max | running max + leading-one detector (rtl/max_tracker.v)


def align_sum(terms) -> tuple:
    """The aligners and adder of an exact sum (§7): (codes, F) of ``terms`` [(codes, F, width)]
    shifted to the finest F and added (numpy broadcasting). Every aligned operand of k must
    stay below 2^(62 - bitlen(k - 1)), so the adder cannot overflow its 64 bits; formats
    further apart raise (a diverging run) instead of wrapping."""
    f = max(frac for _, frac, _ in terms)
    room = 62 - (len(terms) - 1).bit_length()
    total = 0
    for codes, frac, width in terms:
        codes, s = np.asarray(codes, dtype=np.int64), f - frac
        if width + s > room and codes.size and int(np.max(np.abs(codes))).bit_length() + s > room:
            raise EdgeDFAError(f"adder: an operand of {width} bits aligned {s} bits left to the finest of "
                               f"{len(terms)} formats passes {room} bits (a diverging run?)")
        total = total + (codes << s)
    return total, f


def narrow(x, f_src: int, err_width: int, rounding) -> tuple:
    """Block-exponent narrowing (§7): keep the top ``err_width`` bits, then no finer than
    2^-ERR_FRAC_MAX; (codes, FixedFormat).

    Hardware: a max|x| tracker and a leading-zero count set the shift for the whole tensor.
    """
    x = np.asarray(x, dtype=np.int64)
    maxabs = lanes.maxabs(x)
    s = max(0, maxabs.bit_length() - (err_width - 1), int(f_src) - 64)  # no format is finer than 2^-64
    fmt = FixedFormat.with_frac(err_width, int(f_src) - s)
    codes, f = floor_error(requant(x, f_src, fmt, rounding, Overflow.AP_SAT), fmt.frac_bits, err_width, rounding)
    return codes, FixedFormat.with_frac(err_width, f)


def floor_error(codes, frac: int, err_width: int, rounding) -> tuple:
    """(codes, fraction) of an error no finer than 2^-ERR_FRAC_MAX, the exponent register's
    floor (§7): a finer one goes through the requantizer once more (``rounding``, AP_SAT)."""
    if frac <= ERR_FRAC_MAX:
        return codes, frac
    floor = FixedFormat.with_frac(err_width, ERR_FRAC_MAX)
    return requant(codes, frac, floor, rounding, Overflow.AP_SAT), ERR_FRAC_MAX


class RequantUnit:
    """``lanes`` requantizers in parallel; counts elements processed."""

    LATENCY = 2  # pipeline stages: align | round + overflow (rtl/requant_unit.v)

    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)
        self.elements = 0

    def cycles(self, n: int) -> int:
        """One element per lane per cycle, plus the pipeline's fill once per task."""
        return -(-int(n) // self.lanes) + self.LATENCY - 1 if n else 0

    def requant(self, x, f_src, dst, rounding, overflow, rand=None):
        self.elements += int(np.size(x))
        return requant(x, f_src, dst, rounding, overflow, rand)

    def narrow(self, x, f_src, err_width, rounding):
        self.elements += int(np.size(x))
        return narrow(x, f_src, err_width, rounding)


def from_float(x, fmt: FixedFormat) -> np.ndarray:
    """Host-side input conversion (§2 'from floats'): AP_RND_CONV, AP_SAT, exact scaling; one
    compiled pass (``from_float_reference`` is the numpy form)."""
    codes = lanes.from_float(x, fmt.frac_bits, np.ldexp(1.0, fmt.int_bits + 1), fmt.min_code, fmt.max_code)
    if codes is None:
        raise EdgeDFAError("input has NaN values")
    return codes


def from_float_reference(x, fmt: FixedFormat) -> np.ndarray:
    """``from_float`` in numpy, one operation at a time."""
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise EdgeDFAError("input has NaN values")
    span = np.ldexp(1.0, fmt.int_bits + 1)
    y = np.ldexp(np.clip(x, -span, span), fmt.frac_bits)  # exact power-of-two scaling
    f = np.floor(y)
    r = y - f
    up = (r > 0.5) | ((r == 0.5) & (np.mod(f, 2) == 1))
    return saturate((f + up).astype(np.int64), fmt, Overflow.AP_SAT)
