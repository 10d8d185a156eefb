"""RTL PRNG unit against hdl_models.prng_unit: the key register and every lane's word, cycle
by cycle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, check_pipeline, examples, lanes_of, unpack
from hdl_models.prng_unit import PrngUnit, key_register, mix32, stream_of

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

