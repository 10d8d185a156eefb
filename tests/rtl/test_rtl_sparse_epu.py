"""RTL sparse error-projection unit against hdl_models.error_projection_unit (sparse path):
feedback regenerated from the seed or read from a stored table, binary / ternary / uniform
values, every wide sum (narrowed with err_width 40, which keeps every bit) and the
projection's cycle count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, examples, unpack
from hdl_models.error_projection_unit import ErrorProjectionUnit, Feedback
from hdl_models.mac_array import MacArray
from hdl_models.prng_unit import P_FB_INDEX, P_FB_VALUE, PrngUnit, key_register, stream_of

pytestmark = pytest.mark.rtl

KIND = {"binary": 0, "ternary": 1, "uniform": 2}
WIDE_ERR = 40  # narrow() keeps every bit of a wide sum below 2^39: the model's sums themselves


@st.composite
def projections(draw, lanes: int, k_max: int, e_w: int, values: str, vb: int):
    """A sparse projector (seed, layer, classes, k) and a batch of source errors."""
    c = draw(st.integers(1, 20))
    n_target = draw(st.integers(1, 3 * lanes))
    batch = draw(st.integers(1, 5))
    lo, hi = -(1 << (e_w - 1)), (1 << (e_w - 1)) - 1
    e = draw(st.lists(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0])),
                      min_size=batch * c, max_size=batch * c))
    fb = {"kind": "sparse", "values": values, "bits": vb, "k": draw(st.integers(1, k_max))}
    return dict(fb=fb, layer=draw(st.integers(1, 200)), seed=draw(st.integers(0, 2**32 - 1)), c=c,
                n_target=n_target, batch=batch, e=np.array(e, dtype=np.int64).reshape(batch, c),
                f_e=draw(st.integers(0, 12)), gap=draw(st.integers(0, 3)))


def model_projection(ex: dict, stored: bool):
    """(wide sums (B, n_target), Feedback, its stored table or None) from hdl_models."""
    f = Feedback(ex["fb"], ex["layer"], ex["seed"], (ex["n_target"],), ex["c"])
    prng = PrngUnit()
    table = f.sparse_table(prng) if stored else None
    epu = ErrorProjectionUnit(MacArray(), prng)
    codes, fmt, _ = epu.project(f, ex["e"], ex["f_e"], WIDE_ERR, "AP_RND", table)
    assert fmt.frac_bits == ex["f_e"] + f.frac_bits() + f.gain_shift, "narrow dropped bits: not the wide sums"
    return codes, f, table


def table_words(f: Feedback, table) -> list:
    """The stored table as the unit reads it: per unit i, word i*(k+1) = j0, then its k values."""
    idx, vals = table
    return [int(w) for i in range(f.n_target) for w in [idx[i, 0], *vals[i]]]


def check_projections(units, p: dict, cases: list) -> None:
    lanes, w_w = p["LANES"], p["E_W"] + p["VB"] + 3
    fb_w = max(p["C_W"], p["VB"] if p["VALUES"] == 2 else 2)
    unit = units.get("sparse_epu", **p)
    prog = Stream(dict(start=0, n_target=0, n_src=0, k=0, batch=0, key_idx=0, key_val=0, e_base=0, fb_base=0))
    e_mem, fb_mem, want, spans = [], [], [], []
    for ex in cases:
        wide, f, table = model_projection(ex, not p["REGEN"])
        prog.gap(ex["gap"])
        t = prog.cycle(start=1, n_target=f.n_target, n_src=f.n_classes, k=f.k, batch=ex["batch"],
                       key_idx=key_register(ex["seed"], stream_of(ex["layer"], P_FB_INDEX), 0),
                       key_val=key_register(ex["seed"], stream_of(ex["layer"], P_FB_VALUE), 0),
                       e_base=len(e_mem), fb_base=len(fb_mem))
        e_mem += [int(v) & ((1 << p["E_W"]) - 1) for v in ex["e"].ravel()]
        if table is not None:
            fb_mem += [w & ((1 << fb_w) - 1) for w in table_words(f, table)]
        cycles = ErrorProjectionUnit(MacArray(), PrngUnit(), lanes).adder_cycles(f, ex["batch"])
        prog.gap(cycles - 1)  # the next projection starts as this one's last result leaves
        for i0 in range(0, f.n_target, lanes):  # results in (group, sample) order
            for b in range(ex["batch"]):
                live = min(lanes, f.n_target - i0)
                want.append((b, i0, (1 << live) - 1, [int(v) for v in wide[b, i0:i0 + live]]))
        spans.append((t, t + cycles - 1))
    memories = [dict(addr="e_addr", data="e_data", lanes=lanes, addr_w=p["A_W"], data_w=p["E_W"], words=e_mem)]
    if not p["REGEN"]:
        memories.append(dict(addr="fb_addr", data="fb_data", lanes=lanes, addr_w=p["A_W"], data_w=fb_w,
                             words=fb_mem))
    trace = prog.run(unit, ["out_valid", "out_lane", "out_b", "out_i0", "out_wide"], memories=memories)
    got = [(row["out_b"], row["out_i0"], row["out_lane"],
            unpack(row["out_wide"], w_w, lanes)[:bin(row["out_lane"]).count("1")])
           for row in trace if row["out_valid"] == 1]
    bad = [f"result {n}: (b, i0, lanes, wide) = {g}, expected {w}" for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad and len(got) == len(want), "\n".join(bad[:8]) + f"\n{len(got)} results for {len(want)}"
    last_out = [c for c, row in enumerate(trace) if row["out_valid"] == 1]
    for start, end in spans:  # start to last result: the model's adder_cycles
        assert max(c for c in last_out if c <= end) == end, f"projection started at cycle {start}"


@pytest.mark.parametrize("values", ["binary", "ternary", "uniform"])
@pytest.mark.parametrize("regen", [1, 0], ids=["regenerated", "stored"])
def test_sparse_projection_bit_exact(units, values, regen):
    p = dict(LANES=3, E_W=8, VALUES=KIND[values], VB=6, K_MAX=4, C_W=6, N_W=12, BB_W=4, A_W=14, REGEN=regen)
    cases = examples(projections(3, 4, 8, values, 6), f"sparse epu {values} {regen}")
    check_projections(units, p, cases)
