"""The shifter, rounder and saturator lanes over a whole tensor in compiled loops: the same
integers as the units' numpy forms (which stay as the reference), one pass per register
instead of one numpy pass per operation. The units call these only where every shift is
in 0..62 (``fits``); anything else takes the numpy form.

Mode codes: rounding ``ROUNDING`` (the order of ``requant_unit._up``, STOCHASTIC last),
overflow ``SATURATE``, ``WRAP``, ``SAT_ZERO`` (AP_SAT_SYM is a saturation with lo = -hi).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from edgedfa.fixed import FixedFormat, Overflow, Rounding

ROUNDING = {r: i for i, r in enumerate((Rounding.AP_TRN, Rounding.AP_TRN_ZERO, Rounding.AP_RND,
                                        Rounding.AP_RND_ZERO, Rounding.AP_RND_MIN_INF, Rounding.AP_RND_INF,
                                        Rounding.AP_RND_CONV, Rounding.STOCHASTIC))}
STOCHASTIC, RND_CONV = ROUNDING[Rounding.STOCHASTIC], ROUNDING[Rounding.AP_RND_CONV]
SATURATE, WRAP, SAT_ZERO = 0, 1, 2
MASK32 = np.uint64(0xFFFFFFFF)


def fits(*shifts) -> bool:
    """Every shift amount is one a 64-bit lane takes without a special case."""
    return all(0 <= int(s) <= 62 for s in shifts)


def overflow_mode(fmt: FixedFormat, overflow) -> tuple:
    """(mode, lo, hi) of the saturator for ``fmt`` (§3)."""
    overflow = Overflow.parse(overflow)
    w = fmt.width
    lo = -(1 << (w - 1)) if fmt.signed else 0
    hi = (1 << (w - 1)) - 1 if fmt.signed else (1 << w) - 1
    if overflow is Overflow.AP_WRAP:
        return WRAP, lo, hi
    if overflow is Overflow.AP_SAT_ZERO:
        return SAT_ZERO, lo, hi
    if overflow is Overflow.AP_SAT_SYM and fmt.signed:
        return SATURATE, -hi, hi
    return SATURATE, lo, hi


def maxabs(x) -> int:
    """max |x| of an integer array (0 when empty), |x| wrapping at the int64 rail as numpy's does."""
    x = np.asarray(x)
    if not x.size:
        return 0
    if x.dtype != np.int64:
        return int(np.max(np.abs(x)))
    return int(_maxabs(np.ravel(x, order="K")))


@numba.njit(cache=True)
def _maxabs(x):
    top = np.int64(-9223372036854775807) - 1
    for i in range(x.size):
        v = x[i]
        a = v if v >= 0 else -v
        if a > top:
            top = a
    return top


@numba.njit(cache=True, inline="always")
def _mix32(x):
    x = x & np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    return x ^ (x >> np.uint64(16))


@numba.njit(cache=True, inline="always")
def _round_up(q, r, x, s, mode):
    """The carry of a right shift by s >= 1 (requant_unit._up), modes 0..6."""
    h = np.int64(1) << (s - 1)
    if mode == 0:
        return 0
    if mode == 1:
        return 1 if (r != 0 and x < 0) else 0
    if mode == 2:
        return 1 if r >= h else 0
    if mode == 3:
        return 1 if (r > h or (r == h and x < 0)) else 0
    if mode == 4:
        return 1 if r > h else 0
    if mode == 5:
        return 1 if (r > h or (r == h and x >= 0)) else 0
    return 1 if (r > h or (r == h and (q & 1) == 1)) else 0


@numba.njit(cache=True, inline="always")
def _saturate(x, mode, lo, hi):
    if mode == 1:  # keep the low W bits: hi - lo is the mask 2^W - 1
        return ((x - lo) & (hi - lo)) + lo
    if x < lo or x > hi:
        if mode == 2:
            return 0
        return lo if x < lo else hi
    return x


