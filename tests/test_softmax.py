"""Softmax inside the graph (attention pooling over time, softmax gating over features, a softmax
over a Conv1d's positions), datapath §8.10: close to the float softmax within the stated bound,
its error the exact y·(dy − Σ dy·y) narrowed once, trained bit-exactly with hdl_models under
every algorithm, width and scaling, its format managed, the int export bit-exact in onnxruntime
under every rounding, both PyTorch exporters' forms imported, refusals by name, the CLI."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import onnx
import pytest
from cli_helpers import check_resume_equals_whole, run, write_npz
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import calibrated, emulates_bit_exact, grows_back_while_training
from onnx import helper
from onnx_helpers import model as onnx_model
from table_activation_checks import ROUNDINGS, check_step_and_int_export
from test_onnx_export import ort_run

from edgedfa import load_checkpoint, load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, dequantize, requantize
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.layers.softmax import softmax_wide
from edgedfa.loss import softmax_codes
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.export import build_proto

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


def _dense(rng, name, i, o, n_o, n_i):
    return Node(name, "Dense", [i], [o], {}, {"W": rng.uniform(-1, 1, (n_o, n_i)) * np.sqrt(3 / n_i),
                                              "B": rng.uniform(-.2, .2, n_o)})


def attention(seed, steps=6, features=2, hidden=4, classes=3):
    """AttnPool as canonical ops: Dense, Tanh, a score per step, Softmax over time (axis 1),
    Mul of the weights and the steps, the weighted steps flattened into the classifier."""
    rng = np.random.default_rng(seed)
    nodes = [_dense(rng, "proj", "input", "p", hidden, features), Node("tanh", "Tanh", ["p"], ["h"], {}, {}),
             _dense(rng, "score", "h", "s", 1, hidden), Node("attn", "Softmax", ["s"], ["w"], {"axis": 1}, {}),
             Node("weigh", "Mul", ["w", "h"], ["wh"], {}, {}), Node("flat", "Flatten", ["wh"], ["f"], {"axis": 1}, {}),
             _dense(rng, "fc", "f", "y", classes, steps * hidden)]
    return Graph("attention", "input", (steps, features), "y", nodes, {})


def positions(seed, channels=2, length=8, classes=3):
    """A softmax over a Conv1d map's positions (axis 2) weighting the map, averaged over positions."""
    rng = np.random.default_rng(seed)
    conv = Node("conv", "Conv", ["input"], ["c"], {"kernel_shape": [3], "pads": [1, 1]},
                {"W": rng.uniform(-.8, .8, (4, channels, 3)), "B": rng.uniform(-.2, .2, 4)})
    nodes = [conv, Node("relu", "Relu", ["c"], ["h"], {}, {}), Node("attn", "Softmax", ["h"], ["w"], {"axis": 2}, {}),
             Node("weigh", "Mul", ["w", "h"], ["wh"], {}, {}),
             Node("mean", "GlobalAveragePool", ["wh"], ["g"], {}, {}),
             Node("flat", "Flatten", ["g"], ["f"], {"axis": 1}, {}), _dense(rng, "fc", "f", "y", classes, 4)]
    return Graph("positions", "input", (channels, length), "y", nodes, {})


def gating(seed, features=6, classes=3):
    """x · softmax(Dense(x)) over the features (the last axis)."""
    rng = np.random.default_rng(seed)
    nodes = [_dense(rng, "g", "input", "s", features, features), Node("attn", "Softmax", ["s"], ["w"], {"axis": 1}, {}),
             Node("gate", "Mul", ["input", "w"], ["gx"], {}, {}), _dense(rng, "fc", "gx", "y", classes, features)]
    return Graph("gating", "input", (features,), "y", nodes, {})


GRAPHS = {"attention": (attention, (6, 2)), "positions": (positions, (2, 8)), "gating": (gating, (6,))}


# ------------------------------------------------------------------ arithmetic against the float softmax

def float_softmax(v, axis):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**16), frac=st.integers(-2, 14), length=st.integers(1, 70),
       spread=st.sampled_from([0.5, 2.0, 8.0, 40.0]), out_frac=st.integers(3, 20),
       rounding=st.sampled_from(ROUNDINGS))
