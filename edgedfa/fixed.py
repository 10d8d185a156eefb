"""Fixed-point formats, rounding and overflow modes (docs/datapath.md §1-4).

Codes are int64 numpy arrays: the integer ``q`` of a value ``q * 2**-frac_bits``.
``requantize`` is the only function that narrows a code; ``quantize`` is the only way in
from floats and ``dequantize`` the only way out. A tensor is a ``QTensor(codes, fmt)``;
``narrow_dynamic`` keeps the top bits of a wide one (a per-batch block exponent, §7).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import EdgeDFAError

MAX_WIDTH = 48  # widest storage/accumulator format; float64 holds every code exactly
MAX_FRAC = 64  # the most fraction bits (|W - I|) a format has
ERR_FRAC_MAX = 32  # errors finer than 2^-32 are rounded there (§7): error products stay <= 64
_FORMAT_RE = re.compile(
    r"^\s*ap_(u?)(fixed|int)\s*<\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?((?:,[^,>]*)*)>\s*$",
    re.ASCII,  # \d must not match non-ASCII digits: the name has to parse back to itself
)


class Rounding(str, enum.Enum):
    """How the bits below the LSB are dropped (Vitis HLS ap_fixed quantization modes)."""

    AP_TRN = "AP_TRN"  #: toward minus infinity (floor): drop the bits
    AP_TRN_ZERO = "AP_TRN_ZERO"  #: toward zero
    AP_RND = "AP_RND"  #: to nearest, ties toward plus infinity (add half, floor)
    AP_RND_ZERO = "AP_RND_ZERO"  #: to nearest, ties toward zero
    AP_RND_MIN_INF = "AP_RND_MIN_INF"  #: to nearest, ties toward minus infinity
    AP_RND_INF = "AP_RND_INF"  #: to nearest, ties away from zero
    AP_RND_CONV = "AP_RND_CONV"  #: to nearest, ties to even (convergent)
    STOCHASTIC = "STOCHASTIC"  #: floor(x + u), u uniform from the datapath PRNG

    @classmethod
    def parse(cls, name) -> "Rounding":
        """Rounding from its name (case-insensitive); EdgeDFAError lists the valid names."""
        return _parse_enum(cls, name, "rounding mode")


class Overflow(str, enum.Enum):
    """What a value outside the format's range becomes (Vitis HLS overflow modes)."""

    AP_SAT = "AP_SAT"  #: clamp to [min, max]
    AP_SAT_ZERO = "AP_SAT_ZERO"  #: out-of-range values become zero
    AP_SAT_SYM = "AP_SAT_SYM"  #: clamp to [-max, max] (signed); as AP_SAT when unsigned
    AP_WRAP = "AP_WRAP"  #: keep the low W bits (two's complement wrap-around)

    @classmethod
    def parse(cls, name) -> "Overflow":
        """Overflow mode from its name (case-insensitive)."""
        return _parse_enum(cls, name, "overflow mode")


def _parse_enum(cls, name, what):
    if isinstance(name, cls):
        return name
    key = str(name).strip().upper()
    if key in cls.__members__:
        return cls[key]
    valid = ", ".join(cls.__members__)
    raise EdgeDFAError(f"unknown {what} {name!r}; expected one of {valid}")


