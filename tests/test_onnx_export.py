"""ONNX export: bit-exact int graphs, float and QDQ files, reports, round trips.

Models are random canonical graphs (hypothesis, derandomized) or the built-in architectures
with the last layer fitted by ridge regression (real classifiers, quick to make); inputs are
float32-representable, as the exported graphs take float32.
"""

import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper
from strategies import DETERMINISTIC_MODES, signed_formats, wide_codes

import edgedfa
from edgedfa import arch
from edgedfa.data import BUILTIN
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, Overflow, Rounding, requantize
from edgedfa.float_ref import run_float, run_float_all
from edgedfa.graph import Graph, Node
from edgedfa.kernels.conv import make_geometry
from edgedfa.numerics import Numerics
from edgedfa.lut import sigmoid_codes, tanh_codes
from edgedfa.model import IntModel
from edgedfa.onnx import load_graph
from edgedfa.onnx.export import FORMATS, build_proto, export_model, load_exported, read_metadata
from edgedfa.onnx.export_graph import Builder, make_model
from edgedfa.onnx.export_int import IntOps

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


def ort_session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def ort_run(proto, x):
    sess = ort_session(proto)
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})[0]


def f32(x):
    """Inputs representable in float32 (the exported graphs take float32)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


class _G:
    """A canonical graph under construction with seeded float parameters."""

    def __init__(self, rng):
        self.rng, self.nodes, self.n = rng, [], 0

    def add(self, op, inputs, attrs=None, params=None):
        self.n += 1
        name = f"{op.lower()}{self.n}"
        self.nodes.append(Node(name, op, list(inputs), [f"{name}_out"], attrs or {}, params or {}))
        return f"{name}_out"

    def weights(self, shape, fan_in, bias):
        w = self.rng.uniform(-1, 1, shape) * math.sqrt(3.0 / max(fan_in, 1))
        params = {"W": w}
        if bias:
            params["B"] = self.rng.uniform(-0.5, 0.5, shape[0])
        return params

    def activation(self, kind, x):
        if kind == "none":
            return x
        if kind == "SiLU":  # x * sigmoid(x), as PyTorch exports nn.SiLU: a Mul of two activations
            return self.add("Mul", [x, self.add("Sigmoid", [x])])
        if kind == "HardSwish":  # x * hardsigmoid(x), as the importer reads ONNX HardSwish
            return self.add("Mul", [x, self.add("HardSigmoid", [x], {"alpha": 1 / 6, "beta": 0.5})])
        if kind in ("GELU", "GELU-tanh"):  # x * Phi(x), as the importer reads PyTorch's nn.GELU
            form = "tanh" if kind == "GELU-tanh" else "none"
            return self.add("Mul", [x, self.add("NormalCdf", [x], {"approximate": form})])
        attrs = {"LeakyRelu": {"alpha": 0.1}, "Clip": {"min": -0.75, "max": 1.5},
                 "HardSigmoid": {"alpha": 0.2, "beta": 0.5}}.get(kind, {})
        return self.add(kind, [x], attrs)


ACTS = ("none", "Relu", "LeakyRelu", "Clip", "Tanh", "Sigmoid", "SiLU", "HardSigmoid", "HardSwish", "GELU",
        "GELU-tanh")


@st.composite
def mlp_graphs(draw, n_classes=None):
    """Dense stacks with activations, residual Adds and Concats; random biases."""
    g = _G(np.random.default_rng(draw(st.integers(0, 2**31))))
    n_in = draw(st.integers(1, 10))
    x, width = "input", n_in
    for _ in range(draw(st.integers(1, 3))):
        h = draw(st.integers(1, 12))
        merge = draw(st.sampled_from(("plain", "plain", "add", "concat")))
        y = g.add("Dense", [x], params=g.weights((h, width), width, draw(st.booleans())))
        if merge != "plain":
            z = g.add("Dense", [x], params=g.weights((h, width), width, True))
            y = g.add("Add", [y, z]) if merge == "add" else g.add("Concat", [y, z], {"axis": 1})
            h = h if merge == "add" else 2 * h
        x, width = g.activation(draw(st.sampled_from(ACTS)), y), h
    out = g.add("Dense", [x], params=g.weights((n_classes or draw(st.integers(2, 6)), width), width, True))
    return Graph("mlp", "input", (n_in,), out, g.nodes)


@st.composite
def cnn_graphs(draw, ceil=True):
    """1-d/2-d Conv (stride, pads, dilation, group) / pooling (max, average, global) stacks;
    ``ceil=False``: no ceil_mode."""
    g = _G(np.random.default_rng(draw(st.integers(0, 2**31))))
    rank = draw(st.sampled_from((1, 2)))
    c = draw(st.integers(1, 3))
    size = [draw(st.integers(4, 9)) for _ in range(rank)]
    shape, x = (c,) + tuple(size), "input"
    for _ in range(draw(st.integers(1, 2))):
        x, c, size = _conv_block(draw, g, x, c, size, rank, ceil)
    if draw(st.booleans()):
        x = g.add("GlobalAveragePool", [x])
        size = [1] * rank
    x = g.add("Flatten", [x], {"axis": 1})
    n = c * math.prod(size)
    out = g.add("Dense", [x], params=g.weights((draw(st.integers(2, 5)), n), n, True))
    return Graph("cnn", "input", shape, out, g.nodes)


def _conv_block(draw, g, x, c, size, rank, ceil):
    k = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([d for d in (1, 2, 3) if c % d == 0]))
    c_out = groups * draw(st.integers(1, 3))
    strides, dil = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, k - 1)) for _ in range(2 * rank)]
    eff = dil * (k - 1) + 1
    out = [(s + pads[i] + pads[i + rank] - eff) // strides + 1 for i, s in enumerate(size)]
    assume(min(out) >= 1)
    attrs = {"kernel_shape": [k] * rank, "strides": [strides] * rank, "pads": pads,
             "dilations": [dil] * rank, "group": groups}
    y = g.add("Conv", [x], attrs, g.weights((c_out, c // groups) + (k,) * rank, c // groups * k ** rank,
                                             draw(st.booleans())))
    y = g.activation(draw(st.sampled_from(ACTS)), y)
    pool = draw(st.sampled_from(("none", "MaxPool", "AveragePool")))
    if pool == "none" or min(out) < 2:
        return y, c_out, out
    pk, ps = draw(st.integers(2, 3)), draw(st.integers(1, 2))
    pp = [draw(st.integers(0, pk - 1)) for _ in range(2 * rank)]
    attrs = {"kernel_shape": [pk] * rank, "strides": [ps] * rank, "pads": pp,
             "ceil_mode": draw(st.integers(0, 1)) if ceil else 0}
    if pool == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return g.add(pool, [y], attrs), c_out, _pool_out(out, attrs)


def _pool_out(size, attrs):
    try:
        geo = make_geometry(tuple(size), attrs["kernel_shape"], attrs["strides"], attrs["pads"],
                            None, 1, "NOTSET", bool(attrs["ceil_mode"]))
    except EdgeDFAError:
        assume(False)
    return list(geo.out_spatial())


@st.composite
def numerics(draw):
    """Word widths 4..16 with every deterministic rounding and overflow, narrow accumulators."""
    b = draw(st.integers(4, 16))
    acc = draw(st.sampled_from((32, 32, 24, 16, 12)))
    return Numerics.from_bits(
        b, act_rounding=draw(st.sampled_from(DETERMINISTIC_MODES)),
        act_overflow=draw(st.sampled_from((Overflow.AP_SAT, Overflow.AP_SAT_SYM, Overflow.AP_WRAP,
                                           Overflow.AP_SAT_ZERO))),
        acc_bits=acc, acc_overflow=draw(st.sampled_from(tuple(Overflow))))


def build_model(graph, num, rng, n=48):
    """IntModel of ``graph`` calibrated on float32 data; None when the engine rejects the graph."""
    try:
        model = IntModel(graph, num, 0)
    except EdgeDFAError:
        return None
    model.calibrate(f32(rng.standard_normal((n,) + graph.input_shape)))
    return model


def sample_inputs(model, rng, n=40):
    """float32 inputs: normal values, some beyond the calibrated range, exact ties, zeros."""
    shape = (n,) + model.input_shape
    x = rng.standard_normal(shape) * rng.choice([0.5, 1.0, 4.0], size=(n,) + (1,) * len(model.input_shape))
    lsb = model.in_fmt.lsb
    ties = (np.floor(x / lsb) + 0.5) * lsb
    x = np.where(rng.random(shape) < 0.2, ties, x)
    x[0] = 0.0
    return f32(x)


def ridge_head(graph, x, y, n_classes, lam=0.1):
    """Fit the last Dense of ``graph`` by ridge regression on float features (a trained classifier)."""
    last = graph.nodes[-1]
    feats = run_float_all(graph, x)[last.inputs[0]]
    f1 = np.hstack([feats, np.ones((len(feats), 1))])
    target = np.eye(n_classes)[y] * 2 - 1
    sol = np.linalg.solve(f1.T @ f1 + lam * np.eye(f1.shape[1]), f1.T @ target)
    last.params["W"], last.params["B"] = sol[:-1].T.copy(), sol[-1].copy()
    return graph


# =========================================================================== primitives

def _int_graph(fn, n):
    """A graph int64[n] -> int64[n] built by ``fn(ops, x)``."""
    b = Builder({"x", "y"})
    ops = IntOps(b)
    out = fn(ops, "x")
    b.node("Identity", [out], "out", ["y"])
    g = b.graph("t", [helper.make_tensor_value_info("x", TensorProto.INT64, [n])],
                [helper.make_tensor_value_info("y", TensorProto.INT64, [n])])
    proto = make_model(g, 17, {})
    onnx.checker.check_model(proto)
    return ort_session(proto)


@given(src_frac=st.integers(-8, 40), dst=signed_formats(max_width=24, min_frac=-8, max_frac=30),
       rounding=st.sampled_from(DETERMINISTIC_MODES), overflow=st.sampled_from(tuple(Overflow)),
       codes=hnp.arrays(np.int64, st.integers(1, 24), elements=wide_codes(50)))
def test_requantize_op_equals_fixed_requantize(src_frac, dst, rounding, overflow, codes):
    """The exported shift/round/saturate equals fixed.requantize for every mode (ties included)."""
    shift = src_frac - dst.frac_bits
    assume(-30 <= shift <= 40)
    ties = codes | (1 << (shift - 1)) if shift > 0 else codes  # exact half-LSB residuals
    x = np.concatenate([codes, ties & ~((1 << max(shift - 1, 0)) - 1) if shift > 0 else codes])
    sess = _int_graph(lambda o, v: o.requantize(v, src_frac, dst, rounding, overflow, "rq"), x.size)
    got = sess.run(None, {"x": x})[0]
    src = FixedFormat.with_frac(48, src_frac)
    assert np.array_equal(got, requantize(x, src, dst, rounding, overflow))


@pytest.mark.parametrize("func", ["tanh", "sigmoid"])
@pytest.mark.parametrize("in_fmt,out_fmt,rounding", [
    ("ap_fixed<12,4>", "ap_fixed<8,1>", Rounding.AP_RND),
    ("ap_fixed<14,6>", "ap_fixed<12,1>", Rounding.AP_RND_CONV),
    ("ap_fixed<10,1>", "ap_fixed<16,1>", Rounding.AP_TRN)])
def test_table_functions_equal_lut_on_every_code(func, in_fmt, out_fmt, rounding):
    """tanh/sigmoid by Gather on the §9 table equal lut.tanh_codes/sigmoid_codes exhaustively."""
    fin, fout = FixedFormat.parse(in_fmt), FixedFormat.parse(out_fmt)
    x = np.arange(fin.min_code, fin.max_code + 1, dtype=np.int64)
    sess = _int_graph(lambda o, v: getattr(o, func)(v, fin.frac_bits, fout, rounding, func), x.size)
    ref = (tanh_codes if func == "tanh" else sigmoid_codes)(x, fin, fout, rounding)
    assert np.array_equal(sess.run(None, {"x": x})[0], ref)


# =========================================================================== int: bit-exact

def _check_int_exact(graph, num, seed):
    rng = np.random.default_rng(seed)
    model = build_model(graph, num, rng)
    assume(model is not None)
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    assert read_metadata(proto)["report"] == report
    x = sample_inputs(model, rng)
    y = ort_run(proto, x)
    ref = model.run(x)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.array_equal(y, ref), np.abs(y - ref).max()
    return report


@settings(max_examples=40)
@given(graph=mlp_graphs(), num=numerics(), seed=st.integers(0, 2**16))
def test_int_export_equals_engine_mlp(graph, num, seed):
    _check_int_exact(graph, num, seed)


@settings(max_examples=40)
@given(graph=cnn_graphs(), num=numerics(), seed=st.integers(0, 2**16))
def test_int_export_equals_engine_cnn(graph, num, seed):
    _check_int_exact(graph, num, seed)


@pytest.mark.parametrize("bits,acc_bits,acc_overflow,path", [
    (8, 32, Overflow.AP_SAT, "exact int32 sum"),  # MatMulInteger / ConvInteger
    (12, 32, Overflow.AP_SAT, "exact int64 sum"),
    (16, 32, Overflow.AP_SAT, "step-by-step AP_SAT accumulator (Scan)"),
    (16, 24, Overflow.AP_WRAP, "exact sum wrapped to 24 bits"),
    (16, 24, Overflow.AP_SAT_ZERO, "step-by-step AP_SAT_ZERO accumulator (Scan)")])
def test_every_accumulation_path_is_exact_on_digits(bits, acc_bits, acc_overflow, path):
    """Each way of reproducing the accumulator is taken (the report names it) and exact."""
    ds = BUILTIN["digits"]()
    graph = arch.cnn(3, channels=(4, 8))
    model = IntModel(graph, Numerics.from_bits(bits, acc_bits=acc_bits, acc_overflow=acc_overflow), 3)
    x = f32(ds.x_test[:200]).reshape((-1,) + graph.input_shape) * 3.0  # big inputs: saturation
    model.calibrate(f32(ds.x_train[:256]).reshape((-1,) + graph.input_shape))
    proto, report = build_proto(model, "int")
    assert path in report
    assert np.array_equal(ort_run(proto, x), model.run(x))


@pytest.mark.parametrize("bits", [8, 16])
def test_int_export_is_exact_in_the_onnx_reference_evaluator_too(bits):
    """Plain integer ops (every Scan over axis 0): onnx.reference runs the file bit-exactly as well."""
    from onnx.reference import ReferenceEvaluator

    model, x, _ = _trained("cnn", bits, acc_bits=32)  # 16 x 16-bit products overflow 32 bits: Scan
    proto, report = build_proto(model, "int")
    assert ("Scan" in report) == (bits == 16)
    got = ReferenceEvaluator(proto).run(None, {"input": x[:20].astype(np.float32)})[0]
    assert np.array_equal(got, model.run(x[:20]))


def test_imported_fixtures_export_bit_exact():
    """PyTorch-exported models (1-d/2-d CNN with Add, Concat, Clip, Tanh, Sigmoid, GAP; MLP)."""
    rng = np.random.default_rng(1)
    for name in ("cnn1d_ts.onnx", "cnn2d_dynamo.onnx", "mlp_logsoftmax_ts.onnx"):
        for bits in (6, 12):
            model = edgedfa.load_onnx(os.path.join(FIXTURES, name), numerics=Numerics.from_bits(bits))
            model.calibrate(f32(rng.standard_normal((64,) + model.input_shape)))
            x = sample_inputs(model, rng, 64)
            proto, report = build_proto(model, "int")
            assert report.startswith("int: bit-exact")
            assert np.array_equal(ort_run(proto, x), model.run(x)), (name, bits)


@st.composite
def recurrent_graphs(draw):
    """One RNN (tanh/sigmoid/relu), GRU (both reset forms) or LSTM in any direction, batch-first,
    read through Y or Y_h (and Y_c), then a Dense."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    op = draw(st.sampled_from(("RNN", "GRU", "LSTM")))
    seq, n_in, hidden = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    direction = draw(st.sampled_from(("forward", "reverse", "bidirectional")))
    dirs, gates = 1 + (direction == "bidirectional"), {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    attrs = {"hidden_size": hidden, "direction": direction, "layout": 1}
    if op == "RNN":
        attrs["activations"] = [draw(st.sampled_from(("Tanh", "Sigmoid", "Relu")))] * dirs
    if op == "GRU":
        attrs["linear_before_reset"] = draw(st.integers(0, 1))
    lim = 1.0 / math.sqrt(hidden)
    params = {"W": rng.uniform(-lim, lim, (dirs, gates * hidden, n_in)),
              "R": rng.uniform(-2 * lim, 2 * lim, (dirs, gates * hidden, hidden)),
              "B": rng.uniform(-0.5, 0.5, (dirs, 2 * gates * hidden))}
    outs = ["rec_Y", "rec_Yh"] + (["rec_Yc"] if op == "LSTM" else [])
    read = draw(st.sampled_from(outs))
    width = hidden * dirs * (seq if read == "rec_Y" else 1)
    nodes = [Node("rec", op, ["input"], outs, attrs, params),
             Node("flat", "Flatten", [read], ["flat_out"], {"axis": 1}),
             Node("head", "Dense", ["flat_out"], ["logits"], {}, {"W": rng.uniform(-1, 1, (3, width)),
                                                                  "B": rng.uniform(-0.2, 0.2, 3)})]
    return Graph(op.lower(), "input", (seq, n_in), "logits", nodes)


@settings(max_examples=30)
@given(graph=recurrent_graphs(), num=numerics(), seed=st.integers(0, 2**16))
def test_int_export_equals_engine_recurrent(graph, num, seed):
    """RNN/GRU/LSTM unrolled over time in integer ops equal the engine's cells bit for bit."""
    _check_int_exact(graph, num, seed)


def test_recurrent_fixtures_export_bit_exact():
    rng = np.random.default_rng(3)
    for name in ("gru_bidir_seq_ts.onnx", "lstm_2layer_dynamo.onnx", "rnn_relu_hn_ts.onnx",
                 "gru_bidir_last_ts.onnx", "lstm_bidir2_hn_dynamo.onnx"):
        model = edgedfa.load_onnx(os.path.join(FIXTURES, name), numerics=Numerics.from_bits(10))
        model.calibrate(f32(rng.standard_normal((32,) + model.input_shape)))
        x = sample_inputs(model, rng, 32)
        assert np.array_equal(ort_run(build_proto(model, "int")[0], x), model.run(x)), name


def test_int_export_refuses_stochastic_rounding():
    rng = np.random.default_rng(0)
    model = build_model(arch.mlp(0, n_in=4, hidden=(3,)), Numerics.from_bits(8), rng)
    model.layers[0].num = Numerics.from_bits(8, act_rounding=Rounding.STOCHASTIC)
    with pytest.raises(EdgeDFAError, match="STOCHASTIC"):
        build_proto(model, "int")


# =========================================================================== float and qdq

@settings(max_examples=25)
@given(graph=st.one_of(mlp_graphs(), cnn_graphs()), bits=st.integers(4, 16), seed=st.integers(0, 2**16))
def test_float_export_follows_float_reference(graph, bits, seed):
    rng = np.random.default_rng(seed)
    model = build_model(graph, Numerics.from_bits(bits), rng)
    assume(model is not None)
    x = sample_inputs(model, rng, 16)
    ref = run_float(model.to_graph(), x)
    y = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


RECURRENT_FIXTURES = ["gru_bidir_seq_ts.onnx", "gru_dynamo.onnx", "lstm_2layer_ts.onnx",
                      "lstm_hn_ts.onnx", "rnn_bidir_seq_dynamo.onnx", "rnn_relu_hn_ts.onnx",
                      "gru_bidir_last_dynamo.onnx", "lstm_bidir2_hn_ts.onnx"]


@pytest.mark.parametrize("name", RECURRENT_FIXTURES + ["arch:gru", "arch:lstm", "arch:rnn"])
def test_recurrent_float_export_runs_time_major(name):
    """RNN/GRU/LSTM leave as ONNX nodes with layout 0 (onnxruntime's CPU kernels reject 1)."""
    rng = np.random.default_rng(2)
    if name.startswith("arch:"):
        graph = arch.recurrent(name[5:], 1, seq=5, n_in=4, hidden=6)
        model = build_model(graph, Numerics.from_bits(10), rng)
    else:
        model = edgedfa.load_onnx(os.path.join(FIXTURES, name), numerics=Numerics.from_bits(10))
        model.calibrate(f32(rng.standard_normal((32,) + model.input_shape)))
    x = sample_inputs(model, rng, 16)
    for fmt in ("float", "qdq"):
        proto, report = build_proto(model, fmt)
        cells = [n for n in proto.graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
        assert cells and all(helper.get_attribute_value(a) == 0 for n in cells for a in n.attribute
                             if a.name == "layout")
        y = ort_run(proto, x)
        if fmt == "float":
            ref = run_float(model.to_graph(), x)
            assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
        else:
            assert "not bit-exact" in report and "table tanh/sigmoid" in report
            assert np.abs(y - model.run(x)).max() < 0.25 * np.abs(model.run(x)).max()


@settings(max_examples=25)
@given(graph=st.one_of(mlp_graphs(), cnn_graphs()), bits=st.integers(4, 16), seed=st.integers(0, 2**16),
       rounding=st.sampled_from((Rounding.AP_RND_CONV, Rounding.AP_RND)))
def test_qdq_report_says_bit_exact_only_when_it_is(graph, bits, seed, rounding):
    """Whenever the qdq report claims bit-exactness, onnxruntime's outputs equal the engine's."""
    rng = np.random.default_rng(seed)
    model = build_model(graph, Numerics.from_bits(bits, act_rounding=rounding), rng)
    assume(model is not None)
    proto, report = build_proto(model, "qdq")
    x = sample_inputs(model, rng, 32)
    y, ref = ort_run(proto, x), model.run(x)
    if report.startswith("qdq: bit-exact"):
        assert np.array_equal(y, ref)
    else:
        assert report.startswith("qdq: not bit-exact in onnxruntime: ")
    if rounding is Rounding.AP_RND and any(n.op in ("Dense", "Conv") for n in graph.nodes):
        assert "AP_RND but QuantizeLinear rounds half to even" in report


def test_qdq_is_bit_exact_for_convergent_rounding():
    """Engine trained with AP_RND_CONV, 8 bits: the QDQ file runs bit-exactly in onnxruntime."""
    ds = BUILTIN["digits"]()
    for graph in (arch.mlp(1, hidden=(32,)), arch.cnn(1, channels=(4, 8))):
        model = IntModel(graph, Numerics.from_bits(8, act_rounding=Rounding.AP_RND_CONV), 1)
        model.calibrate(f32(ds.x_train[:256]).reshape((-1,) + graph.input_shape))
        x = f32(ds.x_test).reshape((-1,) + graph.input_shape)
        proto, report = build_proto(model, "qdq")
        assert report.startswith("qdq: bit-exact")
        ops = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert all(t.data_type in (TensorProto.INT8, TensorProto.INT32, TensorProto.FLOAT)
                   for t in proto.graph.initializer)
        assert np.array_equal(ort_run(proto, x), model.run(x))


def _trained(kind, bits, seed=1, **num):
    """A classifier on the digits: random features, last layer fitted by ridge regression."""
    ds = BUILTIN["digits"]()
    graph = {"mlp": lambda: arch.mlp(seed, hidden=(128,)), "cnn": lambda: arch.cnn(seed, channels=(8, 16)),
             "gru": lambda: arch.recurrent("gru", seed, hidden=32)}[kind]()
    shape = (-1,) + graph.input_shape
    ridge_head(graph, ds.x_train.reshape(shape), ds.y_train, 10)
    model = IntModel(graph, Numerics.from_bits(bits, **num), seed)
    model.calibrate(f32(ds.x_train[:256]).reshape(shape))
    return model, f32(ds.x_test).reshape(shape), ds.y_test


@pytest.mark.parametrize("kind,fmt,bits", [("mlp", "qdq", 8), ("cnn", "qdq", 8), ("mlp", "float", 10),
                                           ("cnn", "float", 10), ("gru", "float", 14), ("gru", "qdq", 14)])
def test_exports_agree_with_engine_predictions(kind, fmt, bits):
    """>= 99% of the digits test samples get the engine's class from the float/qdq export.

    Counted where the engine's prediction is defined: its top logit unique (the logit
    headroom leaves coarse logits, and a tie is broken by class order, arbitrarily)."""
    model, x, y = _trained(kind, bits)
    logits = model.run(x)
    engine = logits.argmax(axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    decided = top2[:, 1] > top2[:, 0]
    assert (engine == y).mean() > 0.7 and decided.mean() > 0.85  # a real classifier
    got = ort_run(build_proto(model, fmt)[0], x).argmax(axis=1)
    assert (got == engine)[decided].mean() >= 0.99


# =========================================================================== files

def test_export_writes_deterministic_checked_files(tmp_path):
    model, _, _ = _trained("cnn", 8)
    for fmt in FORMATS:
        a, b = tmp_path / f"a_{fmt}.onnx", tmp_path / f"b_{fmt}.onnx"
        report = export_model(model, fmt, str(a))
        assert export_model(model, fmt, str(b)) == report
        assert a.read_bytes() == b.read_bytes()
        proto = onnx.load(str(a))
        onnx.checker.check_model(proto, full_check=True)
        meta = read_metadata(proto)
        assert meta["report"] == report and meta["format"] == fmt
        assert json.loads(meta["formats"]) == model.formats()


def test_qdq_refuses_formats_wider_than_16_bits():
    model, _, _ = _trained("mlp", 20)
    with pytest.raises(EdgeDFAError, match="wider than the 16-bit integers QDQ can hold"):
        build_proto(model, "qdq")


def test_export_errors_name_the_problem(tmp_path):
    model = IntModel(arch.mlp(0, n_in=4, hidden=(3,)), Numerics.from_bits(8), 0)
    with pytest.raises(EdgeDFAError, match="not calibrated"):
        export_model(model, "int", str(tmp_path / "m.onnx"))
    model.calibrate(np.ones((4, 4)))
    with pytest.raises(EdgeDFAError, match="export format 'int8'"):
        export_model(model, "int8", str(tmp_path / "m.onnx"))
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeDFAError, match="cannot write"):
        export_model(model, "int", str(tmp_path / "file" / "x.onnx"))


def _structure(g, names=True):
    """Nodes as (name, op, inputs, outputs); tensors numbered by first appearance unless ``names``."""
    ids = {g.input_name: 0}
    tag = (lambda t: t) if names else (lambda t: ids.setdefault(t, len(ids)) if t else "")
    nodes = [(n.name, n.op, [tag(i) for i in n.inputs], [tag(o) for o in n.outputs]) for n in g.nodes]
    return tuple(g.input_shape), tag(g.output_name), nodes


def _same_structure(a, b, names=True):
    assert a.input_name == b.input_name
    assert _structure(a, names) == _structure(b, names)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "gru", "lstm"])
