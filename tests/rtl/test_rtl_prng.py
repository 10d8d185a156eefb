"""RTL PRNG unit against hdl_models.prng_unit: the key register and every lane's word, cycle
by cycle; and the max tracker / leading-one detector against hdl_models' narrowing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from cosim import Stream, check_pipeline, examples, lanes_of, pack, unpack
from edgedfa.fixed import FixedFormat, Overflow, Rounding
from hdl_models.prng_unit import PrngUnit, key_register, mix32, stream_of
from hdl_models.requant_unit import MAX_TRACKER_LATENCY, narrow, saturate

pytestmark = pytest.mark.rtl

U32 = st.integers(0, 2**32 - 1)
LANES = 3


@st.composite
def word_requests(draw):
    """A key (seed, stream, step) and the index ranges read with it (in order or anywhere)."""
    stream = draw(st.one_of(st.builds(stream_of, st.integers(0, 300), st.integers(1, 8)), U32))
    starts = draw(st.lists(st.one_of(st.integers(0, 64), U32), min_size=1, max_size=4))
    return dict(seed=draw(U32), stream=stream, step=draw(st.one_of(st.integers(0, 1000), U32)),
                reads=[(i0, draw(st.integers(1, 4 * LANES))) for i0 in starts])


def test_prng_words_bit_exact(units):
    unit = units.get("prng_unit", LANES=LANES)
    prog = Stream(dict(key_start=0, seed=0, stream=0, step=0, idx_valid=0, idx=0))
    keys, sent, spans = {}, {}, []
    for req in examples(word_requests(), "prng"):
        t = prog.cycle(key_start=1, seed=req["seed"], stream=req["stream"], step=req["step"])
        key = key_register(req["seed"], req["stream"], req["step"])
        keys[t] = key
        prog.gap(PrngUnit.KEY_LATENCY - 1)  # the first index enters as the key lands
        for i0, n in req["reads"]:
            idx = (np.arange(i0, i0 + n, dtype=np.uint64) & np.uint64(0xFFFFFFFF))
            want = mix32(np.uint64(key) ^ idx)  # hdl_models' hash of the key register and i
            rows = lanes_of(want.astype(np.int64), LANES)
            first = len(prog.rows)
            for r, row in enumerate(rows):
                t = prog.cycle(idx_valid=1, idx=(i0 + r * LANES) & 0xFFFFFFFF)
                sent[t] = dict(words=row[:min(LANES, n - r * LANES)])
            spans.append((first, t, n))
    trace = prog.run(unit, ["key_ready", "key", "word_valid", "words"])
    for row in trace:
        row["words"] = unpack(row["words"], 32, LANES, signed=False)
    for t, want in sent.items():
        trace[t + PrngUnit.LATENCY - 1]["words"] = trace[t + PrngUnit.LATENCY - 1]["words"][:len(want["words"])]
    bad = check_pipeline(trace, "word_valid", sent, PrngUnit.LATENCY)
    assert not bad, "\n".join(bad[:8])
    for t, key in keys.items():  # key_start at t: key_ready and the key KEY_LATENCY cycles later
        busy = PrngUnit.KEY_LATENCY - 1
        assert [trace[c]["key_ready"] for c in range(t, t + busy)] == [0] * busy
        done = trace[t + busy]
        assert (done["key_ready"], done["key"]) == (1, key), f"key_start at cycle {t}"
    model = PrngUnit(LANES)
    for first, last, n in spans:
        assert last + PrngUnit.LATENCY - first == model.cycles(n)


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


def test_max_tracker_bitlen_and_rail_count(units):
    """bitlen(max|x|) is the shift hdl_models' narrow computes (E = 1 keeps 1 bit: s = bitlen);
    the count is the number of flagged codes (here: outside an output format, by saturate)."""
    unit = units.get("max_tracker", LANES=TRACK_LANES, IN_W=TRACK_W)
    prog = Stream(dict(clear=0, in_valid=0, din=0, flag=0))
    sent = {}
    for ex in examples(tracked_tensors(), "max tracker"):
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