@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point format ``ap_fixed<W,I>`` (signed) or ``ap_ufixed<W,I>``.

    ``W`` bits in all, ``I`` of them integer bits (the sign bit included when signed);
    ``frac_bits = W - I`` may be negative or exceed ``W``, as in Vitis HLS.

    Examples
    --------
    >>> fmt = FixedFormat.parse("ap_fixed<8,3>")
    >>> str(fmt), fmt.frac_bits, fmt.min_code, fmt.max_code, fmt.lsb
    ('ap_fixed<8,3>', 5, -128, 127, 0.03125)
    >>> FixedFormat(8, 0, signed=False).max_value
    0.99609375
    """

    width: int
    int_bits: int
    signed: bool = True

    def __post_init__(self):
        for name in ("width", "int_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise EdgeDFAError(f"fixed-point format: {name} must be an integer, got {v!r}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "int_bits", int(self.int_bits))
        if not isinstance(self.signed, (bool, np.bool_)) and self.signed not in (0, 1):
            raise EdgeDFAError(f"fixed-point format: signed must be a bool, got {self.signed!r}")
        object.__setattr__(self, "signed", bool(self.signed))
        if not 1 <= self.width <= MAX_WIDTH:
            raise EdgeDFAError(
                f"fixed-point format {self._name()}: width W={self.width} outside 1..{MAX_WIDTH}"
            )
        frac = self.width - self.int_bits
        if frac > MAX_FRAC:
            raise EdgeDFAError(f"fixed-point format {self._name()}: W - I = {frac} fraction bits is beyond"
                               f" the supported {MAX_FRAC} (an LSB finer than 2^-{MAX_FRAC})")
        if frac < -MAX_FRAC:
            raise EdgeDFAError(f"fixed-point format {self._name()}: its LSB 2^{-frac} is coarser than the"
                               f" supported 2^{MAX_FRAC} (values this large: a diverging run?)")

    def _name(self) -> str:
        return f"ap_{'' if self.signed else 'u'}fixed<{self.width},{self.int_bits}>"

    def __str__(self) -> str:
        return self._name()

    def __repr__(self) -> str:
        return f"FixedFormat.parse({self._name()!r})"

    @classmethod
    def parse(cls, text) -> "FixedFormat":
        """Format from ``ap_fixed<W,I>``, ``ap_ufixed<W,I>``, ``ap_int<W>`` or ``ap_uint<W>``."""
        if isinstance(text, FixedFormat):
            return text
        m = _FORMAT_RE.match(str(text))
        if not m:
            raise EdgeDFAError(
                f"malformed fixed-point format {text!r}; expected e.g. 'ap_fixed<8,3>',"
                " 'ap_ufixed<8,0>', 'ap_int<16>'"
            )
        unsigned, kind, w, i, extra = m.groups()
        if kind == "int":
            if i is not None or extra:
                raise EdgeDFAError(f"malformed fixed-point format {text!r}: ap_int takes one width")
            i = w
        elif i is None:
            raise EdgeDFAError(f"malformed fixed-point format {text!r}: ap_fixed needs <W,I>")
        _check_template_modes(text, extra)
        return cls(int(w), int(i), signed=not unsigned)

    @classmethod
    def with_frac(cls, width: int, frac_bits: int, signed: bool = True) -> "FixedFormat":
        """Format of ``width`` bits with ``frac_bits`` fractional bits."""
        return cls(width, width - frac_bits, signed)

    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def lsb(self) -> float:
        return float(np.ldexp(1.0, -self.frac_bits))

    @property
    def min_code(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def min_value(self) -> float:
        return float(np.ldexp(float(self.min_code), -self.frac_bits))

    @property
    def max_value(self) -> float:
        return float(np.ldexp(float(self.max_code), -self.frac_bits))

    @property
    def code_dtype(self):
        """Smallest signed numpy integer type that holds every code."""
        bits = self.width + (0 if self.signed else 1)
        for dt in (np.int8, np.int16, np.int32):
            if bits <= np.iinfo(dt).bits:
                return np.dtype(dt)
        return np.dtype(np.int64)


def _check_template_modes(text, extra: str) -> None:
    """Validate ``,Q,O,N`` template arguments (ignored: modes are passed explicitly, §1)."""
    args = [a.strip() for a in extra.split(",")[1:]]
    if len(args) > 3:
        raise EdgeDFAError(f"malformed fixed-point format {text!r}: at most <W,I,Q,O,N>")
    for arg, parse in zip(args, (Rounding.parse, Overflow.parse)):
        try:
            parse(arg)
        except EdgeDFAError as exc:
            raise EdgeDFAError(f"fixed-point format {text!r}: {exc}") from None
    if len(args) == 3 and not (args[2].isascii() and args[2].isdigit()):
        raise EdgeDFAError(f"fixed-point format {text!r}: saturation bits N={args[2]!r} is not a count")


def as_format(fmt) -> FixedFormat:
    """FixedFormat from a format or its string."""
    return fmt if isinstance(fmt, FixedFormat) else FixedFormat.parse(fmt)


# --------------------------------------------------------------------------- overflow

def overflow_mask(codes, fmt) -> np.ndarray:
    """True where a wide code lies outside ``fmt``'s range."""
    fmt = as_format(fmt)
    c = np.asarray(codes)
    return (c < fmt.min_code) | (c > fmt.max_code)