def requant(x, s: int, rounding, ovf: tuple) -> tuple:
    """(codes, max |x|) of a right shift by s in 0..62 with a deterministic rounding and the
    saturator ``ovf`` (``overflow_mode``): the requantizer and its max tracker in one pass."""
    xc = np.ascontiguousarray(x, dtype=np.int64)
    if not xc.size:
        return xc.copy(), 0
    out, top = _requant(xc.reshape(-1), int(s), ROUNDING[rounding], *ovf)
    return out.reshape(xc.shape), int(top)


@numba.njit(cache=True)
def _requant(x, s, mode, ovf, lo, hi):
    out = np.empty_like(x)
    top = np.int64(-9223372036854775807) - 1  # |INT64_MIN| wraps, as in _maxabs
    mask = (np.int64(1) << s) - 1
    h = (np.int64(1) << s) >> 1  # the tie; s = 0 has no residual
    # the carry of each mode as loop-invariant selectors (branch-free, so the loop vectorises)
    on_gt = np.int64(2 <= mode <= 6)
    on_tie = np.int64(mode == 2)
    tie_neg, tie_pos, tie_odd = np.int64(mode == 3), np.int64(mode == 5), np.int64(mode == 6)
    any_neg = np.int64(mode == 1)
    span = hi - lo
    for i in range(x.size):
        v = x[i]
        a = v if v >= 0 else -v
        top = max(top, a)
        q = v >> s
        r = v & mask
        neg = np.int64(v < 0)
        tie = on_tie | (tie_neg & neg) | (tie_pos & (1 - neg)) | (tie_odd & (q & 1))
        up = (on_gt & np.int64(r > h)) | (np.int64(r == h) & tie) | (any_neg & neg & np.int64(r != 0))
        v = q + (up & np.int64(s > 0))
        sat = min(max(v, lo), hi)
        out[i] = (((v - lo) & span) + lo) if ovf == 1 else (sat if (ovf == 0 or sat == v) else 0)
    return out, top


def from_float(x, frac: int, span: float, lo: int, hi: int):
    """Codes of float x (host-side input conversion, §2): clip to +-span, scale by 2^frac,
    round to nearest even, saturate to lo..hi; None when x holds a NaN."""
    xc = np.ascontiguousarray(x, dtype=np.float64)
    out, nan = _from_float(xc.reshape(-1), np.float64(span), np.float64(np.ldexp(1.0, int(frac))), int(lo), int(hi))
    return None if nan else out.reshape(xc.shape)


@numba.njit(cache=True)
def _from_float(x, span, scale, lo, hi):
    out = np.empty(x.size, dtype=np.int64)
    nan = False
    for i in range(x.size):
        v = x[i]
        nan |= v != v
        y = min(max(v, -span), span) * scale  # a power of two: exact, as ldexp
        f = np.floor(y)
        r = y - f
        q = np.int64(f) if f == f else np.int64(0)  # |f| <= 2^49: exact
        q += np.int64(r > 0.5) | (np.int64(r == 0.5) & (q & 1))
        out[i] = min(max(q, lo), hi)
    return out, nan


def round_clamp(x, d: int, lim: int) -> np.ndarray:
    """round(x · 2^-d) to nearest even, clamped to -lim-1..lim (a moment register's narrowing)."""
    return _round_clamp(np.ascontiguousarray(x, dtype=np.int64).reshape(-1), int(d), int(lim)).reshape(np.shape(x))


@numba.njit(cache=True)
def _round_clamp(x, d, lim):
    out = np.empty_like(x)
    mask, half, on = _rne_terms(d)
    for i in range(x.size):
        out[i] = _clamp(_rne(x[i], d, mask, half, on), lim)
    return out


@numba.njit(cache=True, inline="always")
def _rne_terms(s):
    """(mask, half, carry enable) of a right shift by s in 0..62 to nearest even, taken out of the loops."""
    return (np.int64(1) << s) - 1, (np.int64(1) << s) >> 1, np.int64(s > 0)


