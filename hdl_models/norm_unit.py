"""Normalisation unit (§8.7): BatchNorm's statistics, per-channel scalar datapath and element
passes.

Element side (``lanes`` elements per cycle, one pass per phase below): a squarer and two
accumulators per lane for ``S1 = Σx``, ``S2 = Σx²``; a subtracter, an
``(act_bits + 10) x 24`` multiplier and a barrel shifter whose amount is a per-channel
register (``C`` shift registers, like per-channel requantization) for ``x̂``; a
``weight_bits x H`` multiplier and an adder for ``γ·x̂ + β``. Backward: an adder and a
multiply-accumulate for ``dβ``, ``dγ``; a multiplier and two adders for the bracket, a max
tracker; an ``(err_bits + 8) x 24`` multiplier.

Scalar side (per channel, once per step): a sequential wide multiplier (``Q = N·S2 − S1²``,
the means' products, the statistics' moving averages), a leading-one detector and a barrel
shifter (normalisations), the rsqrt ROM (385 words of 21 bits, two adjacent words per lookup,
a 12x9-bit interpolation multiplier); per distinct count ``N``, a restoring divider for the
32-bit reciprocal (``33 + ceil(log2 N)`` cycles, then held in a register).
"""

from __future__ import annotations

import math
import struct
import zlib

ROM_WORDS = 385
ROM_FRAC = 20  # T[j] = round(2^20 / sqrt(1 + j/128)), 21-bit unsigned
SEG = 9  # u & 511: position in a segment of width 2^-7
RECIP_W = 32
GUARD = 8  # fraction bits of a mean below its values' LSB
EPS_FRAC = 40
MANT = 23  # mantissas of gains: magnitude <= 2^23
K_MAX = 36
SCALAR_CYCLES = 8  # per channel and step: products, rsqrt, gain, moving averages (pipelined)
BACKWARD_SCALAR_CYCLES = 4  # per channel: the two means, the channel scale


def _rom() -> tuple:
    out = []
    for j in range(ROM_WORDS):
        root = math.isqrt((1 << (2 * ROM_FRAC + 9)) // (128 + j))  # floor(sqrt(4·2^40·128/(128+j)))
        out.append((root + 1) // 2)  # round half up of sqrt(2^40·128/(128+j))
    return tuple(out)


RSQRT_ROM = _rom()
ROM_CRC32 = zlib.crc32(struct.pack("<385I", *RSQRT_ROM))  # §8.7: 0x893C2D5F


def rne(v: int, s: int) -> int:
    """v·2^-s to nearest, ties to even (s <= 0: exact left shift)."""
    if s <= 0:
        return v << -s
    floor = v >> s
    rest = v - (floor << s)
    half = 1 << (s - 1)
    return floor + (1 if rest > half or (rest == half and floor % 2 == 1) else 0)


def leading_one(v: int) -> int:
    """Index of the highest set bit plus one (0 for 0)."""
    return v.bit_length()


def reciprocal(n: int) -> tuple:
    """(r, L): the restoring divider's quotient of 2^(32+L) + n//2 by n, L = ceil(log2 n)."""
    big = leading_one(n - 1)
    num, r, rem = (1 << (RECIP_W + big)) + n // 2, 0, 0
    for bit in range(leading_one(num) - 1, -1, -1):  # one quotient bit per cycle
        rem = (rem << 1) | ((num >> bit) & 1)
        r <<= 1
        if rem >= n:
            rem -= n
            r |= 1
    return r, big


def rsqrt(v: int, frac: int) -> tuple:
    """(t, f): t·2^-f ~ (v·2^-frac)^(-1/2); leading-one normaliser to m in [1, 4), ROM, interpolation."""
    if v <= 0:
        return 0, 0
    e = leading_one(v) - 1 - frac
    k = e if e % 2 == 0 else e - 1
    s = frac + k - 16
    u = (v >> s) if s >= 0 else (v << -s)
    j, pos = (u >> SEG) - 128, u & ((1 << SEG) - 1)
    lo, hi = RSQRT_ROM[j], RSQRT_ROM[j + 1]
    return rne((lo << SEG) - (lo - hi) * pos, 6), MANT + k // 2


def gain(v: int, phi: int, f_x: int, f_xh: int) -> tuple:
    """(ι, k, F_ι): a gain v·2^-phi as a 24-bit mantissa and a right shift in [0, 36] onto x̂."""
    k = 0 if v == 0 else f_x + GUARD + phi - max(0, leading_one(v) - MANT) - f_xh
    k = min(max(k, 0), K_MAX)
    f_i = k + f_xh - f_x - GUARD
    return min(rne(v, phi - f_i), 1 << MANT), k, f_i


def momentum_steps(momentum: float) -> int:
    """The power of two nearest the moving average's weight 1 - momentum: 2^-k."""
    w = 1.0 - float(momentum)
    return 16 if w <= 0 else int(min(16, max(0, round(-math.log2(w)))))


def moving(p: int, f_p: int, w: int, f_w: int, k: int) -> int:
    """The running statistic p moved 2^-k towards w, in p's fraction (before saturation)."""
    f = max(f_p, f_w)
    a = p << (f - f_p)
    return rne(a + rne((w << (f - f_w)) - a, k), f - f_p)


class NormUnit:
    """The element lanes and the scalar datapath; costs in cycles."""

    LATENCY = 4  # subtract | multiply | shift, round | saturate (and the second multiply-add)

    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)
        self.recips: dict = {}  # count -> (r, L): the divider runs once per distinct count

    def cycles(self, n: int) -> int:
        """One element per lane per cycle, plus the pipeline's fill once per pass."""
        return -(-int(n) // self.lanes) + self.LATENCY - 1 if n else 0

    def reciprocal(self, n: int) -> tuple:
        """(r, L, cycles): cycles 0 when the register already holds this count's reciprocal."""
        if n in self.recips:
            return self.recips[n] + (0,)
        self.recips[n] = reciprocal(n)
        return self.recips[n] + (RECIP_W + 1 + self.recips[n][1],)