def _overflow(codes, width: int, signed: bool, overflow) -> np.ndarray:
    """Wide integer codes into the range of a ``width``-bit register by the overflow mode."""
    overflow = Overflow.parse(overflow)
    c = np.asarray(codes, dtype=np.int64)
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    if overflow is Overflow.AP_WRAP:
        return ((c - lo) & ((1 << width) - 1)) + lo
    if overflow is Overflow.AP_SAT_ZERO:
        return np.where((c < lo) | (c > hi), 0, c)
    if overflow is Overflow.AP_SAT_SYM and signed:
        lo = -hi
    return np.clip(c, lo, hi)


def apply_overflow(codes, fmt, overflow=Overflow.AP_SAT) -> np.ndarray:
    """Bring wide integer codes into ``fmt``'s range by the overflow mode (int64 out)."""
    fmt = as_format(fmt)
    return _overflow(codes, fmt.width, fmt.signed, overflow)


def acc_limits(acc_bits: int):
    """Signed range of an ``acc_bits``-bit accumulator register (wider than any FixedFormat)."""
    return -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1


def acc_step(acc, acc_bits: int, overflow) -> np.ndarray:
    """An accumulator register brought back into its ``acc_bits`` after one addition (§4)."""
    return _overflow(acc, acc_bits, True, overflow)


# --------------------------------------------------------------------------- rounding

def _random_words(rng, shape, step=0) -> np.ndarray:
    """uint32 words for stochastic rounding from an array, a Stream or a numpy Generator."""
    from .prng import Stream

    if rng is None:
        raise EdgeDFAError("Rounding.STOCHASTIC needs a seed or rng argument")
    if isinstance(rng, Stream):
        return rng.words(step, shape).astype(np.int64)
    if isinstance(rng, np.random.Generator):
        return rng.integers(0, 1 << 32, size=shape, dtype=np.int64)
    w = np.asarray(rng)
    if w.shape != tuple(shape):
        raise EdgeDFAError(f"stochastic rounding: {w.shape} random words for a {tuple(shape)} tensor")
    return w.astype(np.int64) & 0xFFFFFFFF


def _round_up(q, above, tie, inexact, negative, rounding):
    """Whether to add one to the floor ``q``; ``above``/``tie``: residual > / == half an LSB."""
    R = Rounding
    if rounding is R.AP_TRN:
        return np.zeros(np.shape(q), dtype=bool)
    if rounding is R.AP_TRN_ZERO:
        return inexact & negative
    if rounding is R.AP_RND:
        return above | tie
    if rounding is R.AP_RND_ZERO:
        return above | (tie & negative)
    if rounding is R.AP_RND_MIN_INF:
        return above
    if rounding is R.AP_RND_INF:
        return above | (tie & ~negative)
    if rounding is R.AP_RND_CONV:
        return above | (tie & ((q % 2) != 0))
    raise AssertionError(rounding)


def _left_shift(x, shift: int):
    """Exact ``x << shift``; EdgeDFAError when a result would not fit in int64."""
    if x.size and (x.max() > (2**63 - 1) >> shift or x.min() < -((2**63) >> shift)):
        raise EdgeDFAError(f"left shift of {shift} bits overflows 64-bit codes")
    return x << shift if shift < 64 else np.zeros_like(x)


def round_shift(codes, shift: int, rounding=Rounding.AP_RND_CONV, rng=None, step=0) -> np.ndarray:
    """``codes * 2**-shift`` rounded to an integer by ``rounding`` (no overflow handling).

    For STOCHASTIC the result is ``floor((x + r) / 2**shift)`` where ``r`` is the top
    ``shift`` bits of the element's 32-bit random word (docs/datapath.md §5).
    """
    rounding = Rounding.parse(rounding)
    x = np.asarray(codes, dtype=np.int64)
    shift = int(shift)
    if shift <= 0:
        return _left_shift(x, -shift)
    if shift > 62:
        if rounding is Rounding.STOCHASTIC:
            raise EdgeDFAError(f"requantize: stochastic right shift of {shift} bits is beyond 62")
        x, shift = _sticky_right(x, shift - 62), 62
    if rounding is not Rounding.STOCHASTIC and COMPILED and x.ndim:
        return _compiled(x, shift, rounding, 0, 0, None, 0)
    q = x >> shift
    residual = x & ((1 << shift) - 1)
    if rounding is Rounding.STOCHASTIC:
        r = _random_words(rng, x.shape, step)
        r = (r >> (32 - shift)) if shift <= 32 else (r << (shift - 32))
        return q + ((residual + r) >> shift)
    half = 1 << (shift - 1)
    return q + _round_up(q, residual > half, residual == half, residual != 0, x < 0, rounding)


