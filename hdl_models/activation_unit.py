"""Activation unit: ReLU, Clip, LeakyReLU and the interpolated tanh/sigmoid ROM (§7, §9).

Ports: ``din`` (activation code, any format), ``mode`` -> ``dout`` and the derivative
(mask for the piecewise-linear functions, a code for tanh/sigmoid, §9.4). ``lanes``
elements per cycle. The tanh ROM holds 1024 18-bit words (§9.1); a lookup reads two
adjacent words, one 11x9-bit multiplier and one adder interpolate. Two more ROMs of the same
shape, on the same address path, hold erf(x/sqrt 2) and the normal density for the normal
CDF and its derivative (§9.8), and 1 - exp(-2s) for ELU's negative branch, read at |x|/2, with
a multiplier by gamma or gamma*alpha (16 fraction bits) before the output rounder (§9.9); a
fifth holds log(1 + exp(-2s)) for softplus, read at |x|/2 and added to max(x, 0) (§9.10).
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

import numpy as np

from edgedfa.fixed import FixedFormat, Overflow, Rounding

from . import lanes
from .requant_unit import requant, shift_round

ROM_DEPTH = 1024
ROM_WIDTH = 18
ROM_FRAC = 17
SEG_BITS = 9  # position inside a segment: u & 511
ADDR_FMT = FixedFormat(19, 3, signed=False)  # 16 fraction bits, 0 .. 2^19-1
INTERP_FRAC = ROM_FRAC + SEG_BITS  # 26


def _tanh_rom() -> np.ndarray:
    t = [math.floor(math.tanh(k / 128) * 2 ** ROM_FRAC + 0.5) for k in range(ROM_DEPTH)]
    return np.array(t + [1 << ROM_FRAC], dtype=np.int64)  # the end point T[1024] is a constant


TANH_ROM = _tanh_rom()
ROM_CRC32 = zlib.crc32(TANH_ROM[:ROM_DEPTH].astype("<u4").tobytes())  # §9.1: 0xFBC1031B
PDF_FRAC = 19  # the density ROM's words are phi * 2^19


def _rom(func, frac: int) -> np.ndarray:
    return np.array([math.floor(func(k / 128) * 2 ** frac + 0.5) for k in range(ROM_DEPTH + 1)], dtype=np.int64)


ERF_ROM = _rom(lambda v: math.erf(v / math.sqrt(2)), ROM_FRAC)  # §9.8: CRC-32 0x383702E2
PDF_ROM = _rom(lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi), PDF_FRAC)  # §9.8: CRC-32 0x245D0C7A
EXPM1_ROM = _rom(lambda s: 1.0 - math.exp(-2 * s), ROM_FRAC)  # §9.9: 1 - exp(-|x|) at s = |x|/2; CRC-32 0xCE9C22BE
ELU_COEF_FMT = FixedFormat(20, 4, signed=False)  # gamma, gamma*alpha: 16 fraction bits (§9.9)
SOFTPLUS_ROM = _rom(lambda s: math.log1p(math.exp(-2 * s)), ROM_FRAC)  # §9.10: at s = |x|/2; CRC-32 0xF1F034D3


def relu(x):
    x = np.asarray(x, dtype=np.int64)
    return np.maximum(x, 0), x > 0


def quantize_bound(value: float, fmt: FixedFormat) -> int:
    """A float constant (Clip bound) to a code of fmt: nearest, ties to even, saturating."""
    lo, hi = fmt.min_code, fmt.max_code
    if math.isinf(value):
        return hi if value > 0 else lo
    y = Fraction(value) * Fraction(2) ** fmt.frac_bits
    q = math.floor(y)
    r = y - q
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and q % 2):
        q += 1
    return min(max(q, lo), hi)


def clip(x, lo: int, hi: int):
    x = np.asarray(x, dtype=np.int64)
    return np.clip(x, lo, hi), (x > lo) & (x < hi)


def _interp(q, f_in: int, rom=TANH_ROM):
    """Steps 1-4 of §9.2: |q| -> ROM address and linear interpolation (ROM fraction bits + 9)."""
    m = np.abs(np.asarray(q, dtype=np.int64))
    u = requant(m, f_in, ADDR_FMT, Rounding.AP_RND, Overflow.AP_SAT)
    k = u >> SEG_BITS
    r = u & ((1 << SEG_BITS) - 1)
    return rom[k] * (1 << SEG_BITS) + (rom[k + 1] - rom[k]) * r


def tanh(q, f_in: int, out_fmt: FixedFormat, rounding):
    """tanh through the ROM (§9.2), in the compiled lanes where they apply."""
    return _gate(q, f_in, out_fmt, rounding, TANH_ROM, False, tanh_reference)


def sigmoid(q, f_in: int, out_fmt: FixedFormat, rounding):
    """sigmoid(x) = (1 + tanh(x/2)) / 2 through the ROM (§9.3), in the compiled lanes where they apply."""
    return _gate(q, f_in, out_fmt, rounding, TANH_ROM, True, sigmoid_reference)


def normal_cdf(q, f_in: int, out_fmt: FixedFormat, rounding):
    """§9.8: (1 + erf(x/sqrt 2)) / 2 from the erf ROM, as sigmoid from the tanh ROM, in the
    compiled lanes where they apply."""
    return _gate(q, f_in, out_fmt, rounding, ERF_ROM, True, normal_cdf_reference, halve=False)


def _gate(q, f_in: int, out_fmt: FixedFormat, rounding, rom, one_plus: bool, reference, halve=None):
    """The ROM read of ``rom`` at |q| (at x/2 when ``halve``, sigmoid's default), then its sign
    (tanh) or 1 ± it (``one_plus``) into ``out_fmt``."""
    rounding = Rounding.parse(rounding)
    s_addr = int(f_in) + (one_plus if halve is None else halve) - ADDR_FMT.frac_bits
    s_out = INTERP_FRAC + one_plus - out_fmt.frac_bits
    out = None
    if rounding is not Rounding.STOCHASTIC and out_fmt.width <= 62:
        out = lanes.rom_gate(q, s_addr, rom, s_out, one_plus, lanes.ROUNDING[rounding], out_fmt.min_code,
                             out_fmt.max_code)
    return reference(q, f_in, out_fmt, rounding) if out is None else out


def tanh_reference(q, f_in: int, out_fmt: FixedFormat, rounding):
    """``tanh`` in numpy, one operation per pass."""
    y = _interp(q, f_in)
    m = requant(y, INTERP_FRAC, out_fmt, rounding, Overflow.AP_SAT)
    return np.where(np.asarray(q) < 0, -m, m)


def sigmoid_reference(q, f_in: int, out_fmt: FixedFormat, rounding):
    """``sigmoid`` in numpy, one operation per pass."""
    return _one_plus_reference(q, f_in + 1, TANH_ROM, out_fmt, rounding)  # x/2: one more fraction bit


def _one_plus_reference(q, f_addr: int, rom, out_fmt: FixedFormat, rounding):
    """(1 ± rom(|q|)) / 2 by q's sign, one operation per pass (sigmoid's and Phi's read)."""
    y = _interp(q, f_addr, rom)
    one = 1 << INTERP_FRAC
    w = np.where(np.asarray(q) >= 0, one + y, one - y)
    return requant(w, INTERP_FRAC + 1, out_fmt, rounding, Overflow.AP_SAT)


def normal_cdf_reference(q, f_in: int, out_fmt: FixedFormat, rounding):
    """``normal_cdf`` in numpy, one operation per pass."""
    return _one_plus_reference(q, f_in, ERF_ROM, out_fmt, rounding)


def normal_cdf_deriv(q, f_in: int, fmt: FixedFormat):
    """(code, format) of phi(x) in ap_ufixed<W,-1> from the density ROM at the input's address (§9.8)."""
    dfmt = FixedFormat(fmt.width, -1, signed=False)
    return requant(_interp(q, f_in, PDF_ROM), PDF_FRAC + SEG_BITS, dfmt, Rounding.AP_RND, Overflow.AP_SAT), dfmt


def elu_coefficients(alpha: float, gamma: float) -> tuple:
    """(c_pos, c_neg): the multiplier's two constants, gamma and gamma*alpha, in ap_ufixed<20,4>."""
    return quantize_bound(gamma, ELU_COEF_FMT), quantize_bound(gamma * alpha, ELU_COEF_FMT)


def elu_out_format(in_fmt: FixedFormat, c_pos: int, c_neg: int) -> FixedFormat:
    """§9.9: the input's format, one more integer bit per doubling of max(gamma, gamma*alpha) over 1."""
    top, extra = max(c_pos, c_neg), 0
    while top > (1 << (ELU_COEF_FMT.frac_bits + extra)):
        extra += 1
    return FixedFormat(in_fmt.width, in_fmt.int_bits + extra)


def elu(q, f_in: int, out_fmt: FixedFormat, c_pos: int, c_neg: int, rounding):
    """§9.9: q > 0: q*c_pos rounded; else -(expm1 ROM at |x|/2)*c_neg rounded (both AP_SAT)."""
    q = np.asarray(q, dtype=np.int64)
    f_coef = ELU_COEF_FMT.frac_bits
    above = requant(q * c_pos, f_in + f_coef, out_fmt, rounding, Overflow.AP_SAT)
    below = requant(-(_interp(q, f_in + 1, EXPM1_ROM) * c_neg), INTERP_FRAC + f_coef, out_fmt, rounding,
                    Overflow.AP_SAT)
    return np.where(q > 0, above, below)


def elu_deriv(y, fmt: FixedFormat, c_pos: int, c_neg: int):
    """(code, fraction bits) of the derivative from the output code: c_pos where y > 0, else
    max(0, y + c_neg), both aligned to max(F_out, 16) fraction bits (§9.9)."""
    f_coef = ELU_COEF_FMT.frac_bits
    f = max(fmt.frac_bits, f_coef)
    y = np.asarray(y, dtype=np.int64) * (1 << (f - fmt.frac_bits))
    return np.where(y > 0, c_pos * (1 << (f - f_coef)), np.maximum(y + c_neg * (1 << (f - f_coef)), 0)), f


def softplus_out_format(in_fmt: FixedFormat) -> FixedFormat:
    """§9.10: the input's width, max(I_in, 1) + 1 integer bits (room for max(x, 0) + log 2)."""
    return FixedFormat(in_fmt.width, (in_fmt.int_bits if in_fmt.int_bits > 1 else 1) + 1)


def softplus(q, f_in: int, out_fmt: FixedFormat, rounding):
    """§9.10: the softplus ROM at |x|/2 and max(q, 0) aligned on one adder, then the output rounder."""
    q = np.asarray(q, dtype=np.int64)
    f_sum = max(int(f_in), INTERP_FRAC)
    rom = _interp(q, f_in + 1, SOFTPLUS_ROM) * (1 << (f_sum - INTERP_FRAC))
    return requant(np.where(q > 0, q, 0) * (1 << (f_sum - f_in)) + rom, f_sum, out_fmt, rounding, Overflow.AP_SAT)


def softplus_deriv(q, f_in: int, fmt: FixedFormat):
    """(code, format) of sigmoid(x) in ap_ufixed<W,1> from the tanh ROM at the input's address (§9.10)."""
    dfmt = FixedFormat(fmt.width, 1, signed=False)
    return sigmoid(q, f_in, dfmt, Rounding.AP_RND), dfmt


def tanh_deriv(t, fmt: FixedFormat):
    """(code, format) of 1 - t^2 in ap_ufixed<W,1> (§9.4)."""
    f = fmt.frac_bits
    dfmt = FixedFormat(fmt.width, 1, signed=False)
    t = np.asarray(t, dtype=np.int64)
    return requant((1 << (2 * f)) - t * t, 2 * f, dfmt, Rounding.AP_RND, Overflow.AP_SAT), dfmt


def sigmoid_deriv(s, fmt: FixedFormat):
    """(code, format) of s(1 - s) in ap_ufixed<W,-1> (§9.4)."""
    f = fmt.frac_bits
    dfmt = FixedFormat(fmt.width, -1, signed=False)
    s = np.asarray(s, dtype=np.int64)
    return requant(s * ((1 << f) - s), 2 * f, dfmt, Rounding.AP_RND, Overflow.AP_SAT), dfmt


def leaky(x, alpha_code: int, alpha_frac: int, rounding):
    x = np.asarray(x, dtype=np.int64)
    return np.where(x >= 0, x, shift_round(x * alpha_code, alpha_frac, rounding)), x >= 0


class ActivationUnit:
    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)

    def cycles(self, n: int) -> int:
        return -(-int(n) // self.lanes)
