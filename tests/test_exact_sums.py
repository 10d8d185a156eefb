"""The aligned sums of activations (the Add layer, §7) and of a tensor's errors from several
readers (train's error sums): exact where the operands fit the adder, a named error where
aligning to the finest format would pass 64 bits (they wrapped silently before), the same in
the engine and hdl_models."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, align_add, exact_sum
from hdl_models.requant_unit import align_sum


@st.composite
def operands(draw):
    k = draw(st.integers(1, 5))
    shape = draw(st.sampled_from([(4,), (2, 3)]))
    out = []
    for _ in range(k):
        width = draw(st.integers(2, 24))
        lim = (1 << (width - 1)) - 1
        codes = draw(hnp.arrays(np.int64, shape, elements=st.integers(-lim - 1, lim)))
        out.append((codes, draw(st.integers(-40, 40)), width))
    return out


@settings(max_examples=300, deadline=None)
@given(terms=operands())
def test_exact_sum_is_exact_or_refused_alike(terms):
    f = max(fr for _, fr, _ in terms)
    want = [sum(int(c.flat[i]) << (f - fr) for c, fr, _ in terms) for i in range(terms[0][0].size)]
    room = 62 - (len(terms) - 1).bit_length()
    fits = all(int(np.abs(c).max()).bit_length() + f - fr <= room for c, fr, _ in terms)
    qs = [QTensor(c, FixedFormat.with_frac(w, fr)) for c, fr, w in terms]
    if not fits:
        with pytest.raises(EdgeDFAError, match="diverging"):
            exact_sum(qs)
        with pytest.raises(EdgeDFAError, match="diverging"):
            align_sum(terms)
        return
    got, hw = exact_sum(qs), align_sum(terms)
    assert got.fmt.frac_bits == hw[1] == f
    assert got.codes.reshape(-1).tolist() == np.asarray(hw[0]).reshape(-1).tolist() == want


def test_a_sum_that_wrapped_is_refused():
    """A 16-bit error at fraction -20 added to one at 32 (52 bits apart): 2^15 · 2^52 passed
    int64 and the sum wrapped; now the error names the operand and the distance."""
    a = QTensor(np.array([(1 << 15) - 1]), FixedFormat.with_frac(16, -20))
    b = QTensor(np.array([3]), FixedFormat.with_frac(16, 32))
    with pytest.raises(EdgeDFAError, match="aligned 52 bits left"):
        align_add(a, b)
    with pytest.raises(EdgeDFAError, match="aligned 52 bits left"):
        align_sum([(a.codes, -20, 16), (b.codes, 32, 16)])