def _sticky_right(x, k: int) -> np.ndarray:
    """x >> k with the OR of the dropped bits in the LSB (a sticky bit): a further right shift
    of 2 or more rounds it as it would round x itself, in every deterministic mode (§2)."""
    if k >= 63:  # every magnitude bit is dropped: the sign, and whether anything was there
        return (x >> 63) | (x != 0)
    return (x >> k) | ((x & ((1 << k) - 1)) != 0)


def _widen_into(x, shift: int, dst: FixedFormat, overflow: Overflow):
    """``x << shift`` reduced so it fits int64 yet overflows into ``dst`` exactly as the
    unbounded value would (§3): wrap keeps only the bits that land in the low W; the
    saturating modes only need the side, so magnitudes are capped just past the range."""
    if overflow is Overflow.AP_WRAP:
        if shift >= dst.width:
            return np.zeros_like(x)
        return (x & ((1 << (dst.width - shift)) - 1)) << shift
    shift = min(shift, dst.width + 1)
    cap = ((1 << dst.width) >> shift) + 1  # |x| >= cap overflows after the shift
    return np.clip(x, -cap, cap) << shift


def requantize(codes, src_fmt, dst_fmt, rounding=Rounding.AP_RND_CONV,
               overflow=Overflow.AP_SAT, rng=None, step=0) -> np.ndarray:
    """Codes of ``src_fmt`` to codes of ``dst_fmt``: shift, round, then overflow.

    The only narrowing operation of the datapath.

    >>> requantize(np.array([40, -40]), "ap_fixed<16,8>", "ap_fixed<8,4>", "AP_RND")
    array([ 3, -2])
    """
    src, dst = as_format(src_fmt), as_format(dst_fmt)
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    shift = src.frac_bits - dst.frac_bits
    if shift < 0:
        q = _widen_into(np.asarray(codes, dtype=np.int64), -shift, dst, overflow)
    else:
        x = np.asarray(codes, dtype=np.int64)
        if 0 < shift <= 62 and rounding is not Rounding.STOCHASTIC and COMPILED and x.ndim and dst.width <= 62:
            lo, hi = dst.min_code, dst.max_code
            if overflow is Overflow.AP_SAT_SYM and dst.signed:
                lo = -hi
            return _compiled(x, shift, rounding, lo, hi, overflow, dst.width)
        q = round_shift(x, shift, rounding, rng, step)
    return apply_overflow(q, dst, overflow)


# The compiled one-pass form of round_shift / requantize (edgedfa/rounding.py) for a right
# shift and the deterministic modes; False runs only the numpy code above (the reference).
COMPILED = True
_ROUNDING_CODE = {r: i for i, r in enumerate(Rounding)}
_OVERFLOW_CODE = {o: i for i, o in enumerate(Overflow)}


def _compiled(x, shift, rounding, lo, hi, overflow, width):
    from .rounding import NO_OVERFLOW, requantize_right

    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    omode = NO_OVERFLOW if overflow is None else _OVERFLOW_CODE[overflow]
    requantize_right(flat, shift, _ROUNDING_CODE[rounding], lo, hi, omode, width, out)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------- float edges

def _float_floor_split(y, rng, step):
    """floor(y + r/2**32) for STOCHASTIC, computed exactly as (floor, carry)."""
    f = np.floor(y)
    small = np.abs(y) < 1.0
    ys = np.where(small, y, 0.0)
    big_frac = np.where(small, 0.0, y - f)  # exact for |y| >= 1 (Sterbenz)
    Y = np.floor(np.ldexp(ys, 32)).astype(np.int64)
    frac32 = np.where(small, Y & 0xFFFFFFFF, np.floor(np.ldexp(big_frac, 32)).astype(np.int64))
    f = np.where(small, (Y >> 32).astype(np.float64), f)
    r = _random_words(rng, np.shape(y), step)
    return f + ((frac32 + r) >> 32)


def _scaled(x, fmt: FixedFormat, overflow: Overflow):
    """``x * 2**F`` as float64 with nothing lost: neither overflow to inf nor underflow.

    The input is first reduced to a value that rounds and overflows to the same code:
    modulo 2**I under AP_WRAP (drops whole multiples of 2**W codes, keeps sign, residual
    and parity), clipped just past the range otherwise; nonzero values below 2**-40 LSB
    become +-2**-40 LSB, which floor and every rounding mode (STOCHASTIC: 32 extra bits)
    treat alike.
    """
    span = np.ldexp(1.0, fmt.int_bits)
    x = np.fmod(x, span) if overflow is Overflow.AP_WRAP else np.clip(x, -2 * span, 2 * span)
    tiny = np.ldexp(1.0, -40 - fmt.frac_bits)
    x = np.where((x != 0) & (np.abs(x) < tiny), np.copysign(tiny, x), x)
    return np.ldexp(x, fmt.frac_bits)


