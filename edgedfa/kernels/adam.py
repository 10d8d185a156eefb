"""Adam's update of one parameter tensor (datapath §12) in compiled passes, bit-identical to the
numpy reference ``update.adam_update_reference``.

One call narrows the gradient, moves both moment registers, derives each lane's shift from
the leading one of ``v``, rounds ``m`` by it (stochastic words generated in the loop, §5) and
saturates into the parameter's format, in three passes over memory (one thread: the lanes
are cheap, and a parallel region stalls whenever another process holds a core). The passes
are branch-free where they can be (rounding terms worked out once per pass, the moment
registers' presence read up to their first non-zero code), so that they vectorise. Inputs the
compiled passes do not model exactly (codes near the int64 rails, a left shift that would
overflow) return ``None``: the caller then runs the reference, which computes or raises as it
always did.
"""

from __future__ import annotations

import numba
import numpy as np

from ..fixed import Overflow, Rounding
from ..prng import key32
from ..rounding import bitlen as _bitlen
from ..rounding import inner
from ..rounding import mix32 as _mix32
from ..rounding import overflow_one as _overflow
from ..rounding import round_shift_one as _round_shift

ROUNDING_CODES = {r: i for i, r in enumerate(Rounding)}
OVERFLOW_CODES = {o: i for i, o in enumerate(Overflow)}
_STOCHASTIC = ROUNDING_CODES[Rounding.STOCHASTIC]
_SAFE = 1 << 62  # codes of magnitude below this never wrap in the reference's numpy passes


def adam_step(p_codes, p_fmt, g_codes, g_frac: int, m_old, v_old, lr_shift: int, num, stream, step: int):
    """(new codes, (m codes, m frac), (v codes, v frac), #clipped, #rounded to zero), or None
    when the reference must run; ``m_old``/``v_old`` are (codes, frac) pairs or None."""
    shape = np.shape(g_codes)
    if np.shape(p_codes) != shape or any(o is not None and np.shape(o[0]) != shape for o in (m_old, v_old)):
        return None
    if not all(abs(int(x)) < 1 << 40 for x in (g_frac, lr_shift, p_fmt.frac_bits, *_fracs(m_old, v_old))):
        return None
    g = _flat(g_codes)
    if g.size >= 1 << 32:
        return None
    width, signed = p_fmt.width, p_fmt.signed
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    overflow = Overflow.parse(num.weight_overflow)
    if overflow is Overflow.AP_SAT_SYM and signed:
        lo = -hi
    rounding = Rounding.parse(num.update_rounding)
    key = key32(stream.seed, stream.stream, step) if rounding is Rounding.STOCHASTIC else 0
    m0, mf0, has_m = _old(m_old, g)
    v0, vf0, has_v = _old(v_old, g)
    out = np.empty((3, g.size), dtype=np.int64)
    status, mf, vf, clipped, zeroed = _adam(
        g, int(g_frac), m0, mf0, has_m, v0, vf0, has_v, int(num.moment_bits),
        _warmup(num.beta1_shift, step), _warmup(num.beta2_shift, step), int(lr_shift),
        _flat(p_codes), int(p_fmt.frac_bits), ROUNDING_CODES[rounding], key,
        lo, hi, OVERFLOW_CODES[overflow], width, out)
    if status:
        return None
    new, m, v = (a.reshape(shape) for a in out)
    return new, (m, int(mf)), (v, int(vf)), int(clipped), int(zeroed)


def _fracs(*olds):
    return [o[1] for o in olds if o is not None]


def _flat(codes) -> np.ndarray:
    return np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)


def _old(old, g):
    """(codes, frac, present) of a moment register; the kernel treats an all-zero one as
    absent (§12: absent counts as zero)."""
    if old is None:
        return g[:0], 0, False
    return _flat(old[0]), int(old[1]), True


def _warmup(shift: int, step: int) -> int:
    """min(shift, floor(log2(step + 1))), as ``update.warmup_shift``."""
    return min(int(shift), (int(step) + 1).bit_length() - 1)


@inner()
def _rne_terms(s):
    """(mask, base, odd) of a round to nearest even by a fixed s >= 0 bits (``rounding._carry_terms``
    of AP_RND_CONV; all zero for s = 0, which leaves a code as it is): worked out once per pass."""
    if s == 0:
        return np.int64(0), np.int64(0), np.int64(0)
    return (np.int64(1) << s) - 1, (np.int64(1) << (s - 1)) - 1, np.int64(1)


@inner()
def _rne(x, s, mask, base, odd):
    """x rounded to nearest even by s bits, with ``_rne_terms(s)``: no branch, so a pass over a
    tensor vectorises."""
    q = x >> s
    return q + (((x & mask) + base + odd * (q & 1)) >> s)


@inner()
def _shl(x, s):
    """``rounding.lshift`` (x << s, 0 from 64 bits on) without a branch."""
    return (x << min(s, 63)) * (s < 64)


@inner()
def _narrow_shift(mx, bits):
    """``update.narrow_frac``'s shift for max|x| = mx: keep the top ``bits`` bits."""
    return max(0, _bitlen(mx) - (bits - 1))


@inner()
def _clamp(x, bits):
    lim = (np.int64(1) << (bits - 1)) - 1
    return min(max(x, -lim - 1), lim)


_MIN64 = -(1 << 63)


@inner()
def _first_pass(g, m, has_m, v, has_v):
    """(max|g|, #codes of g at or beyond +-2^62, whether m and v hold a non-zero code): the
    gradient's exponent, the codes whose numpy passes could wrap (the reference then runs),
    and whether each moment register is present (§12: an all-zero one counts as absent)."""
    mx = 0
    bad = 0
    for i in range(g.size):
        x = g[i]
        bad += (x >= _SAFE) | (x <= -_SAFE)
        mx = max(mx, abs(x))
    return mx, bad, has_m and _any(m), has_v and _any(v)