def test_integer_softmax_follows_the_float_one_within_the_stated_bound(seed, frac, length, spread, out_frac,
                                                                       rounding):
    """§8.10's bound: |y − softmax(x)| <= 0.004·p + (1 + L·p)·2^-15 + one output LSB (x the
    dequantized input codes), for any input format, row length and rounding."""
    rng = np.random.default_rng(seed)
    codes = np.round(rng.normal(0, spread, (3, length)) * 2.0 ** frac).astype(np.int64)
    codes = np.clip(codes, -2**15, 2**15 - 1)
    fmt = FixedFormat.with_frac(17, frac)
    wide = softmax_wide(QTensor(codes, fmt), axis=1)
    out = FixedFormat.with_frac(24, out_frac)
    y = dequantize(requantize(wide.codes, wide.fmt, out, rounding, "AP_SAT"), out)
    p = float_softmax(dequantize(codes, fmt), 1)
    bound = 0.004 * p + (1 + length * p) * 2.0 ** -15 + 2.0 ** -out_frac
    assert np.all(np.abs(y - p) <= bound), np.max(np.abs(y - p) - bound)


def test_the_exponent_is_the_output_errors_and_its_normalisation_its_sum():
    """softmax_codes (§11) and the layer read the same exponent codes: with a reciprocal instead of
    a division the probabilities agree within one LSB of 2^-15, and each row sums to 1."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-300, 300, (50, 10))
    fmt = FixedFormat(12, 5)
    ref = softmax_codes(QTensor(codes, fmt), 15)
    p = softmax_wide(QTensor(codes, fmt), axis=1)
    assert np.abs(p.codes / 2.0 ** 46 - ref / 2.0 ** 15).max() <= 2.0 ** -15
    assert np.abs(p.codes.sum(axis=1) / 2.0 ** 46 - 1).max() < 2.0 ** -30


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_error_is_the_exact_adjoint_narrowed_once(name):
    """dx = y ⊙ (dy − Σ_axis dy ⊙ y), computed exactly from the layer's integer y and dy, then
    narrowed to err_bits: within one LSB of dx's format (AP_RND) of the exact rational value."""
    make, shape = GRAPHS[name]
    m = calibrated(make(1), 16, 1)
    layer = next(layer for layer in m.layers if layer.op == "Softmax")
    rng = np.random.default_rng(2)
    x = QTensor(rng.integers(-2000, 2000, (5,) + layer.in_shapes[0]), FixedFormat(16, 4))
    y, cache = layer.forward([x], train=True)
    dy = QTensor(rng.integers(-2**15, 2**15, y.codes.shape), FixedFormat(16, 2))
    dx = layer.backward(cache, dy, [True])[0][0]
    yv, dv = y.codes.astype(object), dy.codes.astype(object)
    exact = yv * (dv * 2**y.fmt.frac_bits - (dv * yv).sum(axis=layer.axis, keepdims=True))  # F = F_dy + 2 F_y
    scale = Fraction(1, 2 ** (dy.fmt.frac_bits + 2 * y.fmt.frac_bits))
    lsb = Fraction(2) ** -dx.fmt.frac_bits
    err = max(abs(Fraction(int(a)) * scale - Fraction(int(b)) * lsb) for a, b in zip(exact.ravel(), dx.codes.ravel()))
    assert err <= lsb / 2 and dx.fmt.width == 16 and np.abs(dx.codes).max() >= 2**13


# ------------------------------------------------------------------ datapath model, exports

@settings(max_examples=25)
@given(name=st.sampled_from(sorted(GRAPHS)), seed=st.integers(0, 2**16), bits=st.integers(4, 16),
       algo=st.sampled_from(ALGOS), scaling=st.sampled_from(["adaptive", "static"]),
       rounding=st.sampled_from(ROUNDINGS), err_rounding=st.sampled_from(ROUNDINGS))
def test_softmax_models_train_bit_exact_with_the_datapath_model(name, seed, bits, algo, scaling, rounding,
                                                                err_rounding):
    """Any width 4-16, both scalings, every deterministic rounding of activations and errors."""
    make, shape = GRAPHS[name]
    m = calibrated(make(seed), bits, seed, scale=1.5, scaling=scaling, act_rounding=rounding,
                   err_rounding=err_rounding)
    rng = np.random.default_rng(seed)
    emulates_bit_exact(m, rng.normal(0, 1.5, (8,) + shape), rng.integers(0, 3, 8), algo)


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("scaling", ["adaptive", "static"])
@pytest.mark.parametrize("algo", ALGOS)
def test_attention_pooling_bit_exact_at_narrow_and_wide_words(bits, scaling, algo):
    m = calibrated(attention(bits), bits, 5, scaling=scaling)
    rng = np.random.default_rng(6)
    r = emulates_bit_exact(m, rng.normal(0, 1, (12, 6, 2)), rng.integers(0, 3, 12), algo)
    assert r["checked"] >= 60
    layer = next(entry for entry in r["layers"] if entry["layer"] == "attn" and entry["phase"] == "forward")
    assert layer["cycles"] > 0


