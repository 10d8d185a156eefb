"""Adam's moment registers when the gradient's fraction is far from the register's (§12).

``m' + round((ĝ' − m') >> a)`` aligns both operands exactly to the finer fraction. A gradient
2^47 finer than the register (or an all-zero one that keeps a fine fraction) shifted the
register's codes past 64 bits: the engine's reference, its compiled kernel and ``hdl_models``
all wrapped, the same wrong codes in each (v could become all zero and stop every step). Now
each computes the exact sum: checked here against rational arithmetic, and between the three.
"""

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.numerics import Numerics
from edgedfa.prng import Stream
from edgedfa.update import adam_update, adam_update_reference, ema
from hdl_models.update_unit import UpdateUnit, moving

from strategies import moment_registers


def _value(code: int, frac: int) -> Fraction:
    return Fraction(code) * Fraction(2) ** -frac


def exact_moment(old, new, k: int, bits: int):
    """The specification in rationals: the sum at the finer fraction (its shift rounded to
    nearest even there), then its top ``bits`` bits to nearest even, saturated."""
    nc, nf = [int(x) for x in np.ravel(new[0])], new[1]
    if old is None or not np.any(old[0]):
        old = (np.zeros(len(nc), np.int64), nf)
    oc, of = [int(x) for x in np.ravel(old[0])], old[1]
    f = max(of, nf)
    sums = [_value(o, of) + _value(round((_value(n, nf) - _value(o, of)) * Fraction(2) ** (f - k)), f)
            for o, n in zip(oc, nc)]  # round(): nearest, ties to even
    ints = [s * Fraction(2) ** f for s in sums]
    assert all(x.denominator == 1 for x in ints)
    d = max(0, int(max(abs(x) for x in ints)).bit_length() - (bits - 1))
    lim = 2 ** (bits - 1) - 1
    codes = [min(max(round(x / 2 ** d), -lim - 1), lim) for x in ints]
    return np.array(codes, np.int64).reshape(np.shape(new[0])), f - d


@st.composite
def far_apart(draw):
    """A moment register and a narrowed gradient term whose fractions may be 100 bits apart."""
    shape = draw(st.sampled_from([(1,), (5,), (2, 3)]))
    bits = draw(st.integers(4, 32))
    lim = (1 << (bits - 1)) - 1
    old = draw(moment_registers(shape, bits))
    new = draw(hnp.arrays(np.int64, shape, elements=st.one_of(st.just(0), st.integers(-lim - 1, lim))))
    return old, (new, draw(st.integers(-90, 130))), draw(st.integers(0, 16)), bits


@settings(max_examples=400, deadline=None)
@given(case=far_apart())
def test_the_moment_update_is_exact_at_any_distance(case):
    old, new, k, bits = case
    want = exact_moment(old, new, k, bits)
    for got in (ema(old, new, k, bits), moving(old, new, k, bits)):
        assert got[1] == want[1] and np.array_equal(got[0], want[0])


def test_an_all_zero_gradient_with_a_fine_fraction_decays_the_register():
    """The case that wrapped: m = 16000 at fraction 0 and an all-zero gradient at fraction 60,
    a = 3: m moves 1/8 of the way to zero (14000), where it gave 0 and 28672 before."""
    old, new = (np.array([16000, -9000], np.int64), 0), (np.zeros(2, np.int64), 60)
    for got in (ema(old, new, 3, 16), moving(old, new, 3, 16)):
        assert [_value(int(c), got[1]) for c in got[0]] == [14000, -7875]


@st.composite
def adam_far_apart(draw):
    """A whole Adam step (deterministic rounding, so the engine and hdl_models see the same
    words) with moments whose fractions are far from the gradient's."""
    shape = draw(st.sampled_from([(3,), (2, 4)]))
    bits = draw(st.sampled_from([8, 16, 24]))
    g_frac = draw(st.integers(-20, 64))  # a gradient format holds at most 64 fraction bits
    g = draw(hnp.arrays(np.int64, shape, elements=st.one_of(st.just(0), st.integers(-2 ** 20, 2 ** 20))))
    moments = {w: draw(moment_registers(shape, bits)) for w in ("m", "v")}
    return dict(shape=shape, bits=bits, g=g, g_frac=g_frac, moments=moments, step=draw(st.integers(0, 3000)),
                p=draw(hnp.arrays(np.int64, shape, elements=st.integers(-128, 127))))


@settings(max_examples=200, deadline=None)
@given(case=adam_far_apart())
def test_engine_kernel_reference_and_hdl_models_agree_far_apart(case):
    num = Numerics.from_bits(8, update_rule="adam", moment_bits=case["bits"], update_rounding="AP_RND_CONV")
    pfmt = FixedFormat(8, 1)
    results = []
    for fn in (adam_update, adam_update_reference):
        state = {}
        for w, reg in case["moments"].items():
            if reg is not None:
                state[f"adam_{w}:W"], state[f"adam_{w}_frac:W"] = reg[0].copy(), np.array(reg[1])
        new, clipped, _ = fn(QTensor(case["p"], pfmt), QTensor(case["g"], FixedFormat.with_frac(32, case["g_frac"])),
                             9, num, Stream(7, 0x101), case["step"], state, "W")
        results.append((new.codes, clipped, state["adam_m:W"], int(state["adam_m_frac:W"]), state["adam_v:W"],
                        int(state["adam_v_frac:W"])))
    unit = UpdateUnit()
    for fn in (unit.adam, unit.adam_reference):
        moments = {w: (reg[0].copy(), reg[1]) for w, reg in case["moments"].items() if reg is not None}
        new, clipped = fn(case["p"], pfmt, case["g"], case["g_frac"], 9, "AP_RND_CONV", "AP_SAT", 7, 0, 0,
                          case["step"], num, moments)
        results.append((new, clipped, moments["m"][0], moments["m"][1], moments["v"][0], moments["v"][1]))
    first = results[0]
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(first, other))
