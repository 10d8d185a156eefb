"""The recurrent cells' compiled time loops (layers/cell_loops.py, kernels/cells.py) against the
Python cells (the reference): the same Y, final states, per-step records, gradients, input
errors and narrowing tallies, bit for bit, over random shapes, formats and modes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import formats, overflow_modes, rounding_modes, wide_codes

import edgedfa.fixed as fixed
from edgedfa.bench.workloads import Workload, dataset, engine
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, quantize
from edgedfa.graph import Node
from edgedfa.layers import cell_loops
from edgedfa.layers.base import LayerSpec, layer_class
from edgedfa.numerics import Numerics

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
COVERED = ("GRU", "LSTM", "RNN")  # the ops with a compiled loop


@st.composite
def cell_cases(draw, ops=COVERED):
    """(layer, x, errors at the outputs) of a random recurrent layer, calibrated."""
    op = draw(st.sampled_from(ops))
    H, T, N, n_in = draw(st.integers(1, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    D = 2 if direction == "bidirectional" else 1
    act, weight = draw(st.integers(4, 16)), draw(st.integers(4, 16))
    num = Numerics(weight_bits=weight, act_bits=act, err_bits=draw(st.integers(4, 16)),
                   bias_bits=draw(st.integers(4, 32)),
                   acc_bits=draw(st.sampled_from([6, 10, 16, 20, 24, 32, 48])),
                   acc_overflow=draw(overflow_modes()), act_rounding=draw(rounding_modes()),
                   act_overflow=draw(overflow_modes()), err_rounding=draw(rounding_modes()),
                   gate_bits=draw(st.none() | st.integers(2, 16)),
                   state_err_bits=draw(st.none() | st.integers(2, 24)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([0.05, 0.5, 2.0, 8.0]))
    G = GATES[op]
    params = {"W": rng.uniform(-scale, scale, (D, G * H, n_in)), "R": rng.uniform(-scale, scale, (D, G * H, H))}
    if draw(st.booleans()):
        params["B"] = rng.uniform(-scale, scale, (D, 2 * G * H))
    layout = draw(st.sampled_from([0, 1]))
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = draw(st.sampled_from([0, 1]))
    if op == "RNN":
        attrs["activations"] = [draw(st.sampled_from(["Tanh", "Sigmoid", "Relu"])) for _ in range(D)]
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    bptt = draw(st.sampled_from([None, 0, 1, 2, 5]))
    layer = layer_class(op)(Node("cell", op, ["x"], outs, attrs, params),
                            LayerSpec(2, num, 5, [(T, n_in)], extra={"bptt_steps": bptt}))
    fmt = FixedFormat(act, draw(st.integers(-1, 5)))
    shape = (N, T, n_in) if layout else (T, N, n_in)
    x = QTensor(quantize(rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 10.0])), fmt), fmt)
    try:
        layer.calibrate([x])  # a relu RNN's h and an LSTM's cell: formats from the data
    except EdgeDFAError:
        assume(False)  # formats past the supported range: nothing to compare
    shapes = [(N, T, D, H) if layout else (T, D, N, H)] + [(N, D, H) if layout else (D, N, H)] * (len(outs) - 1)
    dy = []
    for shape in shapes:
        e = draw(st.integers(2, 16))
        codes = rng.integers(-(1 << (e - 1)), 1 << (e - 1), size=shape)
        int_bits = draw(st.integers(-4, 4) | st.sampled_from([-30, 60]))  # extremes: formats at their limits
        dy.append(QTensor(codes, FixedFormat(e, int_bits)) if draw(st.booleans()) else None)
    return layer, x, dy


def run(layer, x, dy, compiled: bool):
    """Forward (training) and backward with the compiled loops on or off: everything they
    return, the records, and the narrowing tallies; or the error raised (both paths must
    raise alike)."""
    tallies = []
    layer.peaks.clear()  # the exponent unit's view of this run only
    for k in [k for k in layer.state if k.startswith("tally:")]:
        del layer.state[k]
    cell_loops.COMPILED = compiled
    fixed.NARROW_TALLIES.append(lambda n, c, z: tallies.append((int(n), int(c), int(z))))
    try:
        ys, cache = layer.forward([x], train=True)
        recs = [{k: (c["recs"].fmts[k], c["recs"].arrays[k].tolist()) for k in c["recs"].arrays}
                for c in cache["caches"]]
        dxs, grads = layer.backward(cache, dy, [True])
    except EdgeDFAError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        cell_loops.COMPILED = True
        fixed.NARROW_TALLIES.pop()
    flat = lambda t: None if t is None else (t.fmt, t.codes.shape, t.codes.tolist())  # noqa: E731
    observed = (dict(layer.peaks), {k: v.tolist() for k, v in layer.state.items() if k.startswith("tally:")})
    return ([flat(y) for y in ys], recs, [flat(d) for d in dxs], {k: flat(g) for k, g in grads.items()},
            sum(np.array(t) for t in tallies).tolist() if tallies else [], observed)


@given(x=st.lists(wide_codes(64), min_size=1, max_size=12), dst=formats(), shift=st.integers(-70, 62),
       rounding=rounding_modes(), overflow=overflow_modes())
def test_requantize_one_is_fixed_requantize(x, dst, shift, rounding, overflow):
    """The scalar requantization every compiled cell step uses (rounding.requantize_one through
    layers/cell_loops.requantize_into) against fixed.requantize: any int64 code, any shift the
    reference takes (left shifts widened into the destination), every deterministic mode."""
    src = FixedFormat.with_frac(48, dst.frac_bits + shift) if abs(dst.frac_bits + shift) <= 64 else None
    assume(src is not None)
    codes = np.array([x], np.int64)
    out = np.zeros_like(codes)
    cell_loops.requantize_into(out, QTensor(codes, src), dst, rounding, overflow)
    assert out.tolist() == fixed.requantize(codes, src, dst, rounding, overflow).tolist()


@given(case=cell_cases())
def test_compiled_loop_equals_the_python_cells(case):
    layer, x, dy = case
    assert run(layer, x, dy, True) == run(layer, x, dy, False)


@pytest.mark.parametrize("lbr", [0, 1])
def test_compiled_loop_runs_and_saturating_small_accumulators_agree(lbr):
    """The bench's shape at a smaller size: the compiled loop is taken (no fallback), and an
    8-bit accumulator that saturates on every step gives the reference's bits."""
    rng = np.random.default_rng(lbr)
    for acc_bits in (32, 8):
        num = replace(Numerics.from_bits(8), acc_bits=acc_bits)
        H, T, N = 16, 9, 5
        params = {"W": rng.uniform(-1, 1, (1, 3 * H, 2)), "R": rng.uniform(-1, 1, (1, 3 * H, H)),
                  "B": rng.uniform(-1, 1, (1, 6 * H))}
        layer = layer_class("GRU")(Node("g", "GRU", ["x"], ["Y", "Y_h"], {"hidden_size": H, "linear_before_reset": lbr},
                                        params), LayerSpec(0, num, 1, [(T, 2)]))
        fmt = FixedFormat(8, 3)
        x = QTensor(quantize(rng.normal(size=(T, N, 2)), fmt), fmt)
        layer.calibrate([x])
        xg = layer._input_gemm(0, x)
        assert cell_loops.gru_forward(layer, 0, xg, True) is not None
        dy = [QTensor(rng.integers(-127, 128, size=(T, 1, N, H)), FixedFormat(8, -2)), None]
        assert run(layer, x, dy, True) == run(layer, x, dy, False)