def quantize(x, fmt, rounding=Rounding.AP_RND_CONV, overflow=Overflow.AP_SAT,
             seed=None, rng=None, step=0) -> np.ndarray:
    """Float values to int64 codes of ``fmt``.

    NaN raises EdgeDFAError; +-inf saturate to the format's extremes under every overflow
    mode (an infinity has no bits to wrap). STOCHASTIC needs ``seed`` (datapath PRNG,
    quantize stream) or ``rng`` (random words, a Stream, or a numpy Generator).

    >>> quantize(np.array([0.3, -0.3, 9.0]), "ap_fixed<8,3>", "AP_RND_CONV", "AP_SAT")
    array([ 10, -10, 127])
    """
    fmt = as_format(fmt)
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        idx = np.argwhere(np.isnan(x))[0]
        raise EdgeDFAError(
            f"quantize to {fmt}: input has {int(np.isnan(x).sum())} NaN value(s),"
            f" first at index {tuple(int(i) for i in idx)}"
        )
    inf = np.isinf(x)
    y = _scaled(np.where(inf, 0.0, x), fmt, overflow)
    if rounding is Rounding.STOCHASTIC:
        if rng is None and seed is not None:
            from .prng import PURPOSE_QUANTIZE, Stream, stream_id

            rng = Stream(seed, stream_id(0, PURPOSE_QUANTIZE))
        q = _float_floor_split(y, rng, step)
    else:
        f = np.floor(y)
        mid = f + 0.5  # exact: |y| < 2**50 after _scaled; comparisons avoid inexact y - f
        q = f + _round_up(f, y > mid, y == mid, y != f, x < 0, rounding)
    codes = apply_overflow(q.astype(np.int64), fmt, overflow)
    if inf.any():
        top = fmt.max_code
        bottom = -top if (overflow is Overflow.AP_SAT_SYM and fmt.signed) else fmt.min_code
        codes = np.where(x == np.inf, top, np.where(x == -np.inf, bottom, codes))
    return codes


def dequantize(codes, fmt) -> np.ndarray:
    """Codes of ``fmt`` to float64 values (exact)."""
    fmt = as_format(fmt)
    return np.ldexp(np.asarray(codes, dtype=np.float64), -fmt.frac_bits)


# --------------------------------------------------------------------------- tensors

class QTensor(NamedTuple):
    """Integer codes with their format."""

    codes: np.ndarray
    fmt: FixedFormat

    def value(self) -> np.ndarray:
        """Dequantized float64 view (edges and tests only)."""
        return np.ldexp(self.codes.astype(np.float64), -self.fmt.frac_bits)


def bit_length(maxabs: int) -> int:
    """Bits needed for the magnitude ``maxabs`` (0 for 0)."""
    return int(maxabs).bit_length()


def int_bits_for(maxabs: float, headroom: int = 0) -> int:
    """Integer bits (sign included) of a signed format holding ``maxabs`` with headroom."""
    if maxabs <= 0:
        return 1
    return int(np.floor(np.log2(maxabs))) + 2 + headroom


def acc_format(acc_bits: int, frac_bits: int) -> FixedFormat:
    """Format of an accumulator register holding products with ``frac_bits``."""
    return FixedFormat.with_frac(acc_bits, frac_bits)


def narrow_dynamic(codes, fmt: FixedFormat, bits: int, rounding=Rounding.AP_RND,
                   rng=None, step=0) -> QTensor:
    """Keep the top ``bits`` of a wide signed error: shift = bitlen(max|x|) - (bits - 1), then
    no finer than 2^-ERR_FRAC_MAX."""
    return narrow_wide(codes, fmt.frac_bits, bits, rounding, rng, step)


