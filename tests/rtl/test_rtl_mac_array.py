"""RTL MAC array against hdl_models.mac_array: every accumulator register (tile by tile, every
overflow mode after every addition) and the GEMM's cycle count from the model's cost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from rtlsim import Stream, examples, pack, unpack
from edgedfa.fixed import Overflow
from hdl_models.mac_array import MacArray
from hdl_models.rtl import MODE_PORT, OVERFLOW_CODE

pytestmark = pytest.mark.rtl

PE_LATENCY = 1


def signed_ints(width: int):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0]))


@st.composite
def gemms(draw, p: dict, overflows):
    """A GEMM of up to ~2 tiles a side: operands at their full widths, a bias row or none."""
    m = draw(st.integers(1, 2 * p["ROWS"] + 1))
    n = draw(st.integers(1, 2 * p["COLS"] + 1))
    k = draw(st.integers(1, 12))
    a = draw(st.lists(signed_ints(p["A_W"]), min_size=m * k, max_size=m * k))
    b = draw(st.lists(signed_ints(p["B_W"]), min_size=k * n, max_size=k * n))
    rail = st.sampled_from([-(1 << (p["ACC_W"] - 1)), (1 << (p["ACC_W"] - 1)) - 1])
    init = draw(st.one_of(st.none(), st.lists(st.one_of(signed_ints(p["ACC_W"]), rail), min_size=n, max_size=n)))
    return dict(a=np.array(a, dtype=np.int64).reshape(m, k), b=np.array(b, dtype=np.int64).reshape(k, n),
                init=None if init is None else np.array(init, dtype=np.int64).reshape(1, n),
                overflow=draw(st.sampled_from(overflows)), gap=draw(st.integers(0, 3)))


def feed(prog: Stream, g: dict, p: dict, acc) -> tuple:
    """Stream the GEMM's tiles back to back (row tiles outer, as tile_by_tile); returns the
    first input cycle and {cycle: {PE index: expected register}} (None: a padding PE)."""
    rows, cols = p["ROWS"], p["COLS"]
    (m, k), n = g["a"].shape, g["b"].shape[1]
    init = np.zeros((1, n), dtype=np.int64) if g["init"] is None else g["init"]
    due, first = {}, len(prog.rows)
    for r0 in range(0, m, rows):
        for c0 in range(0, n, cols):
            a = np.zeros((rows, k), dtype=np.int64)
            b = np.zeros((k, cols), dtype=np.int64)
            bias = np.zeros(cols, dtype=np.int64)
            a[:min(rows, m - r0)] = g["a"][r0:r0 + rows]
            b[:, :min(cols, n - c0)] = g["b"][:, c0:c0 + cols]
            bias[:min(cols, n - c0)] = init[0, c0:c0 + cols]
            for kk in range(k):
                t = prog.cycle(in_valid=1, first=int(kk == 0), last=int(kk == k - 1),
                               ovf_mode=OVERFLOW_CODE[g["overflow"]], a_col=pack(a[:, kk], p["A_W"]),
                               b_row=pack(b[kk], p["B_W"]), init_row=pack(bias, p["ACC_W"]))
            for r in range(rows):
                for c in range(cols):
                    live = r0 + r < m and c0 + c < n
                    due.setdefault(t + r + c + PE_LATENCY - 1, {})[r * cols + c] = (
                        int(acc[r0 + r, c0 + c]) if live else None)
    return first, due


def check_array(units, p: dict, cases: list) -> None:
    unit = units.get("mac_array", **p)
    prog = Stream(dict(ovf_mode=0, in_valid=0, first=0, last=0, a_col=0, b_row=0, init_row=0))
    due, spans = {}, []
    for g in cases:
        prog.gap(g["gap"])
        model = MacArray(p["ROWS"], p["COLS"])
        acc, stats = model.gemm(g["a"], g["b"], g["init"], p["ACC_W"], g["overflow"], p["A_W"], p["B_W"],
                                tile_by_tile=True)
        first, gemm_due = feed(prog, g, p, acc)
        for c, regs in gemm_due.items():
            due.setdefault(c, {}).update(regs)
        spans.append((first, max(gemm_due), stats.cycles))
    trace = prog.run(unit, ["res_valid", "res"], tail=p["ROWS"] + p["COLS"] + 2)
    n_pe = p["ROWS"] * p["COLS"]
    bad = []
    for c, row in enumerate(trace):
        valid = unpack(row["res_valid"], 1, n_pe, signed=False)
        regs = unpack(row["res"], p["ACC_W"], n_pe)
        want = due.get(c, {})
        for pe in range(n_pe):
            if valid[pe] != int(pe in want):
                bad.append(f"cycle {c}: PE {pe} res_valid={valid[pe]}, expected {int(pe in want)}")
            elif want.get(pe) is not None and regs[pe] != want[pe]:
                bad.append(f"cycle {c}: PE {pe} res={regs[pe]}, expected {want[pe]}")
    assert not bad, "\n".join(bad[:8])
    for first, last, cycles in spans:  # first input to last result: the model's GEMM cycles
        assert last - first + 1 == cycles


@pytest.mark.parametrize("p", [
    dict(ROWS=2, COLS=3, A_W=8, B_W=8, ACC_W=24),
    dict(ROWS=3, COLS=2, A_W=4, B_W=6, ACC_W=11),
], ids=lambda p: f"{p['ROWS']}x{p['COLS']}-a{p['A_W']}b{p['B_W']}acc{p['ACC_W']}")
def test_mac_array_every_overflow_bit_exact(units, p):
    p = dict(p, OVF=MODE_PORT)
    cases = [g for ovf in Overflow for g in examples(gemms(p, (ovf,)), f"mac array {p} {ovf.name}", 0.5)]
    check_array(units, p, cases)


def test_mac_array_fixed_saturation_bit_exact(units):
    """The build synthesis sees (AP_SAT fixed) on narrow accumulators, where saturation order matters."""
    p = dict(ROWS=2, COLS=2, A_W=8, B_W=8, ACC_W=16, OVF=OVERFLOW_CODE[Overflow.AP_SAT])
    check_array(units, p, examples(gemms(p, (Overflow.AP_SAT,)), f"mac array {p}"))