@numba.njit(cache=True, inline="always")
def _rne(v, s, mask, half, on):
    """round(v · 2^-s) to nearest even without a branch (s = 0: on = 0, v itself)."""
    q = v >> s
    r = v & mask
    return q + ((np.int64(r > half) | (np.int64(r == half) & (q & 1))) & on)


@numba.njit(cache=True, inline="always")
def _clamp(v, lim):
    return min(max(v, -lim - 1), lim)


@numba.njit(cache=True, inline="always")
def _moment_one(o, n, a, b, k, mask, half, on):
    """old·2^a + round_conv((n·2^b - old·2^a) · 2^-k): one lane of a moment register's sum."""
    oa = o << a
    return oa + _rne((n << b) - oa, k, mask, half, on)


def any_nonzero(x) -> bool:
    """Whether an integer register holds a non-zero code (stops at the first)."""
    x = np.asarray(x)
    if x.dtype != np.int64:
        return bool(np.any(x))
    return bool(_any_nonzero(np.ravel(x, order="K")))


@numba.njit(cache=True)
def _any_nonzero(x):
    for i in range(x.size):
        if x[i] != 0:
            return True
    return False


class Moment(NamedTuple):
    """A moment register's update plan: old codes (None: zero), shifts a, b, k of ``_moment_one``."""

    old: np.ndarray | None
    a: int
    b: int
    k: int


def _old(r: Moment, n: int) -> np.ndarray:
    """The old register's codes, flat (zeros when absent)."""
    return np.zeros(n, np.int64) if r.old is None else np.ascontiguousarray(r.old, dtype=np.int64).reshape(-1)


@numba.njit(cache=True, inline="always")
def _exact_sums(gi, mi, vi, d, lim, am, bm, km, av, bv, kv, terms):
    """One lane's exact m and v sums (``_moment_one``) from its gradient narrowed by d;
    ``terms``: the ``_rne_terms`` of d, km and kv."""
    gt, mt, vt = terms
    gc = _clamp(_rne(gi, d, gt[0], gt[1], gt[2]), lim)
    return (_moment_one(mi, gc, am, bm, km, mt[0], mt[1], mt[2]),
            _moment_one(vi, gc * gc, av, bv, kv, vt[0], vt[1], vt[2]))


def moment_sums(g, d: int, lim: int, m: Moment, v: Moment) -> tuple:
    """(exact sums [2, size], max |m sum|, max |v sum|) of §12's moment registers in one pass:
    old·2^a + round_conv((n·2^b - old·2^a) · 2^-k), n the gradient narrowed to
    round_clamp(g, d, lim) (squared for v); ``adam_step`` narrows them in place."""
    gf = np.ascontiguousarray(g, dtype=np.int64).reshape(-1)
    sums, top_m, top_v = _moment_sums(gf, int(d), int(lim), _old(m, gf.size), m.a, m.b, m.k, _old(v, gf.size),
                                      v.a, v.b, v.k)
    return sums, int(top_m), int(top_v)


@numba.njit(cache=True)
def _moment_sums(g, d, lim, mo, am, bm, km, vo, av, bv, kv):
    sums = np.empty((2, g.size), dtype=np.int64)
    top_m = np.int64(0)
    top_v = np.int64(0)
    terms = (_rne_terms(d), _rne_terms(km), _rne_terms(kv))
    for i in range(g.size):
        tm, tv = _exact_sums(g[i], mo[i], vo[i], d, lim, am, bm, km, av, bv, kv, terms)
        top_m = max(top_m, abs(tm))
        top_v = max(top_v, abs(tv))
        sums[0, i] = tm
        sums[1, i] = tv
    return sums, top_m, top_v