def narrow_wide(codes, frac: int, bits: int, rounding=Rounding.AP_RND, rng=None, step=0) -> QTensor:
    """``narrow_dynamic`` of codes with ``frac`` fraction bits, which may exceed the 64 a format
    holds (an exact product of two fine operands); the shift also brings the result to 64 at
    most, and a result finer than 2^-ERR_FRAC_MAX is then rounded there (datapath §7)."""
    q = _narrow_top(codes, frac, bits, rounding, rng, step)
    codes, frac = error_floor(q.codes, q.fmt.frac_bits, bits, rounding, rng, step)
    return QTensor(codes, FixedFormat.with_frac(bits, frac))


def error_floor(codes, frac: int, bits: int, rounding=Rounding.AP_RND, rng=None, step=0) -> tuple:
    """(codes, frac) of a ``bits``-wide error no finer than 2^-ERR_FRAC_MAX: a finer one is
    rounded there (``rounding``, AP_SAT; §7), so an error times an operand stays <= 64."""
    if frac <= ERR_FRAC_MAX:
        return codes, frac
    lim = (1 << (bits - 1)) - 1
    q = np.clip(round_shift(codes, frac - ERR_FRAC_MAX, rounding, rng, step), -lim - 1, lim)
    if NARROW_TALLIES:
        NARROW_TALLIES[-1](0, 0, np.count_nonzero((q == 0) & (codes != 0)))
    return q, ERR_FRAC_MAX


def _narrow_top(codes, frac: int, bits: int, rounding, rng, step) -> QTensor:
    """The top ``bits`` of a wide tensor under one block exponent (no finer than 2^-64)."""
    codes = np.asarray(codes, dtype=np.int64)
    flat = None
    if COMPILED and codes.size:
        from .rounding import max_abs

        flat = np.ascontiguousarray(codes).reshape(-1)
        maxabs = int(max_abs(flat))
    else:
        maxabs = int(np.abs(codes).max()) if codes.size else 0
    shift = max(0, bit_length(maxabs) - (bits - 1), int(frac) - MAX_FRAC)
    out_fmt = FixedFormat.with_frac(bits, int(frac) - shift)
    rounding = Rounding.parse(rounding)
    if shift == 0 and flat is not None:  # every code fits already: nothing rounds, nothing clips
        if NARROW_TALLIES:
            NARROW_TALLIES[-1](codes.size, 0, 0)
        return QTensor(codes.copy(), out_fmt)
    if 0 < shift <= 62 and rounding is not Rounding.STOCHASTIC and flat is not None and codes.ndim and bits <= 62:
        from .rounding import narrow_right

        sat = np.empty_like(flat)
        clipped, zeroed = narrow_right(flat, shift, _ROUNDING_CODE[rounding], (1 << (bits - 1)) - 1, sat)
        if NARROW_TALLIES:
            NARROW_TALLIES[-1](codes.size, int(clipped), int(zeroed))
        return QTensor(sat.reshape(codes.shape), out_fmt)
    q = round_shift(codes, shift, rounding, rng, step)
    sat = apply_overflow(q, out_fmt, Overflow.AP_SAT)
    if NARROW_TALLIES:
        NARROW_TALLIES[-1](codes.size, np.count_nonzero(sat != q), np.count_nonzero((sat == 0) & (codes != 0)))
    return QTensor(sat, out_fmt)


# Statistics of the narrowings under way (scaling.tallying pushes a counter while a layer's
# errors are computed): values seen, clipped at a rail, rounded to zero. Reporting only.
NARROW_TALLIES: list = []


def align_add(a: QTensor, b: QTensor, bits: int = 40) -> QTensor:
    """Exact sum of two tensors in the finer of their formats (wide result)."""
    return exact_sum([a, b], bits)


def exact_sum(ts, bits: int = 40) -> QTensor:
    """Exact sum of tensors (numpy broadcasting) in the finest of their formats, a nominal
    ``bits``-bit result. Each operand aligned there stays below 2^(62 - bitlen(k - 1)) for k
    operands, so the sum cannot pass int64; formats further apart than that raise instead of
    wrapping (a run whose values are diverging)."""
    f = max(t.fmt.frac_bits for t in ts)
    room = 62 - (len(ts) - 1).bit_length()
    total = 0
    for t in ts:
        s = f - t.fmt.frac_bits
        if t.fmt.width + s > room and t.codes.size and bit_length(np.abs(t.codes).max()) + s > room:
            raise EdgeDFAError(f"exact sum: a {t.fmt} operand aligned {s} bits left to the finest of "
                               f"{len(ts)} formats passes {room} bits (formats 2^{s} apart: a diverging run?)")
        total = total + (t.codes << s)
    return QTensor(total, FixedFormat.with_frac(bits, f))