@settings(max_examples=20)
@given(name=st.sampled_from(sorted(GRAPHS)), seed=st.integers(0, 2**16), bits=st.integers(4, 16))
def test_int_export_equals_the_engine_under_every_rounding(name, seed, bits):
    make, shape = GRAPHS[name]
    x = np.random.default_rng(seed).normal(0, 2, (16,) + shape)
    for rounding in ROUNDINGS:
        m = calibrated(make(seed), bits, seed, scale=2.0, act_rounding=rounding)
        proto, report = build_proto(m, "int")
        assert report.startswith("int: bit-exact")
        assert np.array_equal(ort_run(proto, x), m.run(x)), rounding


def test_a_coarse_input_format_takes_the_clamped_left_shift_in_every_implementation():
    """An input LSB of 2^7 (a diverging run's logits; §11's clamp before the left shift): the
    engine, hdl_models and the int export agree; with the whole row at 0 the softmax is uniform."""
    m = calibrated(gating(2), 8, 2)
    layer = next(layer for layer in m.layers if layer.op == "Softmax")
    x = QTensor(np.array([[3, -2, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]), FixedFormat(8, 15))
    y = dequantize(layer.forward([x])[0].codes, layer.out_fmt)
    assert y[0, 0] > 0.99 and np.all(y[0, 1:] <= layer.out_fmt.lsb) and np.ptp(y[1]) == 0
    m.in_fmt = FixedFormat(8, 15)  # the graph's own input made that coarse
    xs = np.random.default_rng(1).normal(0, 300, (8, 6))
    proto, _ = build_proto(m, "int")
    assert np.array_equal(ort_run(proto, xs), m.run(xs))
    emulates_bit_exact(m, xs, np.arange(8) % 3, "bp")


def test_the_output_format_is_calibrated_managed_and_frozen_by_the_int_export():
    """A weight near 1/6 per step gets fraction bits of its own (not a sigmoid's ap_fixed<A,1>);
    set three integer bits too narrow, the exponent unit grows it back while training (bit-exact
    with hdl_models), and the int export of the format reached equals the engine."""
    m = calibrated(attention(7), 8, 7, scaling="adaptive")
    sm = next(layer for layer in m.layers if layer.name == "attn")
    assert set(sm.managed_formats()) == {"out"} and sm.out_fmt.frac_bits >= 7
    narrow = FixedFormat(8, sm.out_fmt.int_bits - 3)
    sm.set_managed_format("out", narrow)
    rng = np.random.default_rng(8)
    x, y = rng.normal(0, 1, (40, 6, 2)), rng.integers(0, 3, 40)
    grows_back_while_training(m, sm, x, y)
    proto, report = build_proto(m, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), m.run(x))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_float_and_qdq_exports_follow_the_float_reference(name, tmp_path):
    """16 bits: the engine within 2% of the float reference; the float export (ONNX Softmax) in
    onnxruntime within float32 of it and read back into the same integer model; the QDQ export
    says why it is not bit-exact and stays close."""
    make, shape = GRAPHS[name]
    m = calibrated(make(4), 16, 4)
    x = np.random.default_rng(5).normal(0, 1, (32,) + shape)
    ref = run_float(m.to_graph(), x)
    assert np.abs(m.run(x) - ref).max() <= 0.02 * np.abs(ref).max()
    proto, report = build_proto(m, "float")
    assert "Softmax" in [n.op_type for n in proto.graph.node]
    assert np.abs(ort_run(proto, x) - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    path = tmp_path / "f.onnx"
    path.write_bytes(proto.SerializeToString())
    assert np.array_equal(load_onnx(str(path)).run(x), m.run(x))
    qdq, report = build_proto(m, "qdq")
    assert "attn: the engine's Softmax is base 2" in report
    assert np.abs(ort_run(qdq, x) - ref).max() <= 0.05 * np.abs(ref).max()


# ------------------------------------------------------------------ import

@pytest.mark.parametrize("name,axis", [("attn_pool_ts", 1), ("attn_pool_dynamo", 1), ("attn_pool_opset11_ts", 2),
                                       ("softmax_conv1d_ts", 2), ("softmax_conv1d_dynamo", 2),
                                       ("gru_attn_pool_ts", 1), ("gru_attn_pool_dynamo", 1)])
def test_pytorch_fixtures_import_train_and_export(name, axis):
    """Both exporters: softmax over time (dim=1, and at opset 11 TorchScript's Transpose-Softmax-
    Transpose), over a GRU's states (a temperature folded into the score), over a Conv1d's
    positions; the import equals onnxruntime in float, a BP step is bit-exact with hdl_models, the
    int export bit-exact in onnxruntime."""
    import onnxruntime as ort
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [n.attrs["axis"] for n in model.graph.nodes if n.op == "Softmax"] == [axis]
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (8,) + tuple(model.graph.input_shape)).astype(np.float32).astype(np.float64)
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, rng.integers(0, 3, 8))


