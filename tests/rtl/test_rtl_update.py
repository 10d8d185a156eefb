"""RTL weight-update unit against hdl_models.update_unit.UpdateUnit.apply, cycle by cycle:
every rounding (STOCHASTIC with the unit's own PRNG lanes) and overflow mode, run-time
shift, momentum, and the saturation count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, check_pipeline, examples, first_valid, lanes_of, pack, unpack
from edgedfa.fixed import FixedFormat, Overflow, Rounding
from hdl_models.prng_unit import PrngUnit, stream_of
from hdl_models.rtl import MODE_PORT, OVERFLOW_CODE, ROUNDING_CODE
from hdl_models.update_unit import UpdateUnit

pytestmark = pytest.mark.rtl

SH_W, M_W = 8, 5


def ints(width: int):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, -1, 1]))


@st.composite
def tensors(draw, p: dict, roundings, overflows):
    """One parameter tensor's update: codes, gradient, formats, modes, stream coordinates."""
    n = draw(st.integers(1, 6 * p["LANES"]))
    momentum = bool(p["MOMENTUM"])
    g_w = draw(st.integers(2, p["G_W"]))  # gradients of every magnitude
    if momentum:  # the domain of a V_W-bit velocity register: |v| + |g * 2^(16 - s)| < 2^(V_W - 2)
        s = draw(st.integers(max(-4, g_w + 18 - p["V_W"]), 40))
    else:  # the model refuses a left-shifted gradient beyond 64 bits
        s = draw(st.one_of(st.integers(-p["P_W"] - 3, 30), st.integers(g_w - 62, 62)))
    f_p, lr = draw(st.integers(0, p["P_W"] + 4)), draw(st.integers(0, 8))
    ex = dict(p=draw(st.lists(ints(p["P_W"]), min_size=n, max_size=n)),
              g=draw(st.lists(ints(g_w), min_size=n, max_size=n)),
              f_p=f_p, f_g=f_p + s - lr, lr=lr, s=s,
              rounding=draw(st.sampled_from(roundings)), overflow=draw(st.sampled_from(overflows)),
              seed=draw(st.integers(0, 2**32 - 1)), layer=draw(st.integers(0, 300)),
              purpose=draw(st.sampled_from([1, 2, 16, 17])), step=draw(st.integers(0, 2**20)),
              gap=draw(st.integers(0, 2)))
    if momentum:
        ex["m"] = draw(st.integers(1, (1 << M_W) - 1))
        ex["v"] = draw(st.lists(ints(p["V_W"] - 3), min_size=n, max_size=n))
    return ex


def model_update(ex: dict, p: dict):
    """UpdateUnit.apply on the tensor: (new codes, saturation count, new velocity or None)."""
    fmt = FixedFormat.with_frac(p["P_W"], ex["f_p"])
    vel = np.array(ex["v"], dtype=np.int64) if "v" in ex else None
    return UpdateUnit(p["LANES"]).apply(
        np.array(ex["p"], dtype=np.int64), fmt, np.array(ex["g"], dtype=np.int64), ex["f_g"], ex["lr"],
        ex["rounding"], ex["overflow"], ex["seed"], ex["layer"], ex["purpose"], ex["step"],
        norm_bits=ex.get("norm_bits"), lr_base=ex.get("lr_base"), momentum_shift=ex.get("m"), velocity=vel)