def adam_step(p, sums, lim: int, dm: int, dv: int, m_frac: int, v_frac: int, lr_minus_frac: int, rounding: int,
              key: int, ovf: tuple) -> tuple:
    """(new parameter codes, saturated count, max |new code|) of §12's last stage, lane by lane:
    both moment sums narrowed by dm, dv in place (the new registers, F_m and F_v), the shift
    s = clip(lr + F_m + floor((lod(v) - F_v) / 2) - F_p, -16, 62), round(m · 2^-s) with the
    element's PRNG word when STOCHASTIC, subtracted where v > 0, saturated."""
    shape = np.shape(p)
    new, count, top = _adam_step(np.ascontiguousarray(p, dtype=np.int64).reshape(-1), sums, int(lim), int(dm),
                                   int(dv), int(m_frac), int(v_frac), int(lr_minus_frac), int(rounding),
                                   np.uint64(key), *ovf)
    return new.reshape(shape), int(count), int(top)


@numba.njit(cache=True)
def _adam_step(p, sums, lim, dm, dv, m_frac, v_frac, lr_minus_frac, mode, key, ovf, lo, hi):
    """Each lane's step without a branch on its data (the lanes vectorise): both shift
    directions are formed and one kept; a lane whose v is not positive steps by nothing."""
    out = np.empty_like(p)
    count = 0
    top = np.int64(0)  # the exponent unit's max tracker on the update unit's output (§13)
    m2, mh2, mon2 = _rne_terms(dm)
    v2, vh2, von2 = _rne_terms(dv)
    for i in range(p.size):
        x = _clamp(_rne(sums[0, i], dm, m2, mh2, mon2), lim)
        vi = _clamp(_rne(sums[1, i], dv, v2, vh2, von2), lim)
        sums[0, i] = x
        sums[1, i] = vi
        lod = np.int64(64 - leading_zeros(max(vi, np.int64(1))))  # the leading-one detector
        s = min(max(lr_minus_frac + m_frac + ((lod - v_frac) >> 1), -16), 62)
        left = x << max(-s, 0)
        sr = max(s, 1)
        q = x >> sr
        r = x & ((np.int64(1) << sr) - 1)
        if mode == 7:  # the same for every lane: the compiler takes it out of the loop
            w = np.int64(_mix32(key ^ (np.uint64(i) & np.uint64(0xFFFFFFFF))))
            u = (w >> max(32 - sr, 0)) if sr <= 32 else (w << max(sr - 32, 0))
            right = q + ((r + u) >> sr)
        else:
            right = q + _round_up(q, r, x, sr, mode)
        delta = (left if s <= 0 else right) * (vi > 0)
        raw = p[i] - delta
        new = _saturate(raw, ovf, lo, hi)
        out[i] = new
        count += new != raw
        top = max(top, new if new >= 0 else -new)  # saturated into a format of <= 62 bits: no wrap
    return out, count, top


def rom_gate(q, s_addr: int, rom, s_out: int, sigmoid: bool, rounding: int, lo: int, hi: int):
    """The activation unit's interpolated tanh / sigmoid (§9.2) over a tensor in one pass: |q|
    to a 19-bit ROM address (a shift by ``s_addr``, negative for a left shift; AP_RND, AP_SAT),
    the interpolation between two words (26 fraction bits), then tanh's sign, or sigmoid's
    1 ± y, shifted right by ``s_out`` (0..62, deterministic ``rounding``) and saturated to
    lo..hi. None where a shift is out of a lane's range (the caller takes the numpy form)."""
    if not (-62 <= s_addr <= 62 and fits(s_out)) or rounding == STOCHASTIC:
        return None
    qc = np.ascontiguousarray(q, dtype=np.int64)
    return _rom_gate(qc.reshape(-1), int(s_addr), rom, int(s_out), bool(sigmoid), int(rounding), int(lo),
                     int(hi)).reshape(qc.shape)


WIDE_BITS = 60  # ⊕ aligns to the finest fraction that keeps every term below 2^60 (§9.6)
ADDR_HI, ADDR_WIDTH, SEG_BITS, INTERP_FRAC = (1 << 19) - 1, 19, 9, 26  # activation_unit's ROM address


@numba.njit(cache=True, inline="always")
def _shift_saturate(v, s, mode, lo, hi):
    """round(v · 2^-s) (s in 0..62, modes 0..6), saturated to lo..hi."""
    if s > 0:
        q = v >> s
        v = q + _round_up(q, v & ((np.int64(1) << s) - 1), v, s, mode)
    return min(max(v, lo), hi)


