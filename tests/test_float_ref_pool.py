"""float_ref MaxPool / AveragePool on raw canonical nodes (ceil_mode, count_include_pad,
dilations kept as attributes, not turned into pads by the importer) against onnxruntime."""

import itertools

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st
from onnx import helper

from edgedfa import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.onnx import load_graph_bytes
from onnx_helpers import model, ort_run, rel_err

RTOL = 1e-6
OPSET = 19  # AveragePool takes dilations from opset 19


def onnx_pool(op, attrs, in_shape):
    """One-node ONNX model; the output shape is left symbolic because onnx's shape inference
    keeps the ceil_mode window that starts in the end padding, which onnxruntime drops."""
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    dims = ["N", "C", "H", "W"][:len(in_shape) + 1]
    return model([node], {}, ["N", *in_shape], opset=OPSET, out_shape=dims)


def raw_graph(op, attrs, in_shape):
    return Graph("pool", "x", tuple(in_shape), "y", [Node("pool", op, ["x"], ["y"], dict(attrs), {})])


def only_padding(attrs, spatial):
    """Does some window (ONNX output count, ceil_mode's drop rule) hold no input element?"""
    rank = len(spatial)
    k, s, d, p = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"]
    for i, n in enumerate(spatial):
        span = n + p[i] + p[rank + i] - ((k[i] - 1) * d[i] + 1)
        out = (-(-span // s[i]) if attrs["ceil_mode"] else span // s[i]) + 1
        if attrs["ceil_mode"] and (out - 1) * s[i] >= n + p[i]:
            out -= 1
        for o, t in itertools.product(range(out), range(k[i])):
            if all(not 0 <= o * s[i] - p[i] + j * d[i] < n for j in range(k[i])):
                return True
    return False


def dyadic(rng, shape):
    """Inputs with exact float32 sums, so onnxruntime's float32 average rounds only once."""
    return (rng.integers(-48, 49, size=shape) / 8).astype(np.float32)


@st.composite
def pool_cases(draw, op):
    rank = draw(st.sampled_from([1, 2]))
    spatial = [draw(st.integers(1, 8)) for _ in range(rank)]
    kernel = [draw(st.integers(1, 4)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.sampled_from([1, 1, 2, 3])) for _ in range(rank)]
    pads = [draw(st.integers(0, kernel[i % rank] - 1)) for i in range(2 * rank)]  # ORT: pad < kernel
    assume(all(spatial[i] + pads[i] + pads[rank + i] >= (kernel[i] - 1) * dilations[i] + 1
               for i in range(rank)))
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
             "ceil_mode": draw(st.integers(0, 1))}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    in_shape = (draw(st.integers(1, 3)),) + tuple(spatial)
    return attrs, in_shape, np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def check_against_ort(op, attrs, in_shape, rng):
    x = dyadic(rng, (2,) + in_shape)
    g = raw_graph(op, attrs, in_shape)
    if only_padding(attrs, in_shape[1:]):  # ORT: -FLT_MAX / 0 there; the reference refuses
        event("a window covers only padding: refused")
        with pytest.raises(EdgeDFAError, match="'pool'.*only padding"):
            run_float(g, x)
        return
    y = run_float(g, x)
    ref = ort_run(onnx_pool(op, attrs, in_shape), x)
    assert rel_err(y, ref) <= RTOL
    # where the importer accepts the node (ceil_mode as extra end pads), it agrees too
    try:
        imported = load_graph_bytes(onnx_pool(op, attrs, in_shape).SerializeToString(), source="t")
    except EdgeDFAError:
        event("importer refuses the node")
        return
    event(f"ceil_mode={attrs['ceil_mode']}, also checked through the importer")
    assert rel_err(run_float(imported, x), ref) <= RTOL


@given(pool_cases("MaxPool"))
def test_maxpool_matches_onnxruntime(case):
    check_against_ort("MaxPool", *case)


@given(pool_cases("AveragePool"))
def test_averagepool_matches_onnxruntime(case):
    check_against_ort("AveragePool", *case)


# hand-picked corner cases, values checked against onnxruntime 1.32
CORNERS = [
    # n=4, k=2, s=2, end pad 1: ceil gives 3 windows, the third would start in the end pad
    ("MaxPool", (1, 4), dict(kernel_shape=[2], strides=[2], pads=[0, 1], ceil_mode=1), [[2, 4]]),
    ("AveragePool", (1, 4), dict(kernel_shape=[2], strides=[2], pads=[0, 1], ceil_mode=1,
                                 count_include_pad=1), [[1.5, 3.5]]),
    # n=5, k=3, s=2, end pad 1: the last window is x[4], explicit pad, ceil region -> x[4]/2
    ("AveragePool", (1, 5), dict(kernel_shape=[3], strides=[2], pads=[0, 1], ceil_mode=1,
                                 count_include_pad=1), [[2, 4, 2.5]]),
    ("AveragePool", (1, 5), dict(kernel_shape=[3], strides=[2], pads=[0, 1], ceil_mode=1,
                                 count_include_pad=0), [[2, 4, 5]]),
    # no pads: the ceil window x[4] counts 1 even with count_include_pad=1
    ("AveragePool", (1, 5), dict(kernel_shape=[2], strides=[2], ceil_mode=1, count_include_pad=1),
     [[1.5, 3.5, 5]]),
    # dilation 2 with ceil_mode: windows {0,2}, {2,4}, {4, ceil region}
    ("AveragePool", (1, 6), dict(kernel_shape=[2], strides=[2], dilations=[2], ceil_mode=1,
                                 count_include_pad=1), [[2, 4, 5]]),
    ("MaxPool", (1, 6), dict(kernel_shape=[2], strides=[2], dilations=[2], ceil_mode=1),
     [[3, 5, 5]]),
]


@pytest.mark.parametrize("op,in_shape,attrs,expect", CORNERS)
def test_corner_cases(op, in_shape, attrs, expect):
    x = np.arange(1, 1 + np.prod(in_shape), dtype=np.float32).reshape((1,) + in_shape)
    y = run_float(raw_graph(op, attrs, in_shape), x)
    np.testing.assert_array_equal(y[0], np.array(expect, dtype=np.float64))
    full = {"strides": [1], "dilations": [1], "pads": [0, 0], **attrs}
    np.testing.assert_array_equal(ort_run(onnx_pool(op, full, in_shape), x)[0], y[0])


@pytest.mark.parametrize("attrs,match", [
    (dict(kernel_shape=[2], dilations=[3], pads=[1, 1]), "only padding"),  # n=2: taps -1, 2
    (dict(kernel_shape=[2], auto_pad="SAME_UPPER"), "auto_pad"),
    (dict(kernel_shape=[2, 2]), "spatial dims"),
    (dict(kernel_shape=[4], strides=[2]), "does not fit"),
])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_refused(op, attrs, match):
    with pytest.raises(EdgeDFAError, match=f"'pool' \\({op}\\).*{match}"):
        run_float(raw_graph(op, attrs, (1, 2)), np.ones((1, 1, 2)))
