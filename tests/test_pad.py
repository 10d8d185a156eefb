"""Pad on data (constant, reflect, edge, wrap; 1-d and 2-d): import against onnxruntime, the
error scatter against the float reference's gradient, engine vs hdl_models under every
algorithm, the exports, and the refusals (docs/datapath.md §8.5.1)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx_helpers import model, ort_run, rand, rel_err

import edgedfa
from edgedfa.cosim import emulate
from edgedfa.credit import make_plan
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, dequantize
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.layers.pad import Pad, pad_sources
from edgedfa.layers.base import LayerSpec
from edgedfa.model import IntModel
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph, load_graph_bytes
from edgedfa.onnx.export import build_proto
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig

MODES = ("constant", "reflect", "edge", "wrap")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


@st.composite
def pad_cases(draw, modes=MODES):
    """(mode, per-sample shape, pads begin.../end... over the sample axes, value)."""
    mode = draw(st.sampled_from(modes))
    rank = draw(st.sampled_from([1, 2]))  # spatial axes: 1-d or 2-d
    shape = (draw(st.integers(1, 3)),) + tuple(draw(st.integers(2, 5)) for _ in range(rank))
    top = {"constant": 4, "edge": 4, "wrap": None, "reflect": None}[mode]
    pads = []
    for _ in range(2):
        pads += [draw(st.integers(0, top if top is not None else (n - 1 if mode == "reflect" else n)))
                 for n in shape]
    value = draw(st.sampled_from([0.0, 0.75, -1.5, 3.0])) if mode == "constant" else 0.0
    return mode, shape, pads, value


def _onnx_pad(mode, shape, pads, value, opset):
    """A one-node ONNX model in the opset's own form of Pad (attributes, or inputs)."""
    full = [0] + pads[:len(shape)] + [0] + pads[len(shape):]
    if opset < 11:
        node = helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=full, value=value)
        return model([node], {}, ["N"] + list(shape), opset=opset)
    inits = {"pads": np.array(full, np.int64), "v": np.array(value, np.float32)}
    node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode=mode)
    return model([node], inits, ["N"] + list(shape), opset=opset)


@given(case=pad_cases(), opset=st.sampled_from([2, 11, 13, 18, 19]), seed=st.integers(0, 99))
def test_import_matches_onnxruntime(case, opset, seed):
    mode, shape, pads, value = case
    opset = 19 if mode == "wrap" else opset  # ONNX has wrap from opset 19
    m = _onnx_pad(mode, shape, pads, value, opset)
    x = rand(3, *shape, seed=seed)
    g = load_graph_bytes(m.SerializeToString(), source="pad.onnx")
    assert [n.op for n in g.nodes] == ["Pad"] and g.nodes[0].attrs["mode"] == mode
    assert rel_err(run_float(g, x), ort_run(m, x)) == 0.0  # a gather: exact


def test_axes_input_of_opset_18_pads_only_the_axes_named():
    inits = {"pads": np.array([1, 2, 0, 1], np.int64), "axes": np.array([-1, 2], np.int64)}
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="edge")
    m = model([node], inits, ["N", 2, 4, 5], opset=18, out_shape=["N", 2, 7, 6])
    x = rand(2, 2, 4, 5)
    g = load_graph_bytes(m.SerializeToString(), source="pad.onnx")
    assert g.nodes[0].attrs["pads"] == [0, 2, 1, 0, 1, 0]
    assert rel_err(run_float(g, x), ort_run(m, x)) == 0.0


def test_zero_pad_before_a_conv_still_merges_into_it():
    W = rand(4, 2, 3, 3)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "W"], ["y"])]
    m = model(nodes, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "W": W}, ["N", 2, 6, 6], opset=13)
    g = load_graph_bytes(m.SerializeToString(), source="pad.onnx")
    assert [n.op for n in g.nodes] == ["Conv"] and g.nodes[0].attrs["pads"] == [1, 1, 1, 1]