@pytest.mark.parametrize("arch", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("algo", ["bp", "sdfa"])
def test_training_gives_the_same_weights_with_the_compiled_loops_on_and_off(arch, algo):
    """A few training steps of a recurrent classifier: parameters and layer state (exponent
    counters and floors, the LSTM cell's format, tallies) identical either way."""
    w = Workload(f"tiny-{arch}", f"{arch}-12 over 10 steps", arch, 16, "random", (10, 3), 12)
    ds = dataset(w)
    engines = {}
    for compiled in (True, False):
        cell_loops.COMPILED = compiled
        try:
            e = engine(w, algo, ds)
            for s in range(4):
                e.step(s)
        finally:
            cell_loops.COMPILED = True
        engines[compiled] = e
    for a, b in zip(engines[True].model.layers, engines[False].model.layers):
        assert a.params.keys() == b.params.keys()
        for k in a.params:
            assert a.params[k].fmt == b.params[k].fmt and np.array_equal(a.params[k].codes, b.params[k].codes), k
        assert a.state.keys() == b.state.keys()
        for k in a.state:
            assert np.array_equal(a.state[k], b.state[k]), k


def test_a_step_the_compiled_chain_does_not_cover_runs_in_the_reference(monkeypatch):
    """An error so large that its narrowing would need a format beyond |W - I| <= 64: the
    compiled chain reports the step, the reference runs it and raises the error it always raised."""
    from edgedfa.kernels import cells

    statuses = []
    chain = cells.gru_chain
    monkeypatch.setattr(cells, "gru_chain", lambda *a: statuses.append(chain(*a)) or statuses[-1])
    rng = np.random.default_rng(3)
    H, T, N = 3, 4, 2
    params = {"W": rng.uniform(-1, 1, (1, 3 * H, 2)), "R": rng.uniform(-1, 1, (1, 3 * H, H))}
    layer = layer_class("GRU")(Node("g", "GRU", ["x"], ["Y", "Y_h"], {"hidden_size": H}, params),
                               LayerSpec(0, Numerics.from_bits(8), 1, [(T, 2)]))
    fmt = FixedFormat(8, 3)
    x = QTensor(quantize(rng.normal(size=(T, N, 2)), fmt), fmt)
    layer.calibrate([x])
    dy = [None, QTensor(np.full((1, N, H), 1 << 15), FixedFormat(17, 17 + 64))]  # LSBs of 2^64, 16 bits of them
    got = run(layer, x, dy, True)
    assert statuses == [1] and got == run(layer, x, dy, False)
    assert got.startswith("EdgeDFAError") and "coarser than the supported 2^64" in got


def _trained_cell(op, lbr=0):
    """A small calibrated layer, its input and one training forward pass's cache."""
    rng = np.random.default_rng(3)
    H, T, N, G = 4, 3, 2, GATES[op]
    params = {"W": rng.uniform(-1, 1, (1, G * H, 2)), "R": rng.uniform(-1, 1, (1, G * H, H)),
              "B": rng.uniform(-1, 1, (1, 2 * G * H))}
    attrs = {"hidden_size": H} | ({"linear_before_reset": lbr} if op == "GRU" else {})
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    layer = layer_class(op)(Node("c", op, ["x"], outs, attrs, params), LayerSpec(0, Numerics.from_bits(8), 1, [(T, 2)]))
    fmt = FixedFormat(8, 3)
    x = QTensor(quantize(rng.normal(size=(T, N, 2)), fmt), fmt)
    layer.calibrate([x])
    return layer, layer.forward([x], train=True)[1], (T, N, H, G)


def test_an_lstm_step_whose_carried_cell_error_narrows_to_nothing_has_no_error():
    """No dh and a carried dc below the 2^-32 floor: the step passes no error (it raised on a
    None's shape before)."""
    layer, cache, (T, N, H, _) = _trained_cell("LSTM")
    rec = cache["caches"][0]["recs"][1]
    tiny = QTensor(np.ones((N, H), np.int64), FixedFormat.with_frac(16, 40))
    assert layer.cell_back(0, rec, None, tiny, True) == (None, None, None, None)
    big = QTensor(np.ones((N, H), np.int64) << 20, FixedFormat.with_frac(24, 40))
    assert layer.cell_back(0, rec, None, big, True)[0] is not None  # one that survives still flows


def test_a_gru_whose_every_recurrent_error_narrows_to_nothing_gets_no_recurrent_gradient():
    """linear_before_reset: every step's dR None while dA is not gives R and Rb no gradient, as
    an explicit zero dR would (an AttributeError before)."""
    layer, cache, (T, N, H, G) = _trained_cell("GRU", lbr=1)
    c = cache["caches"][0]
    A = QTensor(np.random.default_rng(4).integers(-99, 99, (T, N, G * H)), FixedFormat.with_frac(16, 20))
    none = layer._param_grads(0, c, A, None)
    zero = layer._param_grads(0, c, A, QTensor(np.zeros((T, N, G * H), np.int64), FixedFormat.with_frac(16, 20)))
    assert not none["R"].codes.any() and none["W"].codes.any()
    assert all(np.array_equal(none[k].codes, zero[k].codes) and none[k].fmt.frac_bits == zero[k].fmt.frac_bits
               for k in ("W", "B"))

