"""Fuzzing the importer: mutated bytes and mutated graphs import or raise EdgeDFAError."""

import os

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import edgedfa.onnx as eo
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
SEEDS = [open(os.path.join(FIXTURES, f), "rb").read()
         for f in ("cnn1d_ts.onnx", "gru_ts.onnx", "mlp_ts.onnx", "rnn_dynamo.onnx",
                   "cnn2d_ts.onnx", "reflect_cnn_dynamo.onnx")]


def _import_or_reject(data):
    """The property: a Graph that runs, or EdgeDFAError; nothing else."""
    try:
        g = eo.load_graph_bytes(data, source="fuzz.onnx")
    except EdgeDFAError as exc:
        assert "fuzz.onnx" in str(exc)
        return None
    try:
        y = run_float(g, np.zeros((2,) + tuple(g.input_shape)))
    except EdgeDFAError:
        return g
    assert y.shape[0] == 2
    return g


mutation = st.tuples(st.sampled_from(["flip", "delete", "insert", "truncate"]),
                     st.floats(0, 1, exclude_max=True), st.integers(1, 8),
                     st.binary(min_size=1, max_size=8))


@settings(max_examples=300)
@given(st.sampled_from(range(len(SEEDS))), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_bytes(seed, mutations):
    data = bytearray(SEEDS[seed])
    for kind, where, length, extra in mutations:
        pos = int(where * len(data))
        if kind == "flip":
            data[pos] ^= (1 << (length - 1))
        elif kind == "delete":
            del data[pos:pos + length]
        elif kind == "insert":
            data[pos:pos] = extra
        else:
            del data[pos:]
        if not data:
            break
    _import_or_reject(bytes(data))


OPS = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Reshape", "Flatten", "Transpose", "Squeeze",
       "Unsqueeze", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "LSTM", "GRU",
       "RNN", "Softmax", "BatchNormalization", "Identity", "Dropout", "Gather", "Shape",
       "Clip", "Sum", "Sigmoid", "Elu", "Pad", "Unknown"]
ATTRS = ["axis", "perm", "pads", "strides", "kernel_shape", "group", "dilations",
         "hidden_size", "direction", "layout", "transB", "alpha", "auto_pad", "ceil_mode", "mode", "value"]
ATTR_VALUES = st.one_of(st.integers(-3, 5), st.lists(st.integers(-2, 4), max_size=5),
                        st.floats(-2, 2, allow_nan=False),
                        st.sampled_from(["SAME_UPPER", "VALID", "reverse", "bidirectional",
                                         "x", "reflect", "edge", "wrap"]))
graph_mutation = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 30), st.sampled_from(OPS)),
    st.tuples(st.just("attr"), st.integers(0, 30), st.sampled_from(ATTRS), ATTR_VALUES),
    st.tuples(st.just("drop_input"), st.integers(0, 30), st.integers(0, 5)),
    st.tuples(st.just("swap"), st.integers(0, 30), st.integers(0, 30)),
    st.tuples(st.just("init_shape"), st.integers(0, 30), st.integers(1, 3)),
    st.tuples(st.just("input_dims"), st.lists(st.integers(0, 9), max_size=4)),
    st.tuples(st.just("opset"), st.integers(1, 24)),
)


def _mutate(m, mutation):
    g = m.graph
    kind = mutation[0]
    node = g.node[mutation[1] % len(g.node)] if g.node and kind not in (
        "input_dims", "opset", "init_shape") else None
    if kind == "op":
        node.op_type = mutation[2]
    elif kind == "attr":
        keep = [a for a in node.attribute if a.name != mutation[2]]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute(mutation[2], mutation[3])]
                              if mutation[3] != [] else keep)
    elif kind == "drop_input" and len(node.input) > mutation[2]:
        node.input[mutation[2]] = ""
    elif kind == "swap":
        a, b = mutation[1] % len(g.node), mutation[2] % len(g.node)
        na, nb = onnx.NodeProto(), onnx.NodeProto()
        na.CopyFrom(g.node[a])
        nb.CopyFrom(g.node[b])
        g.node[a].CopyFrom(nb)
        g.node[b].CopyFrom(na)
    elif kind == "init_shape" and g.initializer:
        t = g.initializer[mutation[1] % len(g.initializer)]
        value = numpy_helper.to_array(t).reshape(-1)
        keep = value.size - value.size % mutation[2]
        t.CopyFrom(numpy_helper.from_array(value[:keep].reshape(mutation[2], -1), t.name))
    elif kind == "input_dims":
        dims = g.input[0].type.tensor_type.shape
        del dims.dim[:]
        for i, d in enumerate(mutation[1]):
            dims.dim.add().dim_value = d
    elif kind == "opset":
        m.opset_import[0].version = mutation[1]


@settings(max_examples=300)
@given(st.sampled_from(range(len(SEEDS))), st.lists(graph_mutation, min_size=1, max_size=3))
def test_mutated_graphs(seed, mutations):
    m = onnx.load_from_string(SEEDS[seed])
    for mutation in mutations:
        _mutate(m, mutation)
    _import_or_reject(m.SerializeToString())


def test_unmutated_seeds_import():
    for data in SEEDS:
        assert _import_or_reject(data) is not None