def test_sources_per_mode():
    assert pad_sources(4, 2, 3, "edge").tolist() == [0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert pad_sources(4, 2, 3, "wrap").tolist() == [2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert pad_sources(4, 3, 3, "reflect").tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert pad_sources(2, 1, 2, "constant").tolist() == [-1, 0, 1, -1, -1]


# ------------------------------------------------------------------ the integer layer alone
def _layer(mode, shape, pads, value, bits=16):
    node = Node("pad", "Pad", ["x"], ["y"], {"mode": mode, "pads": pads, "value": value})
    return Pad(node, LayerSpec(0, Numerics.from_bits(bits), 0, [shape])), node


@given(case=pad_cases(), seed=st.integers(0, 99))
def test_forward_is_the_float_pad_of_the_codes(case, seed):
    """Codes in, the same codes out where the input is read; the constant is quantized (AP_RND_CONV)."""
    mode, shape, pads, value = case
    layer, node = _layer(mode, shape, pads, value)
    fmt = FixedFormat(8, 3)
    codes = np.random.default_rng(seed).integers(-128, 128, (2,) + shape)
    y = layer.forward([QTensor(codes, fmt)])[0]
    node_q = Node("pad", "Pad", ["x"], ["y"], {"mode": mode, "pads": pads, "value": float(np.clip(
        np.round(value * 32) / 32, -4, 127 / 32))})
    ref = run_float(Graph("g", "x", shape, "y", [node_q]), dequantize(codes, fmt))
    assert y.fmt == fmt and np.array_equal(dequantize(y.codes, fmt), ref)


@given(case=pad_cases(), seed=st.integers(0, 99))
def test_error_scatter_is_the_float_gradient(case, seed):
    """dx = d/dx sum(dy * pad(x)) by central differences of the float reference (exact here:
    pad is linear); padding positions of a constant pad give no error."""
    mode, shape, pads, value = case
    layer, node = _layer(mode, shape, pads, value)
    rng = np.random.default_rng(seed)
    dy = rng.integers(-20, 21, (1,) + layer.out_shape)
    dx = layer.backward(None, QTensor(dy, FixedFormat.with_frac(16, 10)), [True])[0][0]
    graph = Graph("g", "x", shape, "y", [node])
    x = rng.integers(-4, 5, (1,) + shape).astype(np.float64)  # x +- 1/2 exact: exact differences
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = 0.5
        grad[i] = ((run_float(graph, x + e) - run_float(graph, x - e)) * dy).sum()
    assert dx.fmt.frac_bits <= 10  # 16 bits hold every sum here: nothing is lost
    assert np.array_equal(dequantize(dx.codes, dx.fmt), grad * 2.0 ** -10)


def test_overlapping_error_is_narrowed_to_err_bits():
    layer, _ = _layer("edge", (1, 3), [0, 4, 0, 4], 0.0, bits=8)
    dx = layer.backward(None, QTensor(np.full((1, 1, 11), 100), FixedFormat.with_frac(8, 7)), [True])[0][0]
    assert dx.codes.tolist() == [[[125, 25, 125]]] and dx.fmt.frac_bits == 5  # 500, 100, 500 >> 2


def test_constant_pad_keeps_the_error_format():
    layer, _ = _layer("constant", (1, 3), [0, 2, 0, 1], 1.0, bits=8)
    dx = layer.backward(None, QTensor(np.arange(6).reshape(1, 1, 6), FixedFormat.with_frac(8, 7)), [True])[0][0]
    assert dx.codes.tolist() == [[[2, 3, 4]]] and dx.fmt == FixedFormat.with_frac(8, 7)


# ------------------------------------------------------------------ in a network
def cnn_with_pads(mode, mode2, rank, pads, pads2, value, seed):
    """Pad -> Conv -> Relu -> Pad -> Conv -> Relu -> Flatten -> Dense (1-d or 2-d)."""
    rng = np.random.default_rng(seed)
    size = (6,) * rank
    k = [3] * rank

    def conv(name, x, y, cin, cout):
        return Node(name, "Conv", [x], [y], {"kernel_shape": k, "strides": [1] * rank, "pads": [0] * (2 * rank)},
                    {"W": rng.uniform(-.6, .6, (cout, cin) + tuple(k)), "B": rng.uniform(-.1, .1, cout)})

    def full(pd):
        return [pd] * rank + [pd] * rank

    s1 = tuple(n + 2 * pads - 2 for n in size)
    s2 = tuple(n + 2 * pads2 - 2 for n in s1)
    nodes = [Node("pad1", "Pad", ["x"], ["p1"], {"mode": mode, "pads": [0] + full(pads)[:rank] + [0] +
                                                  full(pads)[rank:], "value": value}),
             conv("conv1", "p1", "c1", 2, 3), Node("relu1", "Relu", ["c1"], ["r1"]),
             Node("pad2", "Pad", ["r1"], ["p2"], {"mode": mode2, "pads": [0] + full(pads2)[:rank] + [0] +
                                                   full(pads2)[rank:], "value": value}),
             conv("conv2", "p2", "c2", 3, 4), Node("relu2", "Relu", ["c2"], ["r2"]),
             Node("flat", "Flatten", ["r2"], ["f"], {"axis": 1}),
             Node("dense", "Dense", ["f"], ["y"], {}, {"W": rng.uniform(-.3, .3, (3, 4 * int(np.prod(s2)))),
                                                       "B": np.zeros(3)})]
    return Graph("padcnn", "x", (2,) + size, "y", nodes)


@settings(max_examples=30)
@given(mode=st.sampled_from(MODES), mode2=st.sampled_from(MODES), rank=st.sampled_from([1, 2]),
       pads=st.integers(1, 2), pads2=st.integers(0, 1), value=st.sampled_from([0.0, 0.5, -2.0]),
       algo=st.sampled_from(["bp", "dfa", "sdfa", "modular", "hybrid"]), bits=st.sampled_from([6, 8, 12]),
       scaling=st.sampled_from(["adaptive", "static"]), seed=st.integers(0, 999))
def test_engine_and_hdl_models_are_bit_exact(mode, mode2, rank, pads, pads2, value, algo, bits, scaling, seed):
    graph = cnn_with_pads(mode, mode2, rank, pads, pads2, value, seed)
    m = IntModel(graph, Numerics.from_bits(bits, scaling=scaling), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0, 1, (12,) + graph.input_shape)
    y = rng.integers(0, 3, 12)
    m.calibrate(x)
    r = emulate(m, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(algo=algo, batch_size=6, lr_shift=2))
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 8


@pytest.mark.parametrize("algo", ["dfa", "modular", "hybrid"])
def test_a_pad_opens_the_module_of_the_layer_it_pads(algo):
    graph = cnn_with_pads("reflect", "edge", 2, 1, 1, 0.0, 0)
    modules = [m.nodes for m in make_plan(graph, algo).modules]
    assert modules[0][:2] == ["pad1", "conv1"]
    home = {n: i for i, m in enumerate(modules) for n in m}
    assert home["pad2"] == home["conv2"] != home["relu1"] or algo != "dfa"
    assert home["pad2"] == home["conv2"]


@settings(max_examples=20)
@given(mode=st.sampled_from(MODES), mode2=st.sampled_from(MODES), rank=st.sampled_from([1, 2]),
       value=st.sampled_from([0.0, 0.5, -2.0, 100.0]), bits=st.sampled_from([4, 8, 12]),
       scaling=st.sampled_from(["adaptive", "static"]), seed=st.integers(0, 999))
def test_exports(mode, mode2, rank, value, bits, scaling, seed):
    """int: onnxruntime equals the engine bit for bit; float: ONNX Pad (wrap: Gathers) equals the float reference."""
    graph = cnn_with_pads(mode, mode2, rank, 2, 1, value, seed)
    m = IntModel(graph, Numerics.from_bits(bits, scaling=scaling), seed)
    x = np.random.default_rng(seed).normal(0, 1, (8,) + graph.input_shape).astype(np.float32)
    m.calibrate(x)
    proto, report = build_proto(m, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), m.run(x))
    proto = build_proto(m, "float")[0]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Pad") == sum(md != "wrap" for md in (mode, mode2))
    ref = run_float(m.to_graph(), x)
    assert np.abs(ort_run(proto, x) - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    build_proto(m, "qdq")  # checked by onnx


@pytest.mark.parametrize("mode", MODES)
def test_qdq_pad_writes_the_engines_constant(mode):
    """Pad alone: qdq equals the engine. The constant lies just above a tie of the input's grid,
    2.5 LSB + 2^-40: the engine rounds it up to 3 LSB; written as a float32 it would be the tie,
    which QuantizeLinear rounds to 2: so the export writes the code, dequantized."""
    x = np.random.default_rng(1).normal(0, 1, (5, 2, 4, 4)).astype(np.float32)

    def pad_model(value):
        nodes = [Node("pad", "Pad", ["x"], ["p"], {"mode": mode, "pads": [0, 2, 1, 0, 1, 2], "value": value}),
                 Node("flat", "Flatten", ["p"], ["y"], {"axis": 1})]
        m = IntModel(Graph("g", "x", (2, 4, 4), "y", nodes), Numerics.from_bits(8), 0)
        m.calibrate(x)
        return m

    frac = pad_model(0.0).in_fmt.frac_bits
    m = pad_model(2.5 * 2.0 ** -frac + 2.0 ** -40)
    if mode == "constant":
        assert np.all(m.run(x).reshape(5, 2, 7, 7)[:, :, :2] == 3 * 2.0 ** -frac)  # rows of padding
    proto, report = build_proto(m, "qdq")
    assert report.startswith("qdq: bit-exact") and np.array_equal(ort_run(proto, x), m.run(x))


# ------------------------------------------------------------------ refusals
def _refused(m, *fragments):
    with pytest.raises(EdgeDFAError) as err:
        load_graph_bytes(m.SerializeToString(), source="bad.onnx")
    for f in ("bad.onnx", "'pad'") + fragments:
        assert f in str(err.value), str(err.value)


@pytest.mark.parametrize("pads,mode,fragments", [
    ([1, 0, 0, 0, 0, 0], "constant", ("batch axis",)),
    ([0, -1, 0, 0, 0, 0], "constant", ("negative pads", "cropping")),
    ([0, 0, 4, 0, 0, 0], "reflect", ("reflect pads (4, 0) on an axis of 4",)),
    ([0, 0, 0, 0, 0, 5], "wrap", ("wrap pads (0, 5) on an axis of 4",))])
def test_refusals_are_named(pads, mode, fragments):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode, name="pad")
    _refused(model([node], {"pads": np.array(pads, np.int64)}, ["N", 2, 4], opset=19), *fragments)


def test_pads_from_data_are_refused():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Pad", ["x", "s"], ["y"], name="pad")]
    _refused(model(nodes, {}, ["N", 2, 4], opset=13, out_shape=None), "pads")


# ------------------------------------------------------------------ PyTorch exports
@pytest.mark.parametrize("name,modes", [("reflect_cnn_ts.onnx", ["reflect", "reflect"]),
                                        ("reflect_cnn_dynamo.onnx", ["reflect", "reflect"]),
                                        ("replication_pad1d_ts.onnx", ["edge"]),
                                        ("replication_pad1d_dynamo.onnx", ["edge"])])
def test_pytorch_fixtures_import_pads(name, modes):
    path = os.path.join(FIXTURES, name)
    g = load_graph(path)
    assert [n.attrs["mode"] for n in g.nodes if n.op == "Pad"] == modes
    x = rand(6, *g.input_shape, seed=3)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert rel_err(run_float(g, x), ref) <= 1e-5
    m = edgedfa.load_onnx(path, data=x)
    assert np.array_equal(ort_run(build_proto(m, "int")[0], x), m.run(x))
