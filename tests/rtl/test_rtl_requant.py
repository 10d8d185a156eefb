"""RTL requantization unit against hdl_models.requant_unit, cycle by cycle (every §2 rounding
mode incl. STOCHASTIC with PRNG words, every §3 overflow mode, run-time shift)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, check_pipeline, examples, first_valid, lanes_of, pack, unpack
from edgedfa.fixed import FixedFormat, Overflow, Rounding
from hdl_models.prng_unit import stream_of, words
from hdl_models.requant_unit import RequantUnit, requant, shift_round
from hdl_models.rtl import MODE_PORT, OVERFLOW_CODE, ROUNDING_CODE

pytestmark = pytest.mark.rtl

SH_W = 8


def carry_edge(x: int, s: int, d: int) -> int:
    """A random word ``d`` away from the one whose top bits just carry x's dropped bits over
    into the next code (STOCHASTIC's decision boundary), as a 32-bit word."""
    if s <= 0:
        return d & 0xFFFFFFFF
    r = x & ((1 << s) - 1)
    edge = ((1 << s) - r) << (32 - s) if s <= 32 else (1 << 32) - (r >> (s - 32))
    return (edge + d) & 0xFFFFFFFF


@st.composite
def tensors(draw, in_w: int, out_w: int, lanes: int, roundings=tuple(Rounding), overflows=tuple(Overflow)):
    """One tensor's requantization: shift, modes, codes (ties and range edges favoured), and
    random words (from the PRNG, or at STOCHASTIC's carry boundary)."""
    # small shifts, shifts around the formats, shifts past the input's width (only sign bits
    # left), anything the port takes
    s = draw(st.one_of(st.integers(0, 4), st.integers(-out_w - 3, in_w + 2), st.integers(in_w - 2, 62),
                       st.integers(-70, 62)))
    lo, hi = -(1 << (in_w - 1)), (1 << (in_w - 1)) - 1
    # q + 1/2 (+-1 LSB) with q around the output range: the ties that rounding modes split
    tie = st.builds(lambda q, d: min(hi, max(lo, (q << max(s, 0)) + ((1 << (s - 1)) if s > 0 else 0) + d)),
                    st.integers(-(2 << out_w), 2 << out_w), st.integers(-1, 1))
    x = draw(st.lists(st.one_of(st.integers(lo, hi), tie, st.sampled_from([lo, hi, 0, -1])),
                      min_size=1, max_size=8 * lanes))
    seed = draw(st.integers(0, 2**32 - 1))
    rand = [int(w) for w in words(seed, stream_of(1, 1), 0, len(x))]
    step = 1 << max(0, 32 - s)  # one unit of the word's lowest bit that counts
    for i, edge in enumerate(draw(st.lists(st.sampled_from([None, -step, -1, 0, step]), min_size=len(x),
                                           max_size=len(x)))):
        if edge is not None:
            rand[i] = carry_edge(x[i], s, edge)
    return dict(s=s, x=x, rand=rand, rounding=draw(st.sampled_from(roundings)),
                overflow=draw(st.sampled_from(overflows)), f_dst=draw(st.integers(-8, out_w + 8)),
                gap=draw(st.integers(0, 2)))


def expected(ex: dict, out_w: int, signed: bool):
    """hdl_models' codes and saturation flags (code != the rounded value) for one tensor."""
    dst = FixedFormat.with_frac(out_w, ex["f_dst"], signed=signed)
    x, rand = np.array(ex["x"], dtype=np.int64), np.array(ex["rand"], dtype=np.int64)
    codes = requant(x, ex["f_dst"] + ex["s"], dst, ex["rounding"], ex["overflow"], rand)
    if ex["s"] >= 0:
        exact = [int(v) for v in shift_round(x, ex["s"], ex["rounding"], rand)]
    else:
        exact = [int(v) << -ex["s"] for v in ex["x"]]
    return rand, [int(c) for c in codes], [int(c != e) for c, e in zip(codes, exact)]


def simulate(units, params: dict, cases: list):
    p = dict(LANES=2, IN_W=32, OUT_W=8, OUT_SIGNED=1, SH_W=SH_W, RND=MODE_PORT, OVF=MODE_PORT) | params
    lanes, out_w, signed = p["LANES"], p["OUT_W"], bool(p["OUT_SIGNED"])
    unit = units.get("requant_unit", **p)
    prog = Stream(dict(in_valid=0, din=0, shift=0, rnd_mode=0, ovf_mode=0, rword=0))
    sent, spans = {}, []
    for ex in cases:
        rand, codes, sat = expected(ex, out_w, signed)
        prog.gap(ex["gap"])
        cfg = dict(shift=ex["s"] & ((1 << SH_W) - 1), rnd_mode=ROUNDING_CODE[ex["rounding"]],
                   ovf_mode=OVERFLOW_CODE[ex["overflow"]])
        rows = zip(lanes_of(ex["x"], lanes), lanes_of(rand, lanes), lanes_of(codes, lanes), lanes_of(sat, lanes))
        first = None
        for n_row, (x, r, c, f) in enumerate(rows):
            t = prog.cycle(in_valid=1, din=pack(x, p["IN_W"]), rword=pack(r, 32), **cfg)
            first = t if first is None else first
            live = min(lanes, len(ex["x"]) - n_row * lanes)  # padded lanes are not checked
            sent[t] = dict(dout=[c[:live], live], sat=[f[:live], live])
        spans.append((first, t, len(ex["x"])))
    trace = prog.run(unit, ["out_valid", "dout", "sat"])
    for row in trace:  # unpack the buses lane by lane
        row["dout"] = unpack(row["dout"], out_w, lanes, signed)
        row["sat"] = unpack(row["sat"], 1, lanes, False)
    for t, want in sent.items():
        for port, (vals, live) in want.items():
            want[port] = vals
            trace[t + RequantUnit.LATENCY - 1][port] = trace[t + RequantUnit.LATENCY - 1][port][:live]
    return trace, sent, spans, lanes


def check(units, params, cases):
    trace, sent, spans, lanes = simulate(units, params, cases)
    bad = check_pipeline(trace, "out_valid", sent, RequantUnit.LATENCY)
    assert not bad, "\n".join(bad[:8])
    assert first_valid(trace, "out_valid") - min(sent) + 1 == RequantUnit.LATENCY
    model = RequantUnit(lanes)
    for first, last, n in spans:  # back-to-back elements: the model's accounting, measured
        assert last + RequantUnit.LATENCY - first == model.cycles(n)


def mode_cases(params: dict, roundings=tuple(Rounding), overflows=tuple(Overflow)) -> list:
    """Tensors for every rounding mode in turn (each its own hypothesis sequence)."""
    w_in, w_out, lanes = params["IN_W"], params["OUT_W"], params.get("LANES", 1)
    return [ex for rnd in roundings
            for ex in examples(tensors(w_in, w_out, lanes, (rnd,), overflows), f"requant {params} {rnd.name}", 0.5)]


@pytest.mark.parametrize("params", [
    dict(LANES=2, IN_W=32, OUT_W=8, OUT_SIGNED=1),
    dict(LANES=3, IN_W=48, OUT_W=16, OUT_SIGNED=1),
    dict(LANES=2, IN_W=20, OUT_W=5, OUT_SIGNED=0),
], ids=lambda p: f"in{p['IN_W']}-out{p['OUT_W']}{'s' if p['OUT_SIGNED'] else 'u'}")
def test_requant_every_mode_bit_exact(units, params):
    check(units, params, mode_cases(params))


def test_requant_fixed_modes_bit_exact(units):
    """A build with the modes fixed by parameters (what synthesis sees) computes the same."""
    params = dict(LANES=1, IN_W=24, OUT_W=8, RND=ROUNDING_CODE[Rounding.STOCHASTIC],
                  OVF=OVERFLOW_CODE[Overflow.AP_SAT_SYM])
    check(units, params, mode_cases(params, (Rounding.STOCHASTIC,), (Overflow.AP_SAT_SYM,)))