@numba.njit(cache=True)
def _rom_gate(q, s_addr, rom, s_out, sigmoid, mode, lo, hi):
    out = np.empty_like(q)
    t = max(-s_addr, 0)
    t_eff = min(t, ADDR_WIDTH + 1)  # requant_unit._left_into: past w+1 bits only the side is kept
    cap = np.int64(1) << (ADDR_WIDTH + 1 - t_eff)
    one = np.int64(1) << INTERP_FRAC
    for i in range(q.size):
        x = q[i]
        m = x if x >= 0 else -x
        if s_addr >= 0:
            u = _shift_saturate(m, s_addr, 2, 0, ADDR_HI)
        else:
            u = min(max(min(max(m, -cap), cap) << t_eff, 0), ADDR_HI)
        k = u >> SEG_BITS
        y = rom[k] * (np.int64(1) << SEG_BITS) + (rom[k + 1] - rom[k]) * (u & ((np.int64(1) << SEG_BITS) - 1))
        if sigmoid:
            out[i] = _shift_saturate(one + y if x >= 0 else one - y, s_out, mode, lo, hi)
        else:
            r = _shift_saturate(y, s_out, mode, lo, hi)
            out[i] = -r if x < 0 else r
    return out




def oplus2(a, fa: int, b, fb: int, rounding: int) -> tuple | None:
    """a ⊕ b (§9.6) of two same-shaped integer matrices in one compiled pass: (codes, fraction),
    (None, None) when both are zero, or None where the numpy form must run (a STOCHASTIC
    rounding, a right shift past 62, a code at -2^63 to be shifted left)."""
    if rounding == STOCHASTIC:
        return None
    out = np.empty(a.shape, dtype=np.int64)
    f, live, ok = _oplus2(a, int(fa), b, int(fb), int(rounding), out)
    if not ok:
        return None
    return (out, int(f)) if live else (None, None)


@numba.njit(cache=True, inline="always")
def _measure(a):
    """(max |a| wrapping at -2^63 as numpy's abs, any code non-zero, any code at -2^63)."""
    int64_min = np.int64(-9223372036854775807) - 1
    top = int64_min
    nz = False
    rail = False
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            nz |= v != 0
            rail |= v == int64_min
            top = max(top, v if v >= 0 else -v)
    return top, nz, rail


@numba.njit(cache=True, inline="always")
def _align_shift(fa, f, rail):
    """The shift bringing a live term at fraction fa to f, and whether a lane takes it."""
    s = fa - f
    return s, not (s > 62 or (s < 0 and rail))


@numba.njit(cache=True, inline="always")
def _aligned(v, s, mode):
    if s <= 0:
        return v << -s  # never past 2^60: the common fraction keeps every term below it
    q = v >> s
    return q + _round_up(q, v & ((np.int64(1) << s) - 1), v, s, mode)


@numba.njit(cache=True)
def _oplus2(a, fa, b, fb, mode, out):
    """(fraction, any term live, every shift one a lane takes); out = the aligned sum of the
    live terms. The common fraction is the finest among the live terms unless one aligned
    there reaches 2^60 (layers/recurrent.common_frac)."""
    ta, la, ra = _measure(a)
    tb, lb, rb = _measure(b)
    if not (la or lb):
        return 0, False, True
    f = max(fa if la else fb, fb if lb else fa)
    if la:
        f = min(f, fa + WIDE_BITS - (64 - leading_zeros(ta) if ta != 0 else 0))
    if lb:
        f = min(f, fb + WIDE_BITS - (64 - leading_zeros(tb) if tb != 0 else 0))
    sa, oka = _align_shift(fa, f, ra)
    sb, okb = _align_shift(fb, f, rb)
    if (la and not oka) or (lb and not okb):
        return f, True, False
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = (_aligned(a[i, j], sa, mode) if la else 0) + (_aligned(b[i, j], sb, mode) if lb else 0)
    return f, True, True
