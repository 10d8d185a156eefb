"""Integer pooling layers against float pooling (ONNX semantics) and their float adjoints;
the average pool's reciprocal (docs/datapath.md §8.3)."""

import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, FixedFormat, quantize
from edgedfa.graph import Node
from edgedfa.fixed import QTensor
from edgedfa.layers.base import LayerSpec
from edgedfa.numerics import Numerics
from edgedfa.layers.pool import AveragePool, GlobalAveragePool, MaxPool, reciprocal

STATIC = Numerics(scaling="static")  # average pooling keeps the input's format


def make_pool(cls, attrs, in_shape, num=None):
    node = Node("pool", cls.__name__, ["x"], ["y"], dict(attrs), {})
    layer = cls(node, LayerSpec(2, num or Numerics(), 0, [tuple(in_shape)]))
    return layer


@st.composite
def pool_cases(draw):
    nd = draw(st.sampled_from([1, 2]))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    dil = [draw(st.integers(1, 2)) for _ in range(nd)]
    eff = [dil[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    pads = [draw(st.integers(0, eff[i % nd] - 1)) for i in range(2 * nd)]
    assume(all(spatial[i] + pads[i] + pads[i + nd] >= eff[i] for i in range(nd)))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dil,
             "ceil_mode": int(draw(st.booleans())), "count_include_pad": int(draw(st.booleans()))}
    assume(all(real.count(None) < len(real) for real, _ in windows(attrs, (1,) + spatial)[0].values()))
    c = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return attrs, (c,) + spatial, rng


def windows(attrs, in_shape):
    """Float-side window enumeration: for each output index, the list of input indices
    (None for padding), following the ONNX formulas (ceil_mode drops a window that would
    start in the end padding), and the count of padded-in taps for count_include_pad."""
    spatial = in_shape[1:]
    nd = len(spatial)
    k, s, d, p = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"]
    per_axis = []
    for i in range(nd):
        span = spatial[i] + p[i] + p[i + nd] - (d[i] * (k[i] - 1) + 1)
        n_out = (-(-span // s[i]) if attrs.get("ceil_mode") else span // s[i]) + 1
        if attrs.get("ceil_mode") and (n_out - 1) * s[i] >= spatial[i] + p[i]:
            n_out -= 1
        axis = []
        for o in range(n_out):
            taps = [o * s[i] - p[i] + t * d[i] for t in range(k[i])]
            axis.append([(q if 0 <= q < spatial[i] else None, -p[i] <= q < spatial[i] + p[i + nd]) for q in taps])
        per_axis.append(axis)
    out = {}
    for idx in itertools.product(*[range(len(a)) for a in per_axis]):
        taps = list(itertools.product(*[per_axis[i][idx[i]] for i in range(nd)]))
        real = [tuple(t[0] for t in tap) if all(t[0] is not None for t in tap) else None for tap in taps]
        padded_in = sum(all(t[1] for t in tap) for tap in taps)
        out[idx] = (real, padded_in)
    return out, tuple(len(a) for a in per_axis)


def float_pool(kind, x, attrs, in_shape):
    """(y, adjoint(dy)) of float max / average pooling."""
    wins, out_sp = windows(attrs, in_shape)
    y = np.zeros(x.shape[:2] + out_sp)
    route = {}
    for idx, (real, padded_in) in wins.items():
        vals = [x[(slice(None), slice(None)) + r] if r is not None else None for r in real]
        present = [v for v in vals if v is not None]
        if kind == "max":
            stack = np.stack([v if v is not None else np.full(x.shape[:2], -np.inf) for v in vals])
            y[(slice(None), slice(None)) + idx] = stack.max(axis=0)
            route[idx] = (real, stack.argmax(axis=0))
        else:
            n = padded_in if attrs.get("count_include_pad") else len(present)
            y[(slice(None), slice(None)) + idx] = sum(present) / n
            route[idx] = (real, n)

    def adjoint(dy):
        dx = np.zeros_like(x, dtype=float)
        for idx, (real, info) in route.items():
            g = dy[(slice(None), slice(None)) + idx]
            for t, r in enumerate(real):
                if r is None:
                    continue
                if kind == "max":
                    dx[(slice(None), slice(None)) + r] += np.where(info == t, g, 0.0)
                else:
                    dx[(slice(None), slice(None)) + r] += g / info
        return dx

    return y, adjoint


def qinput(rng, batch, in_shape, bits, lo=-1.0):
    fmt = FixedFormat(bits, 1)
    return QTensor(quantize(rng.uniform(lo, 1, size=(batch,) + tuple(in_shape)), fmt), fmt)


# ---------------------------------------------------------------- reciprocal

def test_reciprocal_spec():
    n = np.arange(1, 1025)
    r, L = reciprocal(n)
    assert (2 * n > 2 ** L).all() and (n <= 2 ** L).all()
    assert ((r >= 2**16) & (r < 2**17)).all()  # a 17-bit unsigned constant with its top bit set
    err = np.abs(r / 2.0 ** (16 + L) - 1.0 / n)
    assert (err <= 2.0 ** -(17 + L)).all()
    pow2 = (n & (n - 1)) == 0
    assert (r[pow2] == 2**16).all() and (err[pow2] == 0).all()
    assert reciprocal(np.array([3]))[0][0] == 87381  # round(2^18 / 3) = round(87381.33) at L = 2
    with pytest.raises(EdgeDFAError):
        reciprocal(np.array([0]))


# ---------------------------------------------------------------- max pooling

@given(pool_cases())
def test_maxpool_forward_backward_against_float(case):
    attrs, in_shape, rng = case
    layer = make_pool(MaxPool, attrs, in_shape)
    x = qinput(rng, 2, in_shape, 8)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    fy, adjoint = float_pool("max", x.value(), attrs, in_shape)
    assert y.codes.shape == fy.shape and layer.out_shape == fy.shape[1:]
    np.testing.assert_array_equal(y.value(), fy)  # exact: a max moves codes only
    assert y.fmt == x.fmt
    dy = QTensor(rng.integers(-128, 128, size=y.codes.shape), FixedFormat(8, 2))
    (dx,), grads = layer.backward(cache, dy, [True])
    assert grads == {}
    fdx = adjoint(dy.value())
    if layer.geo.overlapping():
        assert dx.fmt.width == 8
        assert np.abs(dx.value() - fdx).max() <= dx.fmt.lsb / 2
    else:
        assert dx.fmt == dy.fmt
        np.testing.assert_array_equal(dx.value(), fdx)


def test_maxpool_ties_go_to_first_tap():
    layer = make_pool(MaxPool, {"kernel_shape": [2, 2], "strides": [2, 2]}, (1, 2, 2))
    x = QTensor(np.array([[[[5, 7], [7, 7]]]]), FixedFormat(8, 4))
    y, cache = layer.forward([x], train=True)
    (dx,), _ = layer.backward(cache, QTensor(np.array([[[[3]]]]), FixedFormat(8, 1)), [True])
    assert y.codes.item() == 7 and dx.codes.tolist() == [[[[0, 3], [0, 0]]]]


# ---------------------------------------------------------------- average pooling

@given(pool_cases(), st.sampled_from([8, 16]), st.sampled_from(["adaptive", "static"]))
def test_averagepool_forward_backward_against_float(case, bits, scaling):
    """Static: the mean in the input's format; adaptive: in the layer's own, calibrated on the
    batch (one spare integer bit over its largest mean), managed like a conv output's."""
    attrs, in_shape, rng = case
    num = Numerics.from_bits(bits, scaling=scaling)
    layer = make_pool(AveragePool, attrs, in_shape, num)
    x = qinput(rng, 2, in_shape, bits)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    fy, adjoint = float_pool("avg", x.value(), attrs, in_shape)
    assert y.codes.shape == fy.shape and y.fmt == (x.fmt if scaling == "static" else layer.out_fmt)
    assert layer.managed_formats() == ({} if scaling == "static" else {"out": y.fmt})
    bound = y.fmt.lsb / 2 + np.abs(x.value()).max() * 2.0**-17
    assert np.abs(y.value() - fy).max() <= bound
    n = layer.counts
    pow2 = ((n & (n - 1)) == 0)
    if pow2.all():  # exact reciprocal: round-half-up of the true mean
        np.testing.assert_array_equal(y.codes,
                                      quantize(fy, y.fmt, "AP_RND", "AP_SAT"))
    dy = QTensor(rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), size=y.codes.shape), FixedFormat(bits, 2))
    (dx,), grads = layer.backward(cache, dy, [True])
    assert grads == {} and dx.fmt.width == bits
    fdx = adjoint(dy.value())
    cover = adjoint(np.ones_like(dy.value())) * n.max()  # windows covering each input (upper bound)
    assert (np.abs(dx.value() - fdx) <= dx.fmt.lsb / 2 + cover * np.abs(dy.value()).max() * 2.0**-17 + 1e-15).all()


def test_average_of_three_in_integers():
    """sum 3 codes, multiply by 87381 (= round(2^18/3)), drop 18 bits with AP_RND."""
    layer = make_pool(AveragePool, {"kernel_shape": [3]}, (1, 3), STATIC)  # the mean in the input's format
    x = QTensor(np.array([[[10, 20, 31]]]), FixedFormat(8, 4))
    y, _ = layer.forward([x])
    assert y.codes.item() == (61 * 87381 + (1 << 17)) >> 18 == 20


def test_count_include_pad_changes_border_windows():
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    x = QTensor(np.full((1, 1, 3, 3), 64), FixedFormat(8, 2))
    y0 = make_pool(AveragePool, attrs, (1, 3, 3), STATIC).forward([x])[0].codes[0, 0]
    y1 = make_pool(AveragePool, {**attrs, "count_include_pad": 1}, (1, 3, 3), STATIC).forward([x])[0].codes[0, 0]
    assert (y0 == 64).all()
    assert y1[1, 1] == 64 and y1[0, 0] == round(64 * 4 / 9) and y1[0, 1] == round(64 * 6 / 9)


@pytest.mark.parametrize("in_shape", [(3, 4, 5), (2, 6), (1, 3, 3)])
def test_global_average_pool(in_shape):
    rng = np.random.default_rng(4)
    layer = make_pool(GlobalAveragePool, {}, in_shape, Numerics.from_bits(12))
    x = qinput(rng, 2, in_shape, 12)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    assert layer.out_shape == (in_shape[0],) + (1,) * (len(in_shape) - 1) == y.codes.shape[1:]
    mean = x.value().mean(axis=tuple(range(2, x.codes.ndim)), keepdims=True)
    assert np.abs(y.value() - mean).max() <= y.fmt.lsb / 2 + 2.0**-17
    as_avg = make_pool(AveragePool, {"kernel_shape": list(in_shape[1:])}, in_shape, Numerics.from_bits(12))
    as_avg.calibrate([x])
    np.testing.assert_array_equal(as_avg.forward([x])[0].codes, y.codes)
    (dx,), _ = layer.backward(cache, QTensor(np.ones(y.codes.shape, np.int64) * 100, FixedFormat(12, 1)), [True])
    n = int(np.prod(in_shape[1:]))
    assert np.abs(dx.value() - 100 * 2.0**-11 / n).max() <= dx.fmt.lsb / 2 + 2.0**-17


@pytest.mark.parametrize("attrs,match", [
    ({}, "kernel_shape is required"),
    ({"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "smaller than the window"),
    ({"kernel_shape": [9, 2]}, "larger than"),
    ({"kernel_shape": [1, 2], "dilations": [1, 6], "pads": [0, 1, 0, 3]}, "only padding"),
])
def test_bad_attrs(attrs, match):
    with pytest.raises(EdgeDFAError, match=match) as info:
        make_pool(MaxPool, attrs, (1, 4, 4))
    assert "'pool'" in str(info.value)


# ---------------------------------------------------------------- ONNX semantics

ORT_CASES = [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 0, 1], "ceil_mode": 1, "count_include_pad": 1},
    {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1},
]


@pytest.mark.parametrize("attrs", ORT_CASES)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_matches_onnxruntime(attrs, op):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rank = len(attrs["kernel_shape"])
    in_shape = (2,) + ((7, 6) if rank == 2 else (9,))
    a = dict(attrs)
    if op == "MaxPool":
        a.pop("count_include_pad", None)
    layer = make_pool(MaxPool if op == "MaxPool" else AveragePool, a, in_shape, Numerics.from_bits(12))
    x = qinput(np.random.default_rng(6), 2, in_shape, 12)
    layer.calibrate([x])
    y = layer.forward([x])[0]
    node = helper.make_node(op, ["x"], ["y"], **a)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x.value().astype(np.float32)})[0].astype(np.float64)
    assert ref.shape == y.codes.shape
    assert np.abs(y.value() - ref).max() <= (0 if op == "MaxPool" else y.fmt.lsb / 2 + 1e-6)
