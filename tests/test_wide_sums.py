"""The exact sums of the recurrent cells (datapath §9.6 ``⊕``) against Python integers.

``⊕`` aligns its live terms to the finest fraction among them unless an aligned term would
reach the bound, rounds the finer terms there, and adds: written out here on unbounded
integers, as the spec says it, and compared with the engine's ``wide.add`` and with
``hdl_models``' ``oplus``, including sums of many terms at the bound (a step that several
truncated BPTT chains reach sums one term per chain).
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.fixed import FixedFormat, QTensor, Rounding
from edgedfa.wide import add, sum_headroom
from hdl_models.layers.recurrent import V, oplus

ROUNDINGS = [r for r in Rounding if r is not Rounding.STOCHASTIC]


def _round(x: int, s: int, rounding: Rounding) -> int:
    """x · 2^-s to an integer by a §2 mode, on an unbounded integer."""
    if s <= 0:
        return x << -s
    q, rest, half = x >> s, x & ((1 << s) - 1), 1 << (s - 1)
    up = {Rounding.AP_TRN: False, Rounding.AP_TRN_ZERO: rest != 0 and x < 0,
          Rounding.AP_RND: rest >= half, Rounding.AP_RND_ZERO: rest > half or (rest == half and x < 0),
          Rounding.AP_RND_MIN_INF: rest > half, Rounding.AP_RND_INF: rest > half or (rest == half and x >= 0),
          Rounding.AP_RND_CONV: rest > half or (rest == half and q & 1 == 1)}[rounding]
    return q + int(up)


def spec_sum(terms, rounding):
    """(codes, fraction) of ⊕ over (codes, frac) terms on Python integers; None: no live term.
    The bound is 2^(60 - h), h = max(0, bitlen(k) - 3) for k live terms: every sum of them
    stays within int64."""
    live = [(c, f) for c, f in terms if np.any(c)]
    if not live:
        return None
    bound = 60 - max(0, len(live).bit_length() - 3)
    frac = min([max(f for _, f in live)] + [f + bound - int(np.abs(c).max()).bit_length() for c, f in live])
    out = [sum(_round(int(c.flat[i]), f - frac, rounding) for c, f in live) for i in range(live[0][0].size)]
    assert all(-(1 << 63) <= v < 1 << 63 for v in out)
    return out, frac


@st.composite
def sums(draw):
    """Up to 12 terms of one shape, codes up to 62 bits, fractions up to 70 apart."""
    n = draw(st.integers(1, 12))
    shape = draw(st.sampled_from([(3,), (2, 3)]))
    top = draw(st.integers(2, 62))
    terms = []
    for _ in range(n):
        width = draw(st.integers(1, top))
        lim = (1 << (width - 1)) - 1 if width > 1 else 1
        codes = draw(hnp.arrays(np.int64, shape, elements=st.one_of(
            st.sampled_from([0, lim, -lim]), st.integers(-lim, lim))))
        terms.append((codes, draw(st.integers(-30, 40))))
    if draw(st.booleans()):  # many terms at the bound, one far finer: the worst case for the sum
        terms = [(np.full(shape, (1 << 15) - 1, np.int64), 0) for _ in range(n)] + [(np.ones(shape, np.int64), 60)]
    return terms, draw(st.sampled_from(ROUNDINGS))


@settings(max_examples=300, deadline=None)
@given(case=sums())
def test_wide_sum_is_the_spec_on_unbounded_integers(case):
    terms, rounding = case
    want = spec_sum(terms, rounding)
    got = add([QTensor(c, FixedFormat.with_frac(48, f)) for c, f in terms], rounding)
    hw = oplus([V(c, f) for c, f in terms], rounding)
    if want is None:
        assert got is None and hw is None
        return
    for codes, frac in ((got.codes, got.fmt.frac_bits), (hw.codes, hw.frac)):
        assert frac == want[1]
        assert codes.reshape(-1).tolist() == want[0]


def test_sums_of_up_to_seven_terms_keep_the_bound_of_before():
    """The headroom starts at eight terms: every result of before with fewer terms stands."""
    assert [sum_headroom(k) for k in range(1, 18)] == [0] * 7 + [1] * 8 + [2] * 2


def test_nine_terms_at_the_bound_no_longer_wrap():
    """Nine terms of 2^15 - 1 at fraction 0 with one at fraction 60: aligned just under 2^60 each
    before, their sum passed 2^63 and wrapped to a negative number."""
    terms = [(np.full(2, (1 << 15) - 1, np.int64), 0)] * 9 + [(np.ones(2, np.int64), 60)]
    for codes, frac in ((lambda t: (t.codes, t.fmt.frac_bits))(add([QTensor(c, FixedFormat.with_frac(48, f))
                                                                     for c, f in terms], Rounding.AP_RND)),
                        (lambda v: (v.codes, v.frac))(oplus([V(c, f) for c, f in terms], Rounding.AP_RND))):
        assert np.allclose(codes.astype(np.float64) * 2.0 ** -frac, 9 * ((1 << 15) - 1))