@pytest.mark.parametrize("bits", [8, 16])
def test_float_export_round_trips_to_the_same_integer_model(tmp_path, kind, bits):
    """load_graph(export) has the same structure and float weights; load_onnx restores the codes."""
    rng = np.random.default_rng(bits)
    graph = {"mlp": lambda: arch.mlp(2, n_in=12, hidden=(9, 7)), "cnn": lambda: arch.cnn(2, channels=(3, 4)),
             "gru": lambda: arch.recurrent("gru", 2, seq=4, n_in=5, hidden=6),
             "lstm": lambda: arch.recurrent("lstm", 2, seq=4, n_in=5, hidden=6)}[kind]()
    for node in graph.nodes:  # non-zero biases: 16-bit models get 32-bit biases float32 cannot hold
        if "B" in node.params:
            node.params["B"] = rng.uniform(-0.3, 0.3, np.shape(node.params["B"]))
    model = build_model(graph, Numerics.from_bits(bits), rng)
    path = str(tmp_path / "m.onnx")
    report = export_model(model, "float", path)
    imported = load_graph(path)
    _same_structure(imported, graph, names=kind not in ("gru", "lstm"))  # the importer renames Y, Y_h
    for node, layer in zip(imported.nodes, model.layers):
        for key, value in layer.float_params().items():
            assert np.array_equal(node.params[key], value.astype(np.float32))
    back = edgedfa.load_onnx(path)
    assert back.formats() == model.formats() and back.seed == model.seed
    for a, b in zip(model.layers, back.layers):
        assert all(np.array_equal(a.params[k].codes, b.params[k].codes) and a.params[k].fmt == b.params[k].fmt
                   for k in a.params)
    _same_structure(back.graph, graph)
    x = sample_inputs(model, rng, 8)
    assert np.array_equal(back.run(x), model.run(x))
    if bits == 16 and kind != "lstm":
        assert "rounded to float32 (exact codes kept in metadata" in report


def test_load_onnx_with_numerics_quantizes_afresh(tmp_path):
    """Backward compatible: explicit numerics still re-quantize the float graph."""
    model, _, _ = _trained("mlp", 8)
    path = str(tmp_path / "m.onnx")
    export_model(model, "float", path)
    fresh = edgedfa.load_onnx(path, numerics=Numerics.from_bits(6))
    assert fresh.in_fmt is None and fresh.layers[0].params["W"].fmt.width == 6
    assert load_exported(str(tmp_path / "m.onnx")) is not None
    export_model(model, "int", str(tmp_path / "i.onnx"))
    assert load_exported(str(tmp_path / "i.onnx")) is None  # only float exports import back