def _softmax_model(shape, opset, op="Softmax", **attrs):
    nodes = [helper.make_node(op, ["x"], ["s"], name="the_softmax", **attrs),
             helper.make_node("Relu", ["s"], ["y"])]
    return onnx_model(nodes, {}, ["N"] + list(shape), opset=opset).SerializeToString()


@pytest.mark.parametrize("shape,opset,attrs,axis", [
    ((4, 5), 13, {"axis": 1}, 1), ((4, 5), 13, {}, 2), ((4, 5), 13, {"axis": -2}, 1),
    ((4, 1), 11, {"axis": 1}, 1), ((1, 4), 11, {"axis": 1}, 2), ((4, 5), 11, {"axis": 2}, 2),
    ((1, 1, 6), 6, {}, 3), ((3,), 11, {}, 1)])
def test_every_opset_form_that_is_one_axis_imports_and_matches_onnxruntime(shape, opset, attrs, axis):
    """Softmax-13 over any non-batch axis; Softmax-1/11 flatten from ``axis`` (default 1): taken
    where the flattened axes hold one axis longer than 1."""
    import onnxruntime as ort
    data = _softmax_model(shape, opset, **attrs)
    g = load_graph_bytes(data, source="s.onnx")
    assert [(n.op, n.attrs.get("axis")) for n in g.nodes] == [("Softmax", axis), ("Relu", None)]
    x = np.random.default_rng(0).normal(0, 2, (3,) + shape).astype(np.float32)
    ref = ort.InferenceSession(data).run(None, {"x": x})[0]
    assert np.abs(run_float(g, x.astype(np.float64)) - ref).max() <= 1e-6


@pytest.mark.parametrize("shape,opset,op,attrs,words", [
    ((4, 5), 11, "Softmax", {"axis": 1}, ["the_softmax", "Softmax-11", "only one of them may exceed 1"]),
    ((4, 5), 13, "Softmax", {"axis": 0}, ["the_softmax", "axis 0", "only a non-batch axis"]),
    ((4, 5), 13, "Softmax", {"axis": -3}, ["the_softmax", "axis -3", "only a non-batch axis"]),
    ((4, 5), 13, "LogSoftmax", {"axis": -1}, ["the_softmax", "LogSoftmax is supported only as the last node"])])
def test_what_is_not_a_softmax_over_one_axis_is_refused_by_name(shape, opset, op, attrs, words):
    with pytest.raises(EdgeDFAError) as err:
        load_graph_bytes(_softmax_model(shape, opset, op, **attrs), source="s.onnx")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_the_output_softmax_is_still_absorbed():
    """A Softmax that is the graph's last node, over the last axis, stays graph.meta's."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    g = load_graph_bytes(onnx_model(nodes, {}, ["N", 4], opset=13).SerializeToString(), source="s.onnx")
    assert [n.op for n in g.nodes] == ["Relu"] and g.meta["output_softmax"] is True


# ------------------------------------------------------------------ command line

def test_cli_trains_resumes_exports_and_emulates_an_attention_model(tmp_path, capsys):
    """`edgedfa train` on attention pooling over the digits read as 16 steps of 4 pixels: 2 epochs
    equal 1 epoch and a resume bit for bit; the int export equals the trained model on the test
    set in onnxruntime; `emulate` of the resumed run is bit-exact."""
    m = calibrated(attention(3, steps=16, features=4, hidden=8, classes=10), 8, 3)
    src = tmp_path / "attn.onnx"
    src.write_bytes(build_proto(m, "float")[0].SerializeToString())
    data = write_npz(tmp_path / "d.npz")
    base = ["--model", src, "--data", data, "--algo", "hybrid", "--quiet"]
    check_resume_equals_whole(capsys, tmp_path, base)
    model = load_checkpoint(str(tmp_path / "whole"))
    code, out, _ = run(capsys, "export", tmp_path / "whole", "--format", "int", "-o", tmp_path / "int.onnx")
    assert code == 0 and "int: bit-exact" in out
    x = np.load(data)["x_test"]
    assert np.array_equal(ort_run(onnx.load(str(tmp_path / "int.onnx")), x.reshape(-1, 16, 4)), model.run(x))
    code, out, _ = run(capsys, "emulate", tmp_path / "part", "--data", data, "--steps", 1, "--array", "4x4")
    assert code == 0 and "bit-exact" in out
