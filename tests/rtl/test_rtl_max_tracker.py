"""RTL max tracker / leading-one detector against hdl_models' block-exponent narrowing (§7),
cycle by cycle: the running bitlen(max|x|), max|x| and the count of flagged codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, check_pipeline, examples, lanes_of, pack
from edgedfa.fixed import FixedFormat, Overflow, Rounding
from hdl_models.requant_unit import MAX_TRACKER_LATENCY, narrow, saturate

pytestmark = pytest.mark.rtl


TRACK_W, TRACK_LANES = 40, 2


@st.composite
def tracked_tensors(draw):
    """Codes of one tensor with a drawn magnitude, and the output format whose rails flag them."""
    top = draw(st.integers(0, TRACK_W - 1))
    lim = 1 << top
    x = draw(st.lists(st.one_of(st.integers(-lim, lim - 1), st.sampled_from([0, -lim, lim - 1])),
                      min_size=1, max_size=6 * TRACK_LANES))
    if draw(st.booleans()):
        x = [0] * len(x)
    return dict(x=x, rail_w=draw(st.integers(2, 24)), gap=draw(st.integers(0, 2)))


def check_tracker(units, cases: list) -> None:
    """bitlen(max|x|) is the shift hdl_models' narrow computes (E = 1 keeps 1 bit: s = bitlen);
    the count is the number of flagged codes (here: outside an output format, by saturate)."""
    unit = units.get("max_tracker", LANES=TRACK_LANES, IN_W=TRACK_W)
    prog = Stream(dict(clear=0, in_valid=0, din=0, flag=0))
    sent = {}
    for ex in cases:
        prog.gap(ex["gap"])
        x = np.array(ex["x"], dtype=np.int64)
        fmt = FixedFormat.with_frac(ex["rail_w"], 0)
        flags = (saturate(x, fmt, Overflow.AP_SAT) != x).astype(np.int64)
        for r, (row, fl) in enumerate(zip(lanes_of(x, TRACK_LANES), lanes_of(flags, TRACK_LANES))):
            t = prog.cycle(clear=int(r == 0), in_valid=1, din=pack(row, TRACK_W), flag=pack(fl, 1))
            seen = x[:(r + 1) * TRACK_LANES]
            _, shifted = narrow(seen, 0, 1, Rounding.AP_TRN)
            sent[t] = dict(bitlen=-shifted.frac_bits, maxabs=int(np.abs(seen).max()),
                           count=int(flags[:(r + 1) * TRACK_LANES].sum()))
    trace = prog.run(unit, ["out_valid", "maxabs", "bitlen", "count"])
    bad = check_pipeline(trace, "out_valid", sent, MAX_TRACKER_LATENCY)
    assert not bad, "\n".join(bad[:8])


def test_max_tracker_bitlen_and_rail_count(units):
    check_tracker(units, examples(tracked_tensors(), "max tracker"))