def check_updates(units, p: dict, cases: list) -> None:
    p = dict(dict(SH_W=SH_W, M_W=M_W, V_W=48, RND=MODE_PORT, OVF=MODE_PORT, MOMENTUM=0), **p)
    lanes, momentum = p["LANES"], bool(p["MOMENTUM"])
    unit = units.get("update_unit", **p)
    prog = Stream(dict(key_start=0, seed=0, stream=0, step=0, in_valid=0, idx=0, g=0, p=0, v=0, shift=0,
                       mom_shift=0, rnd_mode=0, ovf_mode=0))
    sent, tensors_sent = {}, []
    for ex in cases:
        new, n_sat, vel = model_update(ex, p)
        prog.gap(ex["gap"])
        prog.cycle(key_start=1, seed=ex["seed"], stream=stream_of(ex["layer"], ex["purpose"]), step=ex["step"])
        prog.gap(PrngUnit.KEY_LATENCY - 1)
        cfg = dict(shift=ex["s"] & ((1 << SH_W) - 1), mom_shift=ex.get("m", 0),
                   rnd_mode=ROUNDING_CODE[ex["rounding"]], ovf_mode=OVERFLOW_CODE[ex["overflow"]])
        v_in = ex.get("v", [0] * len(ex["p"]))
        v_out = vel if momentum else [0] * len(ex["p"])
        rows = zip(lanes_of(ex["g"], lanes), lanes_of(ex["p"], lanes), lanes_of(v_in, lanes),
                   lanes_of(new, lanes), lanes_of(v_out, lanes))
        cycles = []
        for r, (g, pp, v, want_p, want_v) in enumerate(rows):
            live = min(lanes, len(ex["p"]) - r * lanes)
            t = prog.cycle(in_valid=1, idx=r * lanes, g=pack(g, p["G_W"]), p=pack(pp, p["P_W"]),
                           v=pack(v, p["V_W"]), **cfg)
            sent[t] = dict(p_next=want_p[:live], v_next=want_v[:live] if momentum else [0] * live)
            cycles.append((t, live))
        tensors_sent.append((cycles, n_sat, len(ex["p"])))
    trace = prog.run(unit, ["out_valid", "p_next", "v_next", "sat"])
    for row in trace:
        row["p_next"] = unpack(row["p_next"], p["P_W"], lanes)
        row["v_next"] = unpack(row["v_next"], p["V_W"], lanes)
        row["sat"] = unpack(row["sat"], 1, lanes, signed=False)
    out = {t: t + UpdateUnit.LATENCY - 1 for t in sent}
    for t, want in sent.items():
        for port in ("p_next", "v_next"):
            trace[out[t]][port] = trace[out[t]][port][:len(want[port])]
    bad = check_pipeline(trace, "out_valid", sent, UpdateUnit.LATENCY)
    assert not bad, "\n".join(bad[:8])
    assert first_valid(trace, "out_valid") - min(sent) + 1 == UpdateUnit.LATENCY
    model = UpdateUnit(lanes)
    for cycles, n_sat, n in tensors_sent:
        assert sum(sum(trace[out[t]]["sat"][:live]) for t, live in cycles) == n_sat  # the model's count
        assert cycles[-1][0] + UpdateUnit.LATENCY - cycles[0][0] == model.cycles(n)


def per_mode(p: dict, roundings=tuple(Rounding), overflows=tuple(Overflow)) -> list:
    return [ex for rnd in roundings
            for ex in examples(tensors(p, (rnd,), overflows), f"update {p} {rnd.name}", 0.5)]


@pytest.mark.parametrize("p", [
    dict(LANES=2, G_W=24, P_W=8, MOMENTUM=0),
    dict(LANES=2, G_W=32, P_W=12, MOMENTUM=1),
], ids=lambda p: f"g{p['G_W']}-p{p['P_W']}{'-momentum' if p['MOMENTUM'] else ''}")
def test_update_every_mode_bit_exact(units, p):
    check_updates(units, p, per_mode(dict(p, V_W=48)))


def test_update_fixed_modes_bit_exact(units):
    """The default build synthesis sees: STOCHASTIC, AP_SAT fixed, no momentum."""
    p = dict(LANES=1, G_W=24, P_W=8, MOMENTUM=0, V_W=48, RND=ROUNDING_CODE[Rounding.STOCHASTIC],
             OVF=OVERFLOW_CODE[Overflow.AP_SAT])
    check_updates(units, p, per_mode(p, (Rounding.STOCHASTIC,), (Overflow.AP_SAT,)))
