"""Adam's update of one parameter tensor (datapath §12) in compiled passes, bit-identical to the
numpy reference ``update.adam_update_reference``.

One call narrows the gradient, moves both moment registers, derives each lane's shift from
the leading one of ``v``, rounds ``m`` by it (stochastic words generated in the loop, §5) and
saturates into the parameter's format. Inputs the compiled passes do not model exactly
(codes near the int64 rails, a left shift that would overflow) return ``None``: the caller
then runs the reference, which computes or raises as it always did.
"""

from __future__ import annotations

import numba
import numpy as np

from ..fixed import Overflow, Rounding
from ..prng import key32
from ..rounding import bitlen as _bitlen
from ..rounding import lshift as _lshift
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
    if g.size >= 1 << 32 or (g.size and (g.max() >= _SAFE or g.min() <= -_SAFE)):
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
    """(codes, frac, present-and-nonzero) of a moment register; absent counts as zero (§12)."""
    if old is None:
        return g[:0], 0, False
    codes = _flat(old[0])
    return codes, int(old[1]), bool(codes.any())


def _warmup(shift: int, step: int) -> int:
    """min(shift, floor(log2(step + 1))), as ``update.warmup_shift``."""
    return min(int(shift), (int(step) + 1).bit_length() - 1)


@numba.njit(cache=True)
def _conv(x, s):
    """Round to nearest even by s >= 0 bits."""
    return x if s == 0 else _round_shift(x, s, 6, 0)


@numba.njit(cache=True)
def _narrow(d, frac, bits, out):
    """``update.narrow_frac`` into ``out``: (status, frac); status 1 where numpy would differ."""
    mx = 0
    for x in d:
        if x == -(1 << 63):
            return 1, 0
        mx = max(mx, abs(x))
    s = max(0, _bitlen(mx) - (bits - 1))
    if s > 62:
        return 1, 0
    lim = (1 << (bits - 1)) - 1
    for i in range(d.size):
        out[i] = min(max(_conv(d[i], s), -lim - 1), lim)
    return 0, frac - s


@numba.njit(cache=True)
def _ema(old, of, has_old, new, nf, shift, bits, out):
    """``update.ema`` into ``out``: old + round(new - old) >> shift, then narrowed."""
    if not has_old:
        of = nf
    f = max(of, nf)
    d = np.empty(new.size, dtype=np.int64)
    for i in range(new.size):
        a = _lshift(old[i], f - of) if has_old else 0
        d[i] = a + _conv(_lshift(new[i], f - nf) - a, shift)
    return _narrow(d, f, bits, out)


@numba.njit(cache=True)
def _adam(g, gf, m_old, mof, has_m, v_old, vof, has_v, bits, b1, b2, lr_shift, p, pfrac, rmode, key,
          lo, hi, omode, width, out):
    """The whole §12 Adam step of one tensor: out rows are new p, m, v codes."""
    n = g.size
    gc = np.empty(n, dtype=np.int64)
    st, gf2 = _narrow(g, gf, bits, gc)
    if st:
        return st, 0, 0, 0, 0
    st, mf = _ema(m_old, mof, has_m, gc, gf2, b1, bits, out[1])
    if st:
        return st, 0, 0, 0, 0
    st, vf = _ema(v_old, vof, has_v, gc * gc, 2 * gf2, b2, bits, out[2])
    if st:
        return st, 0, 0, 0, 0
    return _apply_steps(out, mf, vf, lr_shift, p, pfrac, rmode, key, lo, hi, omode, width)


@numba.njit(cache=True)
def _apply_steps(out, mf, vf, lr_shift, p, pfrac, rmode, key, lo, hi, omode, width):
    """Each lane's step m / 2^k (2^k nearest sqrt(v)), rounded, subtracted and saturated."""
    m, v = out[1], out[2]
    clipped = zeroed = 0
    for i in range(m.size):
        sh = min(max(lr_shift + mf + ((_bitlen(v[i]) - vf) >> 1) - pfrac, -16), 62)
        x = m[i]
        if sh <= 0:  # the reference raises on a left shift that overflows: let it
            if sh < 0 and (x >= (np.int64(1) << (63 + sh)) or x < -(np.int64(1) << (63 + sh))):
                return 1, 0, 0, 0, 0
            step = x << -sh
        else:
            word = _mix32(key ^ i) if rmode == 7 else 0
            step = _round_shift(x, sh, rmode, word)
        delta = step if v[i] > 0 else 0
        raw = p[i] - delta
        new = _overflow(raw, lo, hi, omode, width)
        clipped += new != raw
        zeroed += delta == 0 and x != 0
        out[0, i] = new
    return 0, mf, vf, clipped, zeroed
