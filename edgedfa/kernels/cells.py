"""The time loops of the recurrent cells in compiled code (docs/datapath.md §9.6-9.7).

One numba call runs a direction's whole sequence: the recurrent GEMM through the
accumulator register (§4: init first, k ascending, the overflow after every addition
unless a static bound proves none can happen), the exact wide sums of ``wide.add`` with
their data-dependent ``common_frac`` (2^60 rule), the table unit of ``lut`` and every
requantization through ``rounding.requantize_one``. Bit-identical to the Python cells of
``layers/recurrent.py`` (the reference); a step whose shifts leave what the compiled code
covers (a right shift beyond 62 bits, where the reference raises) returns a failure code
and the caller runs the reference instead.

Format parameters come in small int64 arrays, indexed by the constants below.
"""

from __future__ import annotations

import numba
import numpy as np

from ..lut import INTERP_BITS, INTERP_FRAC, LUT_IN_FMT
from ..rounding import _carry_terms, _rounded, bitlen, inner, observe_counts, overflow_one, requantize_one
from ..wide import WIDE_BITS
from .acc import step

I64, BOOL, VOID = numba.int64, numba.boolean, numba.void
MAT, VEC = numba.int64[:, ::1], numba.int64[::1]  # C-contiguous int64 codes
# Explicit signatures: one compilation each (literal arguments would otherwise compile
# variants), done when this module is first imported (layers/cell_loops.py imports it lazily).
FAIL = -(1 << 40)  # a fraction no real tensor has: the compiled loop cannot take this step
AP_RND, AP_SAT = 2, 0  # fixed.Rounding / fixed.Overflow codes of rounding.py
LUT_FRAC, LUT_HI, LUT_WIDTH = LUT_IN_FMT.frac_bits, LUT_IN_FMT.max_code, LUT_IN_FMT.width
MAX_RIGHT = 62  # the longest right shift fixed.round_shift takes

# fmt[...]: gate format, state format, rounding and overflow modes of the forward pass
G_FRAC, G_LO, G_HI, G_WIDTH, H_FRAC, H_LO, H_HI, H_WIDTH, RND, OVF = range(10)
# acc[...]: the accumulator register (kernels.acc.register_mode) and whether a bound proved it exact
A_LO, A_HI, A_MODE, A_BITS, A_EXACT = range(5)


# --------------------------------------------------------------------------- the table unit (§9.2-9.3)

@inner(VOID(MAT, I64, I64, VEC, MAT))
def table_unit(pre, frac, sigmoid, table, u):
    """u = ``lut._tanh_magnitude`` of |pre| (``frac`` fraction bits; sigmoid: read as pre/2,
    then 1 ± that): the value the output rounding takes, with INTERP_FRAC (+1) fraction bits.
    Simple passes: fused into one loop with the gathers, the compiler vectorises badly."""
    s = frac + sigmoid - LUT_FRAC
    for i in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            u[i, j] = requantize_one(abs(pre[i, j]), s, AP_RND, 0, LUT_HI, AP_SAT, LUT_WIDTH)
    one = np.int64(1) << INTERP_FRAC
    for i in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            v = u[i, j]
            k = v >> INTERP_BITS
            lo = table[k]
            y = (lo << INTERP_BITS) + (table[k + 1] - lo) * (v & ((1 << INTERP_BITS) - 1))
            sign = pre[i, j] >> 63  # -1 when negative: y ^ sign - sign = -y, branch-free
            u[i, j] = one + ((y ^ sign) - sign) if sigmoid else y


@inner(VOID(MAT, I64, VEC, MAT, MAT, I64, I64, I64, I64, I64))
def sigmoid_block(pre, frac, table, u, out, gf, glo, ghi, gw, rnd):
    """out = ``lut.sigmoid_codes(pre)`` into the gate format (gf fraction bits, codes glo..ghi,
    gw bits, rounding rnd); u: scratch like pre."""
    table_unit(pre, frac, 1, table, u)
    for i in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            out[i, j] = requantize_one(u[i, j], INTERP_FRAC + 1 - gf, rnd, glo, ghi, AP_SAT, gw)


@inner(VOID(MAT, I64, VEC, MAT, MAT, I64, I64, I64, I64, I64))
def tanh_block(pre, frac, table, u, out, gf, glo, ghi, gw, rnd):
    """out = ``lut.tanh_codes(pre)`` into the gate format (exactly odd)."""
    table_unit(pre, frac, 0, table, u)
    for i in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            m = requantize_one(u[i, j], INTERP_FRAC - gf, rnd, glo, ghi, AP_SAT, gw)
            sign = pre[i, j] >> 63
            out[i, j] = (m ^ sign) - sign


@inner(BOOL(I64))
def lut_shift_ok(frac):
    """Whether a sum with ``frac`` fraction bits has a format and the table unit's input shift
    (sigmoid: one more) is one the reference takes."""
    return -64 <= frac <= 64 and frac + 1 - LUT_FRAC <= MAX_RIGHT


