"""Hypothesis strategies shared by the test suite: formats, modes, codes, floats, GEMM operands.

Import them as ``from strategies import formats, code_arrays`` (tests/ is on sys.path under
pytest's default rootdir-relative import mode). Every strategy draws small sizes so a
property runs in milliseconds; widen them locally with the ``thorough`` profile.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.fixed import MAX_WIDTH, FixedFormat, Overflow, Rounding

MAX_FRAC_OFFSET = 64  # §1: |W - I| <= 64

NEAREST_MODES = (Rounding.AP_RND, Rounding.AP_RND_ZERO, Rounding.AP_RND_MIN_INF,
                 Rounding.AP_RND_INF, Rounding.AP_RND_CONV)
TRUNCATING_MODES = (Rounding.AP_TRN, Rounding.AP_TRN_ZERO)
DETERMINISTIC_MODES = TRUNCATING_MODES + NEAREST_MODES
OVERFLOW_MODES = tuple(Overflow)


@st.composite
def formats(draw, min_width: int = 1, max_width: int = MAX_WIDTH, signed=None,
            min_frac: int = -16, max_frac: int | None = None) -> FixedFormat:
    """Any legal FixedFormat; ``signed=None`` draws both kinds.

    Fraction bits range over ``min_frac .. max_frac`` (default ``W + 16``), clipped to the
    legal ``|F| <= 64``, so formats with all their bits below or above the point appear.
    """
    width = draw(st.integers(min_width, max_width))
    lo = max(min_frac, -MAX_FRAC_OFFSET)
    hi = min(width + 16 if max_frac is None else max_frac, MAX_FRAC_OFFSET)
    frac = draw(st.integers(lo, max(lo, hi)))
    is_signed = draw(st.booleans()) if signed is None else signed
    return FixedFormat.with_frac(width, frac, signed=is_signed)


def signed_formats(max_width: int = MAX_WIDTH, **kwargs) -> st.SearchStrategy[FixedFormat]:
    """Signed (``ap_fixed``) formats up to ``max_width`` bits."""
    return formats(max_width=max_width, signed=True, **kwargs)


def unsigned_formats(max_width: int = MAX_WIDTH, **kwargs) -> st.SearchStrategy[FixedFormat]:
    """Unsigned (``ap_ufixed``) formats up to ``max_width`` bits."""
    return formats(max_width=max_width, signed=False, **kwargs)


def rounding_modes(stochastic: bool = False) -> st.SearchStrategy[Rounding]:
    """Rounding modes; STOCHASTIC only when asked (it needs random words)."""
    modes = tuple(Rounding) if stochastic else DETERMINISTIC_MODES
    return st.sampled_from(modes)


def overflow_modes() -> st.SearchStrategy[Overflow]:
    """Every overflow mode."""
    return st.sampled_from(OVERFLOW_MODES)


def codes(fmt: FixedFormat) -> st.SearchStrategy[int]:
    """One in-range code of ``fmt``, shrinking toward 0, extremes included."""
    lo, hi = fmt.min_code, fmt.max_code
    return st.one_of(st.sampled_from((lo, hi, 0 if lo <= 0 else lo)), st.integers(lo, hi))


def code_arrays(fmt: FixedFormat, shape) -> st.SearchStrategy[np.ndarray]:
    """int64 arrays of in-range codes of ``fmt``; ``shape`` is a tuple or a strategy of one."""
    return hnp.arrays(np.int64, shape, elements=codes(fmt))


def wide_codes(bits: int = 62) -> st.SearchStrategy[int]:
    """Signed integers of up to ``bits`` bits (unformatted accumulator values)."""
    lim = 1 << (bits - 1)
    return st.one_of(st.integers(-lim, lim - 1), st.integers(-64, 64))


def floats_near(fmt: FixedFormat) -> st.SearchStrategy[float]:
    """Finite floats that exercise ``fmt``: ties and near-ties of its LSB, its extremes,
    values just outside the range, tiny and huge magnitudes."""
    lsb = fmt.lsb

    @st.composite
    def on_grid(draw):  # k/4 LSB, so exact ties (k odd * 2) and quarters appear often
        k = draw(st.integers(4 * fmt.min_code - 12, 4 * fmt.max_code + 12))
        return float(np.ldexp(float(k), -fmt.frac_bits - 2))

    @st.composite
    def near_tie(draw):  # one float ulp either side of a tie
        k = draw(st.integers(fmt.min_code - 2, fmt.max_code + 1))
        tie = (k + 0.5) * lsb
        return float(np.nextafter(tie, draw(st.sampled_from((-np.inf, np.inf)))))

    span = max(abs(fmt.min_value), fmt.max_value, lsb)
    return st.one_of(
        on_grid(), near_tie(),
        st.floats(-4 * span, 4 * span, allow_nan=False, allow_infinity=False),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from((fmt.min_value, fmt.max_value, 0.0, -0.0, 5e-324, -5e-324,
                         float(np.nextafter(-0.5 * lsb, 0.0)), -0.5 * lsb, 0.5 * lsb)),
    )


def float_arrays(fmt: FixedFormat, shape) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays drawn from ``floats_near(fmt)``."""
    return hnp.arrays(np.float64, shape, elements=floats_near(fmt))


