"""Integer tanh, sigmoid and the normal CDF: interpolated tables, integer derivatives (§9).

One ROM of ``TABLE_SIZE`` entries holds ``tanh`` on ``[0, 8)`` in steps of ``2^-7``; both
functions are read from it by linear interpolation:

- ``tanh(x)``: ``|x|`` to ``ap_ufixed<19,3>``, table lookup, interpolate, round, negate
  when ``x < 0`` (exactly odd);
- ``sigmoid(x) = (1 + tanh(x/2)) / 2``: the same unit fed ``x/2`` (one more fraction
  bit, no arithmetic), one add and one right shift before the single output rounding.

Derivatives are computed from the output codes in integers: ``tanh' = 1 - t^2`` in
``ap_ufixed<W,1>``, ``sigmoid' = s(1 - s)`` in ``ap_ufixed<W,-1>`` (``W``: the output width).

The normal CDF ``Phi(x) = (1 + erf(x/sqrt 2)) / 2`` (GELU is ``x Phi(x)``) has two more ROMs
of the same shape and address (§9.8): ``erf(x/sqrt 2)`` read as sigmoid reads tanh, and the
normal density ``phi`` for its derivative, read at the input's address in the backward pass
(``phi`` is no function of ``Phi``'s output).

ELU (and SELU, its scaled form, §9.9) has one more ROM on the same address path:
``1 - exp(-t)`` on ``t = |x|`` in ``[0, 16)``, read at ``|x|/2`` as sigmoid reads tanh; the
derivative comes from the output code (``y + gamma alpha`` below zero), no ROM.

Softplus (§9.10) has a fifth: ``log(1 + exp(-t))`` on ``t = |x|`` in ``[0, 16)``, read at
``|x|/2`` as ELU's, added to ``max(x, 0)`` before one rounding; its derivative ``sigmoid(x)``
is the tanh table's sigmoid read at the input's address.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EdgeDFAError
from .fixed import FixedFormat, Rounding, as_format, quantize, requantize

SEG_BITS = 7  # segment width 2^-7
RANGE_INT_BITS = 3  # table covers |x| in [0, 2^3)
TABLE_FRAC = 17  # entries are tanh * 2^17, 18-bit unsigned
INTERP_BITS = 9  # position inside a segment: 9 bits
TABLE_SIZE = 1 << (RANGE_INT_BITS + SEG_BITS)  # 1024 stored entries; entry 1024 is 2^17
LUT_IN_FMT = FixedFormat(RANGE_INT_BITS + SEG_BITS + INTERP_BITS, RANGE_INT_BITS, signed=False)
INTERP_FRAC = TABLE_FRAC + INTERP_BITS  # fraction bits of the interpolated value (26)


def _build_table() -> np.ndarray:
    """T[k] = floor(tanh(k / 2^7) * 2^17 + 1/2), k = 0..1024 (T[1024] = 2^17, not stored)."""
    t = [math.floor(math.tanh(k / (1 << SEG_BITS)) * (1 << TABLE_FRAC) + 0.5) for k in range(TABLE_SIZE)]
    return np.array(t + [1 << TABLE_FRAC], dtype=np.int64)


TANH_TABLE = _build_table()
PDF_FRAC = 19  # the density's entries are phi * 2^19 (max 0.3989: 18-bit unsigned)


def _rom(func, frac: int) -> np.ndarray:
    """E[k] = floor(func(k / 2^7) * 2^frac + 1/2), k = 0..1024 (entry 1024 is not stored)."""
    return np.array([math.floor(func(k / (1 << SEG_BITS)) * (1 << frac) + 0.5) for k in range(TABLE_SIZE + 1)],
                    dtype=np.int64)


ERF_TABLE = _rom(lambda x: math.erf(x / math.sqrt(2.0)), TABLE_FRAC)  # 2 Phi(x) - 1; 2^17 from k = 592
PDF_TABLE = _rom(lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi), PDF_FRAC)  # phi(x); 0 from k = 652
EXPM1_TABLE = _rom(lambda s: -math.expm1(-2.0 * s), TABLE_FRAC)  # 1 - exp(-2s): read at |x|/2 (§9.9)
SOFTPLUS_TABLE = _rom(lambda s: math.log1p(math.exp(-2.0 * s)), TABLE_FRAC)  # log(1 + exp(-2s)): at |x|/2 (§9.10)


def interpolate(table, mag, mag_fmt):
    """Linear interpolation in ``table`` at a non-negative wide code (its fraction bits + 9)."""
    u = requantize(mag, mag_fmt, LUT_IN_FMT, Rounding.AP_RND, "AP_SAT")
    k = u >> INTERP_BITS
    r = u & ((1 << INTERP_BITS) - 1)
    lo = table[k]
    return (lo << INTERP_BITS) + (table[k + 1] - lo) * r


def _tanh_magnitude(mag, mag_fmt):
    """Interpolated tanh of a non-negative wide code: int64 with INTERP_FRAC fraction bits."""
    return interpolate(TANH_TABLE, mag, mag_fmt)


def _check_out(out_fmt) -> FixedFormat:
    out_fmt = as_format(out_fmt)
    if not out_fmt.signed:
        raise EdgeDFAError(f"tanh/sigmoid output format {out_fmt} must be signed (ap_fixed<W,I>)")
    return out_fmt


def tanh_codes(codes, in_fmt, out_fmt, rounding=Rounding.AP_RND) -> np.ndarray:
    """Integer tanh: codes of ``in_fmt`` (any width) to codes of ``out_fmt`` (§9.2).

    >>> tanh_codes(np.array([-128, 0, 32, 127]), "ap_fixed<8,3>", "ap_fixed<8,1>")
    array([-127,    0,   97,  127])
    """
    in_fmt, out_fmt = as_format(in_fmt), _check_out(out_fmt)
    x = np.asarray(codes, dtype=np.int64)
    y = _tanh_magnitude(np.abs(x), in_fmt)
    m = requantize(y, FixedFormat.with_frac(48, INTERP_FRAC), out_fmt, rounding, "AP_SAT")
    return np.where(x < 0, -m, m)


def sigmoid_codes(codes, in_fmt, out_fmt, rounding=Rounding.AP_RND) -> np.ndarray:
    """Integer sigmoid as (1 + tanh(x/2)) / 2 from the tanh table (§9.3).

    >>> sigmoid_codes(np.array([-128, 0, 32, 127]), "ap_fixed<8,3>", "ap_fixed<8,1>")
    array([  2,  64,  94, 126])
    """
    in_fmt = as_format(in_fmt)
    half_fmt = FixedFormat.with_frac(48, in_fmt.frac_bits + 1)  # x/2: one more fraction bit
    return _one_plus_half(TANH_TABLE, codes, half_fmt, out_fmt, rounding)


def _one_plus_half(table, codes, mag_fmt, out_fmt, rounding) -> np.ndarray:
    """(1 ± table(|x|)) / 2 into ``out_fmt``, the sign of x choosing: sigmoid from the tanh
    table at x/2, Phi from the erf table at x."""
    return _one_plus_half_any(table, codes, mag_fmt, _check_out(out_fmt), rounding)


def _one_plus_half_any(table, codes, mag_fmt, out_fmt, rounding) -> np.ndarray:
    """_one_plus_half into a format of either sign (softplus' derivative is unsigned)."""
    x = np.asarray(codes, dtype=np.int64)
    y = interpolate(table, np.abs(x), mag_fmt)
    one = 1 << INTERP_FRAC
    w = np.where(x < 0, one - y, one + y)  # with INTERP_FRAC fraction bits
    return requantize(w, FixedFormat.with_frac(48, INTERP_FRAC + 1), out_fmt, rounding, "AP_SAT")


def normal_cdf_codes(codes, in_fmt, out_fmt, rounding=Rounding.AP_RND) -> np.ndarray:
    """Integer Phi(x) = (1 + erf(x/sqrt 2)) / 2 from the erf table, as sigmoid from tanh's (§9.8).

    >>> normal_cdf_codes(np.array([-128, 0, 32, 127]), "ap_fixed<8,3>", "ap_fixed<8,1>")
    array([  0,  64, 108, 127])
    """
    return _one_plus_half(ERF_TABLE, codes, as_format(in_fmt), out_fmt, rounding)


def dnormal_cdf_codes(x_codes, in_fmt, out_fmt) -> np.ndarray:
    """Phi'(x) = phi(x) from the density table at the input's address, in dnormal_cdf_format
    (AP_RND, AP_SAT)."""
    y = interpolate(PDF_TABLE, np.abs(np.asarray(x_codes, dtype=np.int64)), as_format(in_fmt))
    return requantize(y, FixedFormat.with_frac(48, PDF_FRAC + INTERP_BITS), dnormal_cdf_format(out_fmt),
                      Rounding.AP_RND, "AP_SAT")


def dnormal_cdf_format(out_fmt) -> FixedFormat:
    """Format of Phi' codes (values in [0, 0.399]): ap_ufixed<W,-1>, as sigmoid's."""
    return dsigmoid_format(out_fmt)


COEF_FRAC = 16  # ELU's gamma and gamma*alpha are codes of ap_ufixed<20,4> (§9.9)
COEF_FMT = FixedFormat(COEF_FRAC + 4, 4, signed=False)  # values < 16: products fit 48 bits


def elu_coefficients(alpha: float, gamma: float = 1.0) -> tuple:
    """(c_pos, c_neg): gamma and gamma*alpha as COEF_FMT codes (nearest, ties to even)."""
    return tuple(int(quantize(np.array(v, dtype=np.float64), COEF_FMT, "AP_RND_CONV", "AP_SAT"))
                 for v in (gamma, gamma * alpha))


def elu_format(in_fmt, c_pos: int, c_neg: int) -> FixedFormat:
    """ELU's output format: the input's with ceil(log2 max(gamma, gamma*alpha)) more integer
    bits when that is positive (|y| <= max(gamma, gamma*alpha)|x|: never outside, §9.9)."""
    in_fmt = as_format(in_fmt)
    extra = max(0, (max(c_pos, c_neg) - 1).bit_length() - COEF_FRAC)
    return FixedFormat(in_fmt.width, in_fmt.int_bits + extra)


def elu_codes(codes, in_fmt, out_fmt, c_pos: int, c_neg: int, rounding=Rounding.AP_RND) -> np.ndarray:
    """Integer gamma * ELU_alpha(x) (§9.9): gamma x above zero, -gamma alpha (1 - exp(x)) from
    the expm1 table at |x|/2 at or below, one rounding into ``out_fmt``.

    >>> elu_codes(np.array([-128, -16, 0, 40]), "ap_fixed<8,4>", "ap_fixed<8,4>", 65536, 65536)
    array([-16, -10,   0,  40])
    """
    in_fmt, out_fmt = as_format(in_fmt), as_format(out_fmt)
    x = np.asarray(codes, dtype=np.int64)
    pos = requantize(x * c_pos, FixedFormat.with_frac(48, in_fmt.frac_bits + COEF_FRAC), out_fmt, rounding, "AP_SAT")
    v = interpolate(EXPM1_TABLE, np.abs(x), FixedFormat.with_frac(48, in_fmt.frac_bits + 1))  # |x|/2
    neg = requantize(-v * c_neg, FixedFormat.with_frac(48, INTERP_FRAC + COEF_FRAC), out_fmt, rounding, "AP_SAT")
    return np.where(x > 0, pos, neg)


def delu_format(out_fmt) -> FixedFormat:
    """Format of ELU' codes: max(F_out, 16) fraction bits, 4 integer bits (unsigned)."""
    frac = max(as_format(out_fmt).frac_bits, COEF_FRAC)
    return FixedFormat.with_frac(frac + 4, frac, signed=False)


def delu_codes(y_codes, out_fmt, c_pos: int, c_neg: int) -> np.ndarray:
    """ELU'(x) from the output code y, exact in delu_format: gamma where y > 0, else
    max(0, y + gamma alpha) (= gamma alpha exp(x) but for y's rounding)."""
    out_fmt = as_format(out_fmt)
    frac = delu_format(out_fmt).frac_bits
    y = np.asarray(y_codes, dtype=np.int64) << (frac - out_fmt.frac_bits)
    return np.where(y > 0, c_pos << (frac - COEF_FRAC), np.maximum(y + (c_neg << (frac - COEF_FRAC)), 0))


SOFTPLUS_MAX_INT_BITS = 34  # max(x, 0) aligned to the table's 26 fraction bits stays below 2^61


def softplus_format(in_fmt) -> FixedFormat:
    """Softplus's output format: the input's width with max(I_in, 1) + 1 integer bits, so that
    max(x, 0) + log 2 never reaches the rail from 4 bits on (§9.10)."""
    in_fmt = as_format(in_fmt)
    return FixedFormat(in_fmt.width, max(in_fmt.int_bits, 1) + 1)


def softplus_codes(codes, in_fmt, out_fmt, rounding=Rounding.AP_RND) -> np.ndarray:
    """Integer softplus(x) = max(x, 0) + log(1 + exp(-|x|)) (§9.10): the table at |x|/2, the
    exact sum with max(x, 0), one rounding into ``out_fmt``.

    >>> softplus_codes(np.array([-128, -16, 0, 40]), "ap_fixed<8,4>", "ap_fixed<8,5>")
    array([ 0,  3,  6, 21])
    """
    in_fmt, out_fmt = as_format(in_fmt), as_format(out_fmt)
    if in_fmt.int_bits > SOFTPLUS_MAX_INT_BITS:
        raise EdgeDFAError(f"softplus input format {in_fmt}: at most {SOFTPLUS_MAX_INT_BITS} integer bits")
    x = np.asarray(codes, dtype=np.int64)
    v = interpolate(SOFTPLUS_TABLE, np.abs(x), FixedFormat.with_frac(48, in_fmt.frac_bits + 1))  # at |x|/2
    frac = max(in_fmt.frac_bits, INTERP_FRAC)
    wide = (np.maximum(x, 0) << (frac - in_fmt.frac_bits)) + (v << (frac - INTERP_FRAC))
    return requantize(wide, FixedFormat.with_frac(48, frac), out_fmt, rounding, "AP_SAT")


def dsoftplus_format(out_fmt) -> FixedFormat:
    """Format of softplus' = sigmoid codes: ap_ufixed<W,1> (holds 1 exactly, as tanh's)."""
    return FixedFormat(as_format(out_fmt).width, 1, signed=False)


def dsoftplus_codes(x_codes, in_fmt, out_fmt) -> np.ndarray:
    """softplus'(x) = sigmoid(x), the tanh table read at x/2 as §9.3's sigmoid, from the input
    codes, in dsoftplus_format (AP_RND, AP_SAT)."""
    half_fmt = FixedFormat.with_frac(48, as_format(in_fmt).frac_bits + 1)
    return _one_plus_half_any(TANH_TABLE, x_codes, half_fmt, dsoftplus_format(out_fmt), Rounding.AP_RND)


def dtanh_format(out_fmt) -> FixedFormat:
    """Format of tanh' codes for outputs of ``out_fmt``: ap_ufixed<W,1> (holds 1 exactly)."""
    out_fmt = as_format(out_fmt)
    return FixedFormat.with_frac(out_fmt.width, out_fmt.frac_bits, signed=False)


def dsigmoid_format(out_fmt) -> FixedFormat:
    """Format of sigmoid' codes (values in [0, 1/4]): ap_ufixed<W,-1>, two more fraction bits."""
    out_fmt = as_format(out_fmt)
    return FixedFormat.with_frac(out_fmt.width, out_fmt.frac_bits + 2, signed=False)


def dtanh_codes(t_codes, t_fmt) -> np.ndarray:
    """tanh'(x) = 1 - t^2 from the output codes t, in dtanh_format (AP_RND)."""
    t_fmt = as_format(t_fmt)
    t = np.asarray(t_codes, dtype=np.int64)
    wide = (1 << (2 * t_fmt.frac_bits)) - t * t
    return requantize(wide, FixedFormat.with_frac(48, 2 * t_fmt.frac_bits), dtanh_format(t_fmt),
                      Rounding.AP_RND, "AP_SAT")


def dsigmoid_codes(s_codes, s_fmt) -> np.ndarray:
    """sigmoid'(x) = s (1 - s) from the output codes s, in dsigmoid_format (AP_RND)."""
    s_fmt = as_format(s_fmt)
    s = np.asarray(s_codes, dtype=np.int64)
    wide = s * ((1 << s_fmt.frac_bits) - s)
    return requantize(wide, FixedFormat.with_frac(48, 2 * s_fmt.frac_bits), dsigmoid_format(s_fmt),
                      Rounding.AP_RND, "AP_SAT")


# Analytic bounds on |value before the output rounding - f(x)| for any input format (§9.5):
# interpolation max|tanh''| h^2 / 8 + table rounding 2^-18 + input rounding 2^-17.
TANH_CORE_BOUND = 0.7699 / 8 * 2.0**-14 + 2.0**-18 + 2.0**-17  # 1.732e-5
SIGMOID_CORE_BOUND = TANH_CORE_BOUND / 2  # tanh(x/2) / 2
# Phi = (1 + g) / 2 with g(x) = erf(x/sqrt 2): max|g''| = 0.4839, max|g'| = 0.7979 (§9.8)
NORMAL_CDF_CORE_BOUND = (0.4839 / 8 * 2.0**-14 + 2.0**-18 + 0.7979 * 2.0**-17) / 2  # 6.80e-6
# phi: max|phi''| = 0.3990 (x = 0), table rounding 2^-20, input rounding 2^-17 times max|phi'| = 0.2420
PDF_CORE_BOUND = 0.3990 / 8 * 2.0**-14 + 2.0**-20 + 0.2420 * 2.0**-17  # 5.84e-6
# 1 - exp(-t) read at s = t/2 (g(s) = 1 - exp(-2s)): max|g''| = 4, max|g'| = 2, cut off at t = 16 (§9.9)
ELU_CORE_BOUND = 4.0 / 8 * 2.0**-14 + 2.0**-18 + 2.0 * 2.0**-17 + math.exp(-16)  # 4.97e-5, times gamma alpha
# log(1 + exp(-t)) read at s = t/2 (g(s) = log(1 + exp(-2s))): max|g''| = 1, max|g'| = 1 at s = 0,
# cut off at t = 16 (§9.10)
SOFTPLUS_CORE_BOUND = 1.0 / 8 * 2.0**-14 + 2.0**-18 + 2.0**-17 + math.log1p(math.exp(-16))  # 1.92e-5
CORE_BOUNDS = {"tanh": TANH_CORE_BOUND, "sigmoid": SIGMOID_CORE_BOUND, "normal_cdf": NORMAL_CDF_CORE_BOUND}


def error_bound(func: str, out_fmt) -> float:
    """Max |integer f(x) - float f(x)| for any input: core error + half an LSB, or one LSB
    where the float value lies above the output's largest code (saturation)."""
    out_fmt = as_format(out_fmt)
    return max(CORE_BOUNDS[func] + out_fmt.lsb / 2, out_fmt.lsb)


def _erfc(v):
    return np.frompyfunc(math.erfc, 1, 1)(v).astype(np.float64)


REFERENCE = {"tanh": np.tanh, "sigmoid": lambda v: 0.5 * (1.0 + np.tanh(v / 2)),
             "normal_cdf": lambda v: 0.5 * _erfc(-v / math.sqrt(2.0)),
             "normal_pdf": lambda v: np.exp(-v * v / 2) / math.sqrt(2 * math.pi)}


def _core(func: str, codes, frac: int):
    """The interpolated value before the output rounding, as a float."""
    fmt = FixedFormat.with_frac(48, frac + (func == "sigmoid"))
    if func == "normal_pdf":
        return interpolate(PDF_TABLE, np.abs(codes), fmt) * 2.0**-(PDF_FRAC + INTERP_BITS)
    table = ERF_TABLE if func == "normal_cdf" else TANH_TABLE
    y = interpolate(table, np.abs(codes), fmt) * 2.0**-INTERP_FRAC
    y = np.where(codes < 0, -y, y)
    return y if func == "tanh" else 0.5 * (1.0 + y)


def max_error(func: str, out_fmt=None, in_fmt="ap_fixed<40,6>", n: int = 1 << 20):
    """Measured max |integer - float| over an input grid (core error when out_fmt is None);
    ``func`` is tanh, sigmoid, normal_cdf or normal_pdf (Phi' by its own table)."""
    in_fmt = as_format(in_fmt)
    x = np.linspace(in_fmt.min_value, in_fmt.max_value, n)
    codes = np.round(np.ldexp(x, in_fmt.frac_bits)).astype(np.int64)
    ref = REFERENCE[func](np.ldexp(codes.astype(np.float64), -in_fmt.frac_bits))
    if out_fmt is None:  # before the output rounding: the interpolated value itself
        got = _core(func, codes, in_fmt.frac_bits)
    elif func == "normal_pdf":
        dfmt = dnormal_cdf_format(out_fmt)
        got = np.ldexp(dnormal_cdf_codes(codes, in_fmt, out_fmt).astype(np.float64), -dfmt.frac_bits)
    else:
        f = {"tanh": tanh_codes, "sigmoid": sigmoid_codes, "normal_cdf": normal_cdf_codes}[func]
        got = np.ldexp(f(codes, in_fmt, out_fmt).astype(np.float64), -as_format(out_fmt).frac_bits)
    return float(np.abs(got - ref).max())