@inner(VOID(MAT, MAT))
def copy_into(src, dst):
    """dst[...] = src for 2-D arrays (an explicit loop compiles far faster than a slice store)."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@numba.njit(cache=True)
def requantize_block(src, shift, rnd, lo, hi, ovf, width, out):
    """out = ``fixed.requantize`` of a 2-D block by one shift (<= 62; none or a left shift too)."""
    if shift <= 0:
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                out[i, j] = requantize_one(src[i, j], shift, rnd, lo, hi, ovf, width)
        return
    base, odd, neg, pos = _carry_terms(shift, rnd)  # a right shift: the carry terms once per block
    mask = (np.int64(1) << shift) - 1
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            out[i, j] = overflow_one(_rounded(src[i, j], shift, mask, base, odd, neg, pos), lo, hi, ovf, width)


# --------------------------------------------------------------------------- exact wide sums (wide.py)

@inner(I64(MAT, I64, I64))
def block_max(a, c0, width):
    """max |a[:, c0:c0 + width]| (0 when every code is zero: the term is not live)."""
    m = np.int64(0)
    for i in range(a.shape[0]):
        for j in range(c0, c0 + width):
            m = max(m, abs(a[i, j]))
    return m


@inner(I64(VEC, VEC))
def common_frac(fracs, maxes):
    """``wide.common_frac`` over the live terms (max != 0); the first term's fraction when no
    term is live (``wide.total``'s zeros keep the first term's format); FAIL when aligning a
    term would take a right shift beyond 62 bits. Its callers sum at most three terms, where
    ``wide.sum_headroom`` is zero."""
    finest = np.int64(-(1 << 62))
    cap = np.int64(1 << 62)
    for t in range(fracs.size):
        if maxes[t] != 0:
            finest = max(finest, fracs[t])
            cap = min(cap, fracs[t] + WIDE_BITS - bitlen(maxes[t]))
    if finest == -(1 << 62):
        return fracs[0]
    frac = min(finest, cap)
    for t in range(fracs.size):
        if maxes[t] != 0 and fracs[t] - frac > MAX_RIGHT:
            return FAIL
    return frac


@numba.njit(cache=True, inline="always")
def align_one(v, shift, rmode):
    """``wide.align`` of one code: exact left shift, or rounded right shift (``rmode``)."""
    if shift == 0:
        return v
    if shift < 0:
        return v << -shift
    base, odd, neg, pos = _carry_terms(shift, rmode)
    return _rounded(v, shift, (np.int64(1) << shift) - 1, base, odd, neg, pos)


@inner(I64(MAT, I64, I64, MAT, I64, I64, MAT, I64))
def total2(a, ca, fa, b, cb, fb, out, rmode):
    """out = ``wide.total([a[:, ca:], b[:, cb:]])`` over out's width; returns its fraction
    (FAIL: not covered)."""
    width = out.shape[1]
    fracs = np.array([fa, fb], np.int64)
    maxes = np.array([block_max(a, ca, width), block_max(b, cb, width)], np.int64)
    frac = common_frac(fracs, maxes)
    if frac == FAIL:
        return FAIL
    sa, sb = fa - frac, fb - frac
    for i in range(out.shape[0]):
        for j in range(width):
            v = np.int64(0)
            if maxes[0] != 0:
                v += align_one(a[i, ca + j], sa, rmode)
            if maxes[1] != 0:
                v += align_one(b[i, cb + j], sb, rmode)
            out[i, j] = v
    return frac


# --------------------------------------------------------------------------- the recurrent GEMM (§4)

@inner()  # compiled for the operand type a run uses (int32 or int64), on first use
def _exact_gemm(a, rt, init, has_init, out, oc):
    """The plain sum, four rows at a time (each loaded row of rt serves four accumulators)."""
    m, n = a.shape[0], rt.shape[1]
    rows = np.zeros((4, n), rt.dtype)
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for i0 in range(0, m, 4):
        live = min(4, m - i0)
        for j in range(n):
            v = init[j] if has_init else 0
            r0[j] = v
            r1[j] = v
            r2[j] = v
            r3[j] = v
        for k in range(a.shape[1]):
            a0 = a[i0, k]
            a1 = a[i0 + 1, k] if live > 1 else 0
            a2 = a[i0 + 2, k] if live > 2 else 0
            a3 = a[i0 + 3, k] if live > 3 else 0
            rk = rt[k]
            for j in range(n):
                b = rk[j]
                r0[j] += a0 * b
                r1[j] += a1 * b
                r2[j] += a2 * b
                r3[j] += a3 * b
        for q in range(live):
            for j in range(n):
                out[i0 + q, oc + j] = rows[q, j]


@inner()  # callers pass no literal argument: one compilation per operand type
def recurrent_gemm(a, rt, init, has_init, out, oc, acc):
    """out[:, oc:oc + n] = a @ rt (+ init) as ``kernels.reference.gemm``: init first, k
    ascending, the register's overflow after every addition; with ``acc[A_EXACT]`` (a bound
    proved no partial sum leaves the register) the plain sum in rt's integer type.
    rt (K, n) and init (n,) are contiguous blocks of columns."""
    n = rt.shape[1]
    if acc[A_EXACT]:
        _exact_gemm(a, rt, init, has_init, out, oc)
        return
    lo, hi, mode, bits = acc[A_LO], acc[A_HI], acc[A_MODE], acc[A_BITS]
    wide = np.zeros(n, np.int64)
    for i in range(a.shape[0]):
        for j in range(n):
            wide[j] = step(np.int64(init[j]), lo, hi, mode, bits) if has_init else 0
        for k in range(a.shape[1]):
            aik = np.int64(a[i, k])
            rk = rt[k]
            for j in range(n):
                wide[j] = step(wide[j] + aik * np.int64(rk[j]), lo, hi, mode, bits)
        for j in range(n):
            out[i, oc + j] = wide[j]


# --------------------------------------------------------------------------- GRU forward (§9.6)

@numba.njit(cache=True)
def gru_forward(xg, fx, rt, rt_h, rb, rb_h, has_bias, acc, fr, lbr, fmt, table, hp, hs, zs, rs, ns, aux):
    """One direction of a GRU over the whole sequence (processing order).

    xg (T, N, 3H): the input terms X_t (``fx`` fraction bits); rt: R[d]^T's z, r columns
    (lbr 1: all three gates), rt_h its h columns (lbr 0); rb, rb_h: the recurrent bias of
    those columns in the accumulator (``fr`` = F_h + F_R fraction bits). Writes per step
    h_{t-1} (hp), h (hs), z, r, n and aux (lbr 0: r*h in h's format; lbr 1: Hh). Returns 0,
    or 1 when a step needs the reference (nothing written is then valid).
    """
    T, N, G3 = xg.shape
    H = G3 // 3
    gf, glo, ghi, gw = fmt[G_FRAC], fmt[G_LO], fmt[G_HI], fmt[G_WIDTH]
    hf, hlo, hhi, hw, rnd, ovf = fmt[H_FRAC], fmt[H_LO], fmt[H_HI], fmt[H_WIDTH], fmt[RND], fmt[OVF]
    h = np.zeros((N, H), np.int64)
    hb = np.zeros((N, H), rt.dtype)  # the GEMM's operand: h (or r*h) in the register's type
    hg = np.empty((N, G3), np.int64)
    pre = np.empty((N, H), np.int64)
    t1 = np.empty((N, H), np.int64)
    t2 = np.empty((N, H), np.int64)
    for s in range(T):
        x = xg[s]
        copy_into(h, hp[s])
        recurrent_gemm(hb, rt, rb, has_bias, hg, np.int64(0), acc)
        f = total2(x, 0, fx, hg, 0, fr, pre, rnd)
        if not lut_shift_ok(f):
            return 1
        sigmoid_block(pre, f, table, t1, zs[s], gf, glo, ghi, gw, rnd)
        f = total2(x, H, fx, hg, H, fr, pre, rnd)
        if not lut_shift_ok(f):
            return 1
        sigmoid_block(pre, f, table, t1, rs[s], gf, glo, ghi, gw, rnd)
        if lbr and not (-64 <= gf + fr <= 64):  # r * Hh has no format: the reference raises
            return 1
        if lbr:  # n = tanh(X_h + r * (h R_h + Rb_h))
            r, hh = rs[s], aux[s]
            for i in range(N):
                for j in range(H):
                    hh[i, j] = hg[i, 2 * H + j]
                    t1[i, j] = r[i, j] * hh[i, j]
            f = total2(x, 2 * H, fx, t1, 0, gf + fr, pre, rnd)
        else:  # n = tanh(X_h + (r * h) R_h + Rb_h), r * h in h's format
            r, rh = rs[s], aux[s]
            for i in range(N):
                for j in range(H):
                    v = requantize_one(r[i, j] * h[i, j], gf, rnd, hlo, hhi, ovf, hw)
                    rh[i, j] = v
                    hb[i, j] = v
            recurrent_gemm(hb, rt_h, rb_h, has_bias, hg, 2 * H, acc)
            f = total2(x, 2 * H, fx, hg, 2 * H, fr, pre, rnd)
        if not lut_shift_ok(f):
            return 1
        tanh_block(pre, f, table, t1, ns[s], gf, glo, ghi, gw, rnd)
        z, n = zs[s], ns[s]
        for i in range(N):
            for j in range(H):
                t1[i, j] = ((np.int64(1) << gf) - z[i, j]) * n[i, j]
                t2[i, j] = z[i, j] * h[i, j]
        f = total2(t1, 0, 2 * gf, t2, 0, gf + hf, pre, rnd)  # h' = (1 - z) n + z h
        if f == FAIL or not (-64 <= f <= 64) or f - hf > MAX_RIGHT:
            return 1
        for i in range(N):
            for j in range(H):
                v = requantize_one(pre[i, j], f - hf, rnd, hlo, hhi, ovf, hw)
                h[i, j] = v
                hb[i, j] = v
        copy_into(h, hs[s])
    return 0


# --------------------------------------------------------------------------- errors through time (§9.7)

NONE = -(1 << 41)  # the fraction of an error that is Python's None: absent, or all zero
TEN = numba.int64[:, :, ::1]


@inner(BOOL(I64))
def frac_ok(frac):
    """Whether a format with ``frac`` fraction bits exists (FixedFormat: |W - I| <= 64); the
    reference raises where it does not, so the compiled loop leaves such a step to it."""
    return -64 <= frac <= 64


@inner(I64(MAT, I64, I64, I64, I64, MAT, VEC))
def narrow_into(x, frac, bits, rnd, frac_max, out, tallies):
    """out = ``recurrent.narrow(x)``: the top ``bits`` under a dynamic exponent
    (``fixed.narrow_dynamic``, its values / clipped / rounded-to-zero added to ``tallies``),
    then no finer than ``frac_max``; returns the fraction, NONE when x or the result is all
    zero (no narrowing), FAIL when the format would not exist. x and out may be one array."""
    m = block_max(x, 0, x.shape[1])
    if m == 0:
        return NONE
    shift = max(0, bitlen(m) - (bits - 1))
    nf = frac - shift
    if not frac_ok(nf):
        return FAIL
    lim = (np.int64(1) << (bits - 1)) - 1
    clipped = zeroed = 0
    if shift == 0:
        copy_into(x, out)
    else:
        base, odd, neg, pos = _carry_terms(shift, rnd)
        mask = (np.int64(1) << shift) - 1
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                v = x[i, j]
                q = _rounded(v, shift, mask, base, odd, neg, pos)
                c = min(max(q, -lim - 1), lim)
                clipped += c != q
                zeroed += c == 0 and v != 0
                out[i, j] = c
    tallies[0] += x.size
    tallies[1] += clipped
    tallies[2] += zeroed
    if nf > frac_max:  # errors finer than 2^-frac_max are rounded there (fixed.ERR_FRAC_MAX)
        capped = 0
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                v = out[i, j]
                c = requantize_one(v, nf - frac_max, rnd, -lim - 1, lim, AP_SAT, bits)
                capped += c == 0 and v != 0
                out[i, j] = c
        tallies[2] += capped
        nf = frac_max
    return nf if block_max(out, 0, out.shape[1]) != 0 else NONE


@inner(I64(TEN, VEC, I64, MAT, I64))
def add_into(terms, fracs, count, out, rnd):
    """out = ``wide.add`` of the first ``count`` terms (a term whose fraction is NONE is None);
    returns its fraction, NONE when no term is live, FAIL when not covered."""
    maxes = np.zeros(count, np.int64)
    for t in range(count):
        if fracs[t] != NONE:
            maxes[t] = block_max(terms[t], 0, out.shape[1])
    if maxes.max() == 0:
        return NONE
    live = np.empty(count, np.int64)
    for t in range(count):
        live[t] = fracs[t]
    frac = common_frac(live, maxes)
    if frac == FAIL or not frac_ok(frac):
        return FAIL
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = 0
    for t in range(count):
        if maxes[t] != 0:
            shift = fracs[t] - frac
            term = terms[t]
            for i in range(out.shape[0]):
                for j in range(out.shape[1]):
                    out[i, j] += align_one(term[i, j], shift, rnd)
    return frac


@inner(I64(MAT, VEC, VEC, I64))
def cat_into(buf, starts, fracs, rnd):
    """``wide.cat`` in place: buf's column blocks starts[p]..starts[p+1] (zeros where the part
    is None: fraction NONE) aligned to one common fraction; returns it, NONE when no part is
    live, FAIL when not covered."""
    parts = fracs.size
    maxes = np.zeros(parts, np.int64)
    for p in range(parts):
        if fracs[p] != NONE:
            maxes[p] = block_max(buf, starts[p], starts[p + 1] - starts[p])
    if maxes.max() == 0:
        return NONE
    frac = common_frac(fracs.copy(), maxes)
    if frac == FAIL or not frac_ok(frac):
        return FAIL
    for p in range(parts):  # the reference aligns every part present, all-zero ones too
        if fracs[p] != NONE and fracs[p] - frac > MAX_RIGHT:
            return FAIL
    for p in range(parts):
        if maxes[p] != 0 and fracs[p] != frac:
            shift = fracs[p] - frac
            for i in range(buf.shape[0]):
                for j in range(starts[p], starts[p + 1]):
                    buf[i, j] = align_one(buf[i, j], shift, rnd)
    return frac


@inner(I64(MAT, I64, MAT, I64, TEN, VEC, MAT, MAT, I64, I64, I64, VEC))
def step_error(inj, inj_frac, carry, carry_frac, terms, tf, w, out, bits, rnd, fmax, tallies):
    """out = dh = N(inj_t + carry_h), the error at h entering a step (``Recurrent._run_chain``):
    its fraction, NONE or FAIL (terms, tf, w: scratch)."""
    copy_into(inj, terms[0])
    copy_into(carry, terms[1])
    tf[0], tf[1] = inj_frac, carry_frac
    f = add_into(terms, tf, 2, w, rnd)
    return f if f == NONE or f == FAIL else narrow_into(w, f, bits, rnd, fmax, out, tallies)


@inner(VOID(MAT, MAT, I64, I64, I64))
def derivative(y, out, frac, sigmoid, width):
    """``lut.dtanh_codes`` (1 - t^2, AP_RND into ap_ufixed<W,1>) or ``lut.dsigmoid_codes``
    (s (1 - s) into ap_ufixed<W,-1>) of gate codes y (``frac`` fraction bits)."""
    hi = (np.int64(1) << width) - 1
    one = np.int64(1) << frac
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            v = y[i, j]
            if sigmoid:
                out[i, j] = requantize_one(v * (one - v), frac - 2, AP_RND, 0, hi, AP_SAT, width)
            else:
                out[i, j] = requantize_one((one << frac) - v * v, frac, AP_RND, 0, hi, AP_SAT, width)


@inner()
def to_operand(src, c0, dst):
    """dst = src[:, c0:c0 + dst's width] in the GEMM's integer type."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, c0 + j]


@inner()
def error_gemm(a, c0, frac, buf, rt, rf, acc, out):
    """out = gemm(a[:, c0:], rt) through the backward register (no init); returns the product's
    fraction (``frac`` + rf), FAIL when its format would not exist."""
    if not frac_ok(frac + rf):
        return FAIL
    to_operand(a, c0, buf)
    recurrent_gemm(buf, rt, np.zeros(0, np.int64), np.bool_(False), out, np.int64(0), acc)
    return frac + rf


@numba.njit(cache=True)
def gru_chain(start, stop, carry, lbr, inj, inj_frac, zs, rs, ns, hp, hh, hh_frac, rt_all, rt_zr, rt_h, rf,
              acc, fmt, err, reached, dA, fa, dR, fr, tallies):
    """One BPTT chain of a GRU direction (``Recurrent._run_chain`` with ``GRU.cell_back``), from
    step ``start`` down to ``stop``: marks the steps an error reached (``reached``), writes
    their dA, dR (codes and fraction, NONE: None) and adds the narrowings to ``tallies``;
    returns 0, or 1 when a step needs the reference.

    inj (T, N, H) with inj_frac (NONE: nothing injected at that step); records z, r, n, h_{t-1}
    (hp) and Hh (hh, lbr 1) of the forward pass; rt_all = R[d], rt_zr / rt_h its z, r and h
    rows (lbr 0), rf = F_R, in the backward register's integer type; err = [state error
    width, error rounding, finest error fraction].
    """
    T, N, H = zs.shape
    gf, gw, hf = fmt[G_FRAC], fmt[G_WIDTH], fmt[H_FRAC]
    bits, rnd, fmax = err[0], err[1], err[2]
    terms = np.zeros((3, N, H), np.int64)
    tf = np.empty(3, np.int64)
    dh, w, dah, dq = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    tot, negn, gout = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    dtn, dsz, dsr = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    catb = np.zeros((N, 3 * H), np.int64)
    ops = (np.zeros((N, 3 * H), rt_all.dtype), np.zeros((N, 2 * H), rt_all.dtype), np.zeros((N, H), rt_all.dtype))
    starts3 = np.array([0, H, 2 * H, 3 * H], np.int64)
    starts2 = np.array([0, 2 * H, 3 * H], np.int64)
    cf = np.empty(3, np.int64)
    chb = np.zeros((N, H), np.int64)
    chf = NONE
    for s in range(start, stop - 1, -1):
        fa[s] = NONE
        fr[s] = NONE
        fdh = step_error(inj[s], inj_frac[s], chb, chf, terms, tf, w, dh, bits, rnd, fmax, tallies)
        if fdh == FAIL:
            return 1
        if fdh == NONE:
            chf = NONE
            continue
        reached[s] = 1
        cflag = carry and s > stop
        z, r, n, h = zs[s], rs[s], ns[s], hp[s]
        derivative(n, dtn, gf, 0, gw)
        derivative(z, dsz, gf, 1, gw)
        derivative(r, dsr, gf, 1, gw)
        # d_n = N(dh (1 - z) tanh'(n))
        if not frac_ok(fdh + 2 * gf):
            return 1
        for i in range(N):
            for j in range(H):
                w[i, j] = dh[i, j] * ((np.int64(1) << gf) - z[i, j]) * dtn[i, j]
        fah = narrow_into(w, fdh + 2 * gf, bits, rnd, fmax, dah, tallies)
        # d_z = dh (h_{t-1} - n) sigmoid'(z): block 0 of dA
        for i in range(N):
            for j in range(H):
                negn[i, j] = -n[i, j]
        ft = total2(h, 0, hf, negn, 0, gf, tot, rnd)
        if fah == FAIL or ft == FAIL or not frac_ok(ft) or not frac_ok(fdh + ft + gf + 2):
            return 1
        cf[0] = fdh + ft + gf + 2
        for i in range(N):
            for j in range(H):
                catb[i, j] = dh[i, j] * tot[i, j] * dsz[i, j]
                catb[i, H + j] = 0
                catb[i, 2 * H + j] = dah[i, j] if fah != NONE else 0
        cf[2] = fah
        fdq = NONE  # lbr 1: dHh = N(d_n r); lbr 0: drh = N(gemm(d_n, R_h))
        cf[1] = NONE
        if fah != NONE:
            if lbr:
                if not frac_ok(fah + gf) or not frac_ok(fah + hh_frac):
                    return 1
                for i in range(N):
                    for j in range(H):
                        w[i, j] = dah[i, j] * r[i, j]
                fdq = narrow_into(w, fah + gf, bits, rnd, fmax, dq, tallies)
                for i in range(N):
                    for j in range(H):
                        w[i, j] = dah[i, j] * hh[s, i, j]
                f = narrow_into(w, fah + hh_frac, bits, rnd, fmax, w, tallies)
                if f == FAIL:
                    return 1
                if f != NONE:  # d_r = N(d_n Hh) sigmoid'(r)
                    cf[1] = f + gf + 2
                    for i in range(N):
                        for j in range(H):
                            catb[i, H + j] = w[i, j] * dsr[i, j]
            else:
                f = error_gemm(dah, 0, fah, ops[2], rt_h, rf, acc, gout)
                fdq = FAIL if f == FAIL else narrow_into(gout, f, bits, rnd, fmax, dq, tallies)
                if fdq != NONE and fdq != FAIL:  # d_r = drh h_{t-1} sigmoid'(r)
                    cf[1] = fdq + hf + gf + 2
                    for i in range(N):
                        for j in range(H):
                            catb[i, H + j] = dq[i, j] * h[i, j] * dsr[i, j]
            if fdq == FAIL or (cf[1] != NONE and not frac_ok(cf[1])):
                return 1
        # dA = N([d_z | d_r | d_n])
        f = cat_into(catb, starts3, cf, rnd)
        f = f if f == NONE or f == FAIL else narrow_into(catb, f, bits, rnd, fmax, dA[s], tallies)
        if f == FAIL:
            return 1
        fa[s] = f
        fr[s] = f
        if lbr and f != NONE:  # dR = N([dA_zr | dHh])
            for i in range(N):
                for j in range(2 * H):
                    catb[i, j] = dA[s, i, j]
                for j in range(H):
                    catb[i, 2 * H + j] = dq[i, j] if fdq != NONE else 0
            cf[0], cf[1] = f, fdq
            g = cat_into(catb, starts2, cf[:2].copy(), rnd)
            g = g if g == NONE or g == FAIL else narrow_into(catb, g, bits, rnd, fmax, dR[s], tallies)
            if g == FAIL:
                return 1
            fr[s] = g
        # the products dh z and (lbr 0) drh r are formed whether or not the chain carries on
        if not frac_ok(fdh + gf) or (not lbr and fdq != NONE and not frac_ok(fdq + gf)):
            return 1
        if not cflag:
            chf = NONE
            continue
        # carry_h = dh z + (lbr 1: gemm(dR, R); lbr 0: drh r + gemm(dA_zr, R_zr))
        for i in range(N):
            for j in range(H):
                terms[0, i, j] = dh[i, j] * z[i, j]
        tf[0], tf[1], tf[2] = fdh + gf, NONE, NONE
        if lbr:
            if fr[s] != NONE:
                tf[1] = error_gemm(dR[s], 0, fr[s], ops[0], rt_all, rf, acc, gout)
                copy_into(gout, terms[1])
        else:
            if fdq != NONE:
                tf[1] = fdq + gf
                for i in range(N):
                    for j in range(H):
                        terms[1, i, j] = dq[i, j] * r[i, j]
            if fa[s] != NONE:
                tf[2] = error_gemm(dA[s], 0, fa[s], ops[1], rt_zr, rf, acc, gout)
                copy_into(gout, terms[2])
        if tf[1] == FAIL or tf[2] == FAIL:
            return 1
        chf = add_into(terms, tf, 3, chb, rnd)
        if chf == FAIL:
            return 1
    return 0


# --------------------------------------------------------------------------- LSTM (§9.6-9.7)

@inner(VOID(MAT, I64, MAT))
def column_block(src, c0, dst):
    """dst = src[:, c0:c0 + dst's width] (one gate's block, contiguous for the table unit)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, c0 + j]


@numba.njit(cache=True)
def lstm_forward(xg, fx, rt, rb, has_bias, acc, fr, fmt, cfmt, table, observing, lo_tab, hi_tab,
                 hp, cp, hs, cs, gi, go, gf_, gg, tcs, obs):
    """One direction of an LSTM over the whole sequence (processing order).

    xg (T, N, 4H): X_t (``fx`` fraction bits); rt (H, 4H) = R[d]^T and rb its bias in the
    accumulator (``fr`` = F_h + F_R); cfmt = [F_c, lowest, highest code, width] of the cell
    format. Writes h_{t-1}, c_{t-1}, h, c, the gates i, o, f, g and tanh(c) per step; with
    ``observing``, obs[s] = [min, max, clipped, rounded to zero, fraction] of f c + i g as
    ``scaling.observe`` sees it (clipped against lo_tab / hi_tab[fraction + 64]). Returns 0,
    or 1 when a step needs the reference.
    """
    T, N, G4 = xg.shape
    H = G4 // 4
    gf, glo, ghi, gw = fmt[G_FRAC], fmt[G_LO], fmt[G_HI], fmt[G_WIDTH]
    hf, hlo, hhi, hw, rnd, ovf = fmt[H_FRAC], fmt[H_LO], fmt[H_HI], fmt[H_WIDTH], fmt[RND], fmt[OVF]
    cf, clo, chi, cw = cfmt[0], cfmt[1], cfmt[2], cfmt[3]
    if not (frac_ok(gf + cf) and frac_ok(2 * gf) and lut_shift_ok(cf)):
        return 1
    h, c = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    hb = np.zeros((N, H), rt.dtype)
    hg, pre = np.empty((N, G4), np.int64), np.empty((N, G4), np.int64)
    blk, u, t1, t2, mix = (np.empty((N, H), np.int64), np.empty((N, H), np.int64), np.empty((N, H), np.int64),
                           np.empty((N, H), np.int64), np.empty((N, H), np.int64))
    for s in range(T):
        copy_into(h, hp[s])
        copy_into(c, cp[s])
        recurrent_gemm(hb, rt, rb, has_bias, hg, np.int64(0), acc)
        f = total2(xg[s], 0, fx, hg, 0, fr, pre, rnd)  # one fraction for all four gates
        if not lut_shift_ok(f):
            return 1
        column_block(pre, 0, blk)
        sigmoid_block(blk, f, table, u, gi[s], gf, glo, ghi, gw, rnd)
        column_block(pre, H, blk)
        sigmoid_block(blk, f, table, u, go[s], gf, glo, ghi, gw, rnd)
        column_block(pre, 2 * H, blk)
        sigmoid_block(blk, f, table, u, gf_[s], gf, glo, ghi, gw, rnd)
        column_block(pre, 3 * H, blk)
        tanh_block(blk, f, table, u, gg[s], gf, glo, ghi, gw, rnd)
        i, fg, g = gi[s], gf_[s], gg[s]
        for a in range(N):
            for b in range(H):
                t1[a, b] = fg[a, b] * c[a, b]
                t2[a, b] = i[a, b] * g[a, b]
        m = total2(t1, 0, gf + cf, t2, 0, 2 * gf, mix, rnd)  # c' = S(f c + i g)
        if m == FAIL or not frac_ok(m) or m - cf > MAX_RIGHT:
            return 1
        for a in range(N):
            for b in range(H):
                c[a, b] = requantize_one(mix[a, b], m - cf, rnd, clo, chi, ovf, cw)
        if observing:
            mn, mx, clipped, zeroed = observe_counts(mix.reshape(-1), lo_tab[m + 64], hi_tab[m + 64], c.reshape(-1), True)
            obs[s, 0], obs[s, 1], obs[s, 2], obs[s, 3], obs[s, 4] = mn, mx, clipped, zeroed, m
        copy_into(c, cs[s])
        tanh_block(c, cf, table, u, tcs[s], gf, glo, ghi, gw, rnd)
        o, tc = go[s], tcs[s]
        for a in range(N):
            for b in range(H):
                v = requantize_one(o[a, b] * tc[a, b], 2 * gf - hf, rnd, hlo, hhi, ovf, hw)  # h' = S(o tanh(c'))
                h[a, b] = v
                hb[a, b] = v
        copy_into(h, hs[s])
    return 0


@numba.njit(cache=True)
def lstm_chain(start, stop, carry, inj, inj_frac, injc, injc_frac, gi, go, gf_, gg, tcs, cp, cf, rt, rf, acc, fmt,
               err, reached, dA, fa, tallies):
    """One BPTT chain of an LSTM direction (``Recurrent._run_chain`` with ``LSTM.cell_back``):
    as ``gru_chain``, with the cell error carried wide (``injc``: the error at Y_c) and one
    dA per step (dR is dA); records i, o, f, g, tanh(c) and c_{t-1} (cp, ``cf`` fraction bits)."""
    T, N, H = gi.shape
    gf, gw = fmt[G_FRAC], fmt[G_WIDTH]
    bits, rnd, fmax = err[0], err[1], err[2]
    terms = np.zeros((3, N, H), np.int64)
    tf = np.empty(3, np.int64)
    dh, dc, w, dcw = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), \
        np.zeros((N, H), np.int64)
    d_tc, d_i, d_o = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    d_f, d_g, gout = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    chb, ccb = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    catb = np.zeros((N, 4 * H), np.int64)
    op = np.zeros((N, 4 * H), rt.dtype)
    starts = np.array([0, H, 2 * H, 3 * H, 4 * H], np.int64)
    cfr = np.empty(4, np.int64)
    chf = ccf = NONE
    for s in range(start, stop - 1, -1):
        fa[s] = NONE
        fdh = step_error(inj[s], inj_frac[s], chb, chf, terms, tf, w, dh, bits, rnd, fmax, tallies)
        copy_into(injc[s], terms[0])
        copy_into(ccb, terms[1])
        tf[0], tf[1] = injc_frac[s], ccf
        fdc = add_into(terms, tf, 2, dcw, rnd)  # the carried cell error stays wide
        if fdh == FAIL or fdc == FAIL:
            return 1
        if fdh == NONE and fdc == NONE:
            chf = ccf = NONE
            continue
        reached[s] = 1
        i, o, fg, g, tc, c = gi[s], go[s], gf_[s], gg[s], tcs[s], cp[s]
        derivative(tc, d_tc, gf, 0, gw)
        derivative(i, d_i, gf, 1, gw)
        derivative(o, d_o, gf, 1, gw)
        derivative(fg, d_f, gf, 1, gw)
        derivative(g, d_g, gf, 0, gw)
        # dc = N(dc_in + dh o tanh'(tanh c'))
        copy_into(dcw, terms[0])
        tf[0], tf[1] = fdc, NONE
        if fdh != NONE:
            tf[1] = fdh + 2 * gf
            if not frac_ok(tf[1]):
                return 1
            for a in range(N):
                for b in range(H):
                    terms[1, a, b] = dh[a, b] * o[a, b] * d_tc[a, b]
        f = add_into(terms, tf, 2, w, rnd)
        fdn = f if f == NONE or f == FAIL else narrow_into(w, f, bits, rnd, fmax, dc, tallies)
        if fdn == FAIL or (fdh == NONE and fdn == NONE):  # rare: the reference runs the chain (no error at this step)
            return 1
        # dA = N([dc g sigma'(i) | dh tanh(c') sigma'(o) | dc c sigma'(f) | dc i tanh'(g)])
        cfr[0] = fdn + 2 * gf + 2 if fdn != NONE else NONE
        cfr[1] = fdh + 2 * gf + 2 if fdh != NONE else NONE
        cfr[2] = fdn + cf + gf + 2 if fdn != NONE else NONE
        cfr[3] = fdn + 2 * gf if fdn != NONE else NONE
        for p in range(4):
            if cfr[p] != NONE and not frac_ok(cfr[p]):
                return 1
        for a in range(N):
            for b in range(H):
                on = fdn != NONE
                catb[a, b] = dc[a, b] * g[a, b] * d_i[a, b] if on else 0
                catb[a, H + b] = dh[a, b] * tc[a, b] * d_o[a, b] if fdh != NONE else 0
                catb[a, 2 * H + b] = dc[a, b] * c[a, b] * d_f[a, b] if on else 0
                catb[a, 3 * H + b] = dc[a, b] * i[a, b] * d_g[a, b] if on else 0
        f = cat_into(catb, starts, cfr, rnd)
        f = f if f == NONE or f == FAIL else narrow_into(catb, f, bits, rnd, fmax, dA[s], tallies)
        if f == FAIL:
            return 1
        fa[s] = f
        if not (carry and s > stop):
            chf = ccf = NONE
            continue
        chf = NONE  # carry_h = gemm(dA, R); carry_c = dc f
        if f != NONE:
            chf = error_gemm(dA[s], 0, f, op, rt, rf, acc, chb)
            if chf == FAIL:
                return 1
        ccf = NONE
        if fdn != NONE:
            ccf = fdn + gf
            if not frac_ok(ccf):
                return 1
            for a in range(N):
                for b in range(H):
                    ccb[a, b] = dc[a, b] * fg[a, b]
    return 0


# --------------------------------------------------------------------------- Elman RNN (§9.6-9.7)

TANH, SIGMOID, RELU = 0, 1, 2  # the activation codes of rnn_forward / rnn_chain


@numba.njit(cache=True)
def rnn_forward(xg, fx, rt, rb, has_bias, acc, fr, act, fmt, table, observing, lo_tab, hi_tab, hp, hs, obs):
    """One direction of an Elman RNN over the whole sequence: h = f(X_t + h R^T + Rb), f tanh
    or sigmoid into the gate format (an Elman cell's gate is its state), or relu: max(0, S(.))
    into h's format, with ``observing`` obs[s] = [min, max, clipped, 0, fraction] of the
    pre-activation as ``scaling.observe`` sees it. Writes h_{t-1} and h; 0, or 1: the reference."""
    T, N, H = xg.shape
    gf, glo, ghi, gw = fmt[G_FRAC], fmt[G_LO], fmt[G_HI], fmt[G_WIDTH]
    hf, hlo, hhi, hw, rnd, ovf = fmt[H_FRAC], fmt[H_LO], fmt[H_HI], fmt[H_WIDTH], fmt[RND], fmt[OVF]
    h = np.zeros((N, H), np.int64)
    hb = np.zeros((N, H), rt.dtype)
    hg, pre, u = np.empty((N, H), np.int64), np.empty((N, H), np.int64), np.empty((N, H), np.int64)
    for s in range(T):
        copy_into(h, hp[s])
        recurrent_gemm(hb, rt, rb, has_bias, hg, np.int64(0), acc)
        f = total2(xg[s], 0, fx, hg, 0, fr, pre, rnd)
        if f == FAIL or not frac_ok(f):
            return 1
        if act == RELU:
            if f - hf > MAX_RIGHT:
                return 1
            if observing:
                flat = pre.reshape(-1)
                mn, mx, clipped, zeroed = observe_counts(flat, lo_tab[f + 64], hi_tab[f + 64], flat, False)
                obs[s, 0], obs[s, 1], obs[s, 2], obs[s, 3], obs[s, 4] = mn, mx, clipped, zeroed, f
            for a in range(N):
                for b in range(H):
                    h[a, b] = max(requantize_one(pre[a, b], f - hf, rnd, hlo, hhi, ovf, hw), 0)
        elif not lut_shift_ok(f):
            return 1
        elif act == SIGMOID:
            sigmoid_block(pre, f, table, u, h, gf, glo, ghi, gw, rnd)
        else:
            tanh_block(pre, f, table, u, h, gf, glo, ghi, gw, rnd)
        for a in range(N):
            for b in range(H):
                hb[a, b] = h[a, b]
        copy_into(h, hs[s])
    return 0


@numba.njit(cache=True)
def rnn_chain(start, stop, carry, inj, inj_frac, hs, h_frac, h_width, act, rt, rf, acc, err, reached, dA, fa,
              tallies):
    """One BPTT chain of an Elman RNN direction (``RNN.cell_back``): dA = N(dh f'(h)) (relu: dh
    where h > 0), carry_h = gemm(dA, R); as ``gru_chain`` otherwise. hs: the stored h
    (``h_frac`` fraction bits, ``h_width`` bits), dR is dA."""
    T, N, H = hs.shape
    bits, rnd, fmax = err[0], err[1], err[2]
    terms = np.zeros((3, N, H), np.int64)
    tf = np.empty(3, np.int64)
    dh, w, deriv = np.zeros((N, H), np.int64), np.zeros((N, H), np.int64), np.zeros((N, H), np.int64)
    chb = np.zeros((N, H), np.int64)
    op = np.zeros((N, H), rt.dtype)
    chf = NONE
    for s in range(start, stop - 1, -1):
        fa[s] = NONE
        fdh = step_error(inj[s], inj_frac[s], chb, chf, terms, tf, w, dh, bits, rnd, fmax, tallies)
        if fdh == FAIL:
            return 1
        if fdh == NONE:
            chf = NONE
            continue
        reached[s] = 1
        h = hs[s]
        if act == RELU:
            fw = fdh
            for a in range(N):
                for b in range(H):
                    w[a, b] = dh[a, b] if h[a, b] > 0 else 0
        else:
            fw = fdh + h_frac + (2 if act == SIGMOID else 0)
            if not frac_ok(fw):
                return 1
            derivative(h, deriv, h_frac, 1 if act == SIGMOID else 0, h_width)
            for a in range(N):
                for b in range(H):
                    w[a, b] = dh[a, b] * deriv[a, b]
        f = narrow_into(w, fw, bits, rnd, fmax, dA[s], tallies)
        if f == FAIL:
            return 1
        fa[s] = f
        chf = NONE
        if carry and s > stop and f != NONE:
            chf = error_gemm(dA[s], 0, f, op, rt, rf, acc, chb)
            if chf == FAIL:
                return 1
    return 0