def seeds() -> st.SearchStrategy[int]:
    """PRNG seeds (any 32-bit value)."""
    return st.integers(0, 2**32 - 1)


def small_shapes(max_dims: int = 3, max_side: int = 6) -> st.SearchStrategy[tuple]:
    """Array shapes with 1..max_dims dimensions of 1..max_side each."""
    return hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=max_side)


@st.composite
def int_matrices(draw, rows: int, cols: int, bits: int) -> np.ndarray:
    """A (rows, cols) int64 matrix of signed ``bits``-bit codes from a seeded numpy RNG,
    with a drawn share of the extreme codes (worst case for overflow)."""
    rng = np.random.default_rng(draw(seeds()))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    m = rng.integers(lo, hi, size=(rows, cols), endpoint=True, dtype=np.int64)
    extreme = rng.random((rows, cols)) < draw(st.sampled_from((0.0, 0.3, 1.0)))
    return np.where(extreme, rng.choice(np.array([lo, hi]), size=(rows, cols)), m)


@st.composite
def gemm_cases(draw, max_m: int = 9, max_k: int = 40, max_n: int = 9, max_operand_bits: int = 16):
    """``(a, b, acc_bits, overflow, init)`` for integer GEMM: random shapes (empty ones
    included), operand widths, accumulators from 2 bits (always overflowing) to 62, every
    overflow mode, and ``init`` absent, full, a row (bias per column) or a column."""
    m, k, n = (draw(st.integers(lo, hi)) for lo, hi in ((0, max_m), (0, max_k), (0, max_n)))
    a_bits = draw(st.integers(1, max_operand_bits))
    b_bits = draw(st.integers(1, max_operand_bits))
    a = draw(int_matrices(m, k, a_bits))
    b = draw(int_matrices(k, n, b_bits))
    need = a_bits + b_bits + max(k, 1).bit_length()
    acc_bits = draw(st.one_of(st.integers(2, 62), st.integers(max(2, need - 6), min(62, need + 2))))
    overflow = draw(overflow_modes())
    init_kind = draw(st.sampled_from(("none", "full", "row", "col")))
    init_bits = draw(st.integers(1, min(acc_bits + 2, 60)))
    init = {"none": None,
            "full": lambda: draw(int_matrices(m, n, init_bits)),
            "row": lambda: draw(int_matrices(1, n, init_bits))[0],
            "col": lambda: draw(int_matrices(m, 1, init_bits))}[init_kind]
    return a, b, acc_bits, overflow, (init() if init is not None else None)


@st.composite
def moment_registers(draw, shape, bits):
    """An Adam moment register as a layer holds it: absent (None), all zero, or (codes, frac)
    with codes at the register's rails and any exponent."""
    kind = draw(st.sampled_from(["absent", "zero", "codes"]))
    if kind == "absent":
        return None
    lim = (1 << (bits - 1)) - 1
    codes = draw(hnp.arrays(np.int64, shape, elements=st.one_of(st.sampled_from((-lim - 1, lim, 0, 1)),
                                                                 st.integers(-lim - 1, lim))))
    if kind == "zero":
        codes[...] = 0
    return codes, draw(st.integers(-90, 120))


@st.composite
def adam_operands(draw):
    """One Adam update's operands (a dict): shape, parameter codes and format, a gradient in
    its format or at the int64 rails, moment width and shifts, learning-rate shift, step."""
    shape = draw(st.sampled_from([(1,), (7,), (3, 5), (2, 3, 4)]))
    pfmt = draw(formats(min_width=2, max_width=24))
    gfmt = FixedFormat.with_frac(draw(st.sampled_from([8, 16, 32, 48])), draw(st.integers(-16, 64)))
    rails = hnp.arrays(np.int64, shape, elements=wide_codes(64))  # past any format: the int64 rails
    return dict(shape=shape, p=draw(code_arrays(pfmt, shape)), pfmt=pfmt, gfmt=gfmt,
                g=draw(st.one_of(code_arrays(gfmt, shape), rails)), bits=draw(st.integers(4, 32)),
                beta1=draw(st.integers(1, 16)), beta2=draw(st.integers(1, 16)), lr=draw(st.integers(-40, 90)),
                step=draw(st.one_of(st.integers(0, 40), st.integers(0, 2**31))))