@inner()
def _any(x):
    """Whether x holds a non-zero code (reads up to the first one)."""
    for i in range(x.size):
        if x[i] != 0:
            return True
    return False


@inner()
def _moments(g, sg, bits, m_old, mof, has_m, mf, b1, v_old, vof, has_v, vf, b2, gf2, out):
    """Narrowed gradient and both moment EMAs before their narrowing (``update.ema``), in
    out[1] and out[2]; (max|m|, max|v|, #codes at -2^63)."""
    mx_m = 0
    mx_v = 0
    bad = 0
    gmask, gbase, godd = _rne_terms(sg)
    mmask, mbase, modd = _rne_terms(b1)
    vmask, vbase, vodd = _rne_terms(b2)
    sm_old, sv_old = (mf - mof) * has_m, (vf - vof) * has_v  # every shift >= 0
    sm_g, sv_g = mf - gf2, vf - 2 * gf2
    m_in = m_old if has_m else g  # read (times 0) when absent: one loop either way
    v_in = v_old if has_v else g
    for i in range(g.size):
        gc = _clamp(_rne(g[i], sg, gmask, gbase, godd), bits)
        a = _shl(m_in[i], sm_old) * has_m
        dm = a + _rne(_shl(gc, sm_g) - a, b1, mmask, mbase, modd)
        a = _shl(v_in[i], sv_old) * has_v
        dv = a + _rne(_shl(gc * gc, sv_g) - a, b2, vmask, vbase, vodd)
        out[1, i] = dm
        out[2, i] = dv
        bad += (dm == _MIN64) + (dv == _MIN64)
        mx_m = max(mx_m, abs(dm))
        mx_v = max(mx_v, abs(dv))
    return mx_m, mx_v, bad


@numba.njit(cache=True)
def _adam(g, gf, m_old, mof, has_m, v_old, vof, has_v, bits, b1, b2, lr_shift, p, pfrac, rmode, key,
          lo, hi, omode, width, out):
    """The whole §12 Adam step of one tensor in three passes over memory (max|g| with the
    checks of its codes and of the moments' presence; both moment EMAs; their narrowing and
    the parameter step): out rows are new p, m, v codes. Status 1 where the numpy reference
    would differ."""
    mx, bad, has_m, has_v = _first_pass(g, m_old, has_m, v_old, has_v)
    sg = _narrow_shift(mx, bits)
    if bad or sg > 62:
        return 1, 0, 0, 0, 0
    gf2 = gf - sg
    mf = max(mof, gf2) if has_m else gf2
    vf = max(vof, 2 * gf2) if has_v else 2 * gf2
    # every operand aligned to the finer fraction stays within 62 bits (moment codes of ``bits``
    # bits, the narrowed gradient and its square from max|g|), or the reference takes the sum
    # on Python integers (``update.ema``)
    gmax = min((mx >> sg) + 1, np.int64(1) << (bits - 1))
    if max(bits + (mf - mof) * has_m, _bitlen(gmax) + mf - gf2, bits + (vf - vof) * has_v,
           _bitlen(gmax * gmax) + vf - 2 * gf2) > 62:
        return 1, 0, 0, 0, 0
    mx_m, mx_v, bad = _moments(g, sg, bits, m_old, mof, has_m, mf, b1, v_old, vof, has_v, vf, b2, gf2, out)
    sm, sv = _narrow_shift(mx_m, bits), _narrow_shift(mx_v, bits)
    if bad or sm > 62 or sv > 62:
        return 1, 0, 0, 0, 0
    return _apply_steps(out, sm, sv, bits, mf - sm, vf - sv, lr_shift, p, pfrac, rmode, key, lo, hi, omode, width)


@inner()
def _apply_steps(out, sm, sv, bits, mf, vf, lr_shift, p, pfrac, rmode, key, lo, hi, omode, width):
    """Narrow both moments, then each lane's step m / 2^k (2^k nearest sqrt(v)), rounded,
    subtracted and saturated."""
    clipped = 0
    zeroed = 0
    failed = 0
    mmask, mbase, modd = _rne_terms(sm)
    vmask, vbase, vodd = _rne_terms(sv)
    for i in range(out.shape[1]):
        x = _clamp(_rne(out[1, i], sm, mmask, mbase, modd), bits)
        v = _clamp(_rne(out[2, i], sv, vmask, vbase, vodd), bits)
        out[1, i] = x
        out[2, i] = v
        sh = min(max(lr_shift + mf + ((_bitlen(v) - vf) >> 1) - pfrac, -16), 62)
        # sh <= 0: x << -sh, where the reference raises on a left shift that overflows (then let it)
        lim = np.int64(1) << min(63 + sh, 62)
        failed += (sh < 0) & ((x >= lim) | (x < -lim))
        left = x << max(-sh, 0)
        s = max(sh, 1)  # sh > 0: x rounded by sh bits
        if rmode == _STOCHASTIC:  # floor((x + r) / 2^s), r the top s bits of the lane's word
            word = _mix32(key ^ i)
            r = (word >> max(32 - s, 0)) if s <= 32 else (word << max(s - 32, 0))
            right = (x >> s) + (((x & ((np.int64(1) << s) - 1)) + r) >> s)
        else:
            right = _round_shift(x, s, rmode, 0)
        step = left if sh <= 0 else right
        delta = step if v > 0 else 0
        raw = p[i] - delta
        new = _overflow(raw, lo, hi, omode, width)
        clipped += new != raw
        zeroed += (delta == 0) & (x != 0)
        out[0, i] = new
    if failed:
        return 1, 0, 0, 0, 0
    return 0, mf, vf, clipped, zeroed
