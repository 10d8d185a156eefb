"""The integer Conv layer: forward within the formats' error bound of a float convolution,
BP gradients against an autograd-free float adjoint, group error propagation, updates."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, FixedFormat, dequantize, quantize, requantize
from edgedfa.graph import Node
from edgedfa.kernels import conv as K
from edgedfa.fixed import QTensor, narrow_dynamic
from edgedfa.layers.base import LayerSpec
from edgedfa.numerics import Numerics
from edgedfa.layers.conv import Conv
from test_conv_kernels import float_conv, float_conv_adjoint


@st.composite
def conv_layers(draw):
    """(W, B or None, attrs, per-sample input shape) of a random Conv node."""
    nd = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):  # depthwise
        groups = draw(st.integers(1, 4))
        cg, og = 1, draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2]))
        cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(2, 7)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = [draw(st.integers(1, 2)) for _ in range(nd)]
    dil = [draw(st.integers(1, 2)) for _ in range(nd)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    assume(all(spatial[i] + pads[i] + pads[i + nd] >= dil[i] * (kernel[i] - 1) + 1 for i in range(nd)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.uniform(-0.5, 0.5, size=(og * groups, cg) + kernel)
    b = rng.uniform(-0.5, 0.5, size=og * groups) if draw(st.booleans()) else None
    attrs = {"kernel_shape": list(kernel), "strides": strides, "pads": pads, "dilations": dil, "group": groups}
    return w, b, attrs, (cg * groups,) + spatial, rng


def make_conv(w, b, attrs, in_shape, num, extra=None, name="conv"):
    params = {"W": w} if b is None else {"W": w, "B": b}
    node = Node(name, "Conv", ["x"], ["y"], dict(attrs), params)
    return Conv(node, LayerSpec(1, num, 7, [tuple(in_shape)], extra=dict(extra or {})))


def quantized_input(rng, batch, in_shape, bits):
    fmt = FixedFormat(bits, 1)
    x = rng.uniform(-1, 1, size=(batch,) + tuple(in_shape))
    return QTensor(quantize(x, fmt), fmt)


@given(conv_layers(), st.sampled_from([6, 8, 12]))
def test_forward_within_format_bound(case, bits):
    w, b, attrs, in_shape, rng = case
    num = Numerics.from_bits(bits)
    layer = make_conv(w, b, attrs, in_shape, num)
    x = quantized_input(rng, 3, in_shape, bits)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    assert y.codes.shape == (3,) + layer.out_shape and y.fmt == layer.out_fmt
    assert cache is x
    wq, geo = layer.params["W"], layer.geo
    afmt = FixedFormat.with_frac(num.acc_bits, x.fmt.frac_bits + wq.fmt.frac_bits)
    bias_q = 0.0
    if b is not None:
        bq = layer.params["B"]
        bias_q = dequantize(requantize(bq.codes, bq.fmt, afmt, num.act_rounding), afmt)
    bshape = (1, -1) + (1,) * geo.ndim
    # tight bound: dequantized parameters, only the output rounding (and bias alignment) differ
    y_deq = float_conv(x.value(), wq.value(), geo) + np.reshape(bias_q, bshape)
    y_deq = np.clip(y_deq, y.fmt.min_value, y.fmt.max_value)
    assert np.abs(y.value() - y_deq).max() <= y.fmt.lsb / 2
    # bound from the formats against the original float parameters
    y_float = float_conv(x.value(), w, geo) + (0.0 if b is None else b.reshape(bshape))
    sum_abs_x = float_conv(np.abs(x.value()), np.ones_like(w), geo)
    bound = y.fmt.lsb / 2 + afmt.lsb / 2 + sum_abs_x * wq.fmt.lsb / 2
    if b is not None:
        bound = bound + layer.params["B"].fmt.lsb / 2
    assert (np.abs(y.value() - np.clip(y_float, y.fmt.min_value, y.fmt.max_value)) <= bound + 1e-12).all()


@given(conv_layers())
def test_bp_gradients_against_float_adjoint_16_bits(case):
    w, b, attrs, in_shape, rng = case
    num = Numerics.from_bits(16, acc_bits=48)
    layer = make_conv(w, b, attrs, in_shape, num)
    x = quantized_input(rng, 2, in_shape, 16)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    efmt = FixedFormat(16, 0)
    dy = QTensor(rng.integers(-2**15, 2**15, size=y.codes.shape), efmt)
    (dx,), grads = layer.backward(cache, dy, [True])
    fdx, fdw = float_conv_adjoint(x.value(), layer.params["W"].value(), dy.value(), layer.geo)
    # the wide gradients are exact
    np.testing.assert_array_equal(grads["W"].value(), fdw)
    if b is not None:
        np.testing.assert_array_equal(grads["B"].value(), dy.value().sum(axis=(0,) + tuple(range(2, dy.codes.ndim))))
    else:
        assert set(grads) == {"W"}
    # dx: the exact transposed convolution narrowed to 16 bits (AP_RND: half an LSB)
    assert dx.fmt.width == 16 and dx.codes.shape == x.codes.shape
    assert np.abs(dx.value() - fdx).max() <= dx.fmt.lsb / 2
    if np.abs(fdx).max() > 0:
        cos = (dx.value() * fdx).sum() / np.linalg.norm(dx.value()) / np.linalg.norm(fdx)
        assert cos > 0.9999


def test_no_dx_when_not_needed():
    rng = np.random.default_rng(0)
    layer = make_conv(rng.uniform(-1, 1, (4, 2, 3, 3)), None, {"pads": [1, 1, 1, 1]}, (2, 5, 5), Numerics())
    x = quantized_input(rng, 2, (2, 5, 5), 8)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    (dx,), grads = layer.backward(cache, QTensor(np.ones_like(y.codes), FixedFormat(8, 1)), [False])
    assert dx is None and grads["W"].codes.shape == (4, 2, 3, 3)


# ---------------------------------------------------------------- group error propagation

@given(st.sampled_from([(1, 2), (1, 4), (2, 2), (2, 4), (1, 1)]), st.integers(0, 10**6))
def test_group_backward_is_block_diagonal_transposed_conv(groups_pair, seed):
    g, gb = groups_pair
    rng = np.random.default_rng(seed)
    cin, cout = 8, 8
    w = rng.uniform(-1, 1, size=(cout, cin // g, 3, 3))
    attrs = {"pads": [1, 1, 1, 1], "group": g, "strides": [1, 2]}
    num = Numerics()
    full = make_conv(w, None, attrs, (cin, 6, 6), num)
    grouped = make_conv(w, None, {**attrs, "backward": "group", "backward_groups": gb}, (cin, 6, 6), num)
    x = quantized_input(rng, 2, (cin, 6, 6), 8)
    for layer in (full, grouped):
        layer.calibrate([x])
    y, cache = grouped.forward([x], train=True)
    assert (y.codes == full.forward([x])[0].codes).all()  # the forward is untouched
    dy = QTensor(rng.integers(-128, 128, size=y.codes.shape), FixedFormat(8, 1))
    (dx_g,), g_grads = grouped.backward(cache, dy, [True])
    (dx_f,), f_grads = full.backward(cache, dy, [True])
    np.testing.assert_array_equal(g_grads["W"].codes, f_grads["W"].codes)  # dW is the layer's own
    # expected: the full transposed conv of the weights with every off-block entry zeroed
    wq = full.params["W"].codes
    dense = np.zeros((cout, cin, 3, 3), dtype=np.int64)
    for o in range(cout):
        lg = o // (cout // g)
        dense[o, lg * (cin // g):(lg + 1) * (cin // g)] = wq[o]
    mask = (np.arange(cout)[:, None] // (cout // gb)) == (np.arange(cin)[None, :] // (cin // gb))
    geo1 = K.ConvGeometry(2, (6, 6), (3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 1)
    acc = K.conv_input_grad(dy.codes, dense * mask[:, :, None, None], geo1, num.acc_bits, num.acc_overflow,
                            "reference")
    expect = narrow_dynamic(acc, FixedFormat.with_frac(32, dy.fmt.frac_bits + full.params["W"].fmt.frac_bits),
                            num.err_bits, num.err_rounding)
    np.testing.assert_array_equal(dx_g.codes, expect.codes)
    assert dx_g.fmt == expect.fmt
    assert grouped.macs(2)["input_grad"] * gb == full.macs(2)["input_grad"] * g
    if gb > g:
        assert (dx_g.codes != dx_f.codes).any()


def test_group_backward_option_from_spec_extra():
    rng = np.random.default_rng(1)
    layer = make_conv(rng.uniform(-1, 1, (4, 4, 3)), None, {}, (4, 9), Numerics(),
                      extra={"backward": "group", "backward_groups": 2})
    assert layer.backward_mode == "group" and layer.backward_groups == 2
    assert layer.macs(1) == {"forward": 4 * 7 * 4 * 3, "weight_grad": 4 * 7 * 4 * 3, "input_grad": 4 * 7 * 2 * 3}
    layer.configure_backward("full")  # switchable between steps (per module, per phase of training)
    assert layer.backward_groups is None and layer.macs(1)["input_grad"] == 4 * 7 * 4 * 3
    layer.configure_backward("GROUP", 4)
    assert layer.backward_mode == "group" and layer.macs(1)["input_grad"] == 4 * 7 * 1 * 3
    with pytest.raises(EdgeDFAError, match="must divide"):
        layer.configure_backward("group", 3)


@pytest.mark.parametrize("attrs,match", [
    ({"backward": "magic"}, "backward 'magic'"),
    ({"backward": "group"}, "needs backward_groups"),
    ({"backward": "group", "backward_groups": 3}, "must divide"),
    ({"kernel_shape": [2, 2]}, "differs from the weight"),
    ({"group": 3}, "do not fit"),
])
def test_bad_attrs_name_the_node(attrs, match):
    with pytest.raises(EdgeDFAError, match=match) as info:
        make_conv(np.zeros((4, 4, 3, 3)), None, attrs, (4, 6, 6), Numerics(), name="c7")
    assert "'c7'" in str(info.value)


def test_forward_before_calibrate_is_an_error():
    layer = make_conv(np.zeros((2, 1, 3)), None, {}, (1, 5), Numerics())
    with pytest.raises(EdgeDFAError, match="calibrate"):
        layer.forward([QTensor(np.zeros((1, 1, 5), np.int64), FixedFormat(8, 1))])


# ---------------------------------------------------------------- updates

def test_weight_update_descends_and_is_reproducible():
    rng = np.random.default_rng(2)
    w, b = rng.uniform(-0.5, 0.5, (4, 2, 3, 3)), rng.uniform(-0.5, 0.5, 4)
    layers = [make_conv(w, b, {"pads": [1, 1, 1, 1]}, (2, 6, 6), Numerics()) for _ in range(2)]
    x = quantized_input(rng, 4, (2, 6, 6), 8)
    target = rng.uniform(-1, 1, size=(4, 4, 6, 6))
    for layer in layers:
        layer.calibrate([x])
    before = layers[0].params["W"].codes.copy()
    loss0 = ((layers[0].forward([x])[0].value() - target) ** 2).sum()
    for layer in layers:
        for step in range(5):
            y, cache = layer.forward([x], train=True)
            dy = narrow_dynamic(quantize(y.value() - target, FixedFormat(16, 4)), FixedFormat(16, 4), 8)
            _, grads = layer.backward(cache, dy, [False])
            clipped = layer.weight_update(grads, step, 6)
            assert set(clipped) == {"W", "B"}
    np.testing.assert_array_equal(layers[0].params["W"].codes, layers[1].params["W"].codes)
    np.testing.assert_array_equal(layers[0].params["B"].codes, layers[1].params["B"].codes)
    assert (layers[0].params["W"].codes != before).any()
    loss1 = ((layers[0].forward([x])[0].value() - target) ** 2).sum()
    assert loss1 < loss0


# ---------------------------------------------------------------- ONNX semantics

CASES = [
    dict(w=(4, 3, 3, 3), x=(3, 7, 6), attrs={"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}),
    dict(w=(6, 1, 3, 3), x=(3, 6, 6), attrs={"group": 3, "pads": [1, 1, 1, 1]}),
    dict(w=(4, 2, 2, 3), x=(4, 5, 7), attrs={"group": 2, "strides": [2, 2]}),
    dict(w=(4, 2, 3), x=(2, 9), attrs={"pads": [2, 1], "dilations": [2]}),
    dict(w=(3, 2, 2, 3), x=(2, 5, 5), attrs={"auto_pad": "SAME_UPPER", "strides": [2, 1]}),
    dict(w=(3, 2, 2, 3), x=(2, 5, 5), attrs={"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime(case):
    """The integer layer against onnxruntime's float32 Conv on the dequantized parameters."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w, b = rng.uniform(-1, 1, case["w"]), rng.uniform(-1, 1, case["w"][0])
    layer = make_conv(w, b, case["attrs"], case["x"], Numerics.from_bits(12))
    x = quantized_input(rng, 2, case["x"], 12)
    layer.calibrate([x])
    y = layer.forward([x])[0]
    wq, bq = layer.params["W"].value(), layer.params["B"].value()
    attrs = {k: v for k, v in case["attrs"].items()}
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(wq.astype(np.float32), "w"),
                               numpy_helper.from_array(bq.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x.value().astype(np.float32)})[0].astype(np.float64)
    assert ref.shape == y.codes.shape
    err = np.abs(y.value() - np.clip(ref, y.fmt.min_value, y.fmt.max_value)).max()
    assert err <= y.fmt.lsb / 2 + 1e-5  # float32 sums in onnxruntime


# ---------------------------------------------------------------- a whole BP path

def test_bp_chain_matches_float_backprop_16_bits():
    """conv-relu-maxpool-conv(grouped)-relu-avgpool-flatten-dense: integer BP gradients of
    both convolutions against float backprop of the same float network (cosine)."""
    from edgedfa.layers.activations import Relu
    from edgedfa.layers.dense import Dense
    from edgedfa.layers.pool import AveragePool, MaxPool
    from edgedfa.layers.shape import Flatten

    rng = np.random.default_rng(11)
    num = Numerics.from_bits(16, acc_bits=48)
    w1, b1 = rng.uniform(-0.6, 0.6, (4, 1, 3, 3)), rng.uniform(-0.1, 0.1, 4)
    w2, b2 = rng.uniform(-0.4, 0.4, (6, 2, 3, 3)), rng.uniform(-0.1, 0.1, 6)
    wd = rng.uniform(-0.5, 0.5, (5, 6 * 2 * 2))

    def spec(i, shape):
        return LayerSpec(i, num, 3, [shape])

    layers = [
        Conv(Node("c1", "Conv", ["x"], ["a"], {"pads": [1, 1, 1, 1]}, {"W": w1, "B": b1}), spec(1, (1, 8, 8))),
        Relu(Node("r1", "Relu", ["a"], ["b"]), spec(2, (4, 8, 8))),
        MaxPool(Node("p1", "MaxPool", ["b"], ["c"], {"kernel_shape": [2, 2], "strides": [2, 2]}), spec(3, (4, 8, 8))),
        Conv(Node("c2", "Conv", ["c"], ["d"], {"pads": [1, 1, 1, 1], "group": 2}, {"W": w2, "B": b2}),
             spec(4, (4, 4, 4))),
        Relu(Node("r2", "Relu", ["d"], ["e"]), spec(5, (6, 4, 4))),
        AveragePool(Node("p2", "AveragePool", ["e"], ["f"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
                    spec(6, (6, 4, 4))),
        Flatten(Node("fl", "Flatten", ["f"], ["g"], {"axis": 1}), spec(7, (6, 2, 2))),
        Dense(Node("fc", "Dense", ["g"], ["h"], {}, {"W": wd}), spec(8, (24,))),
    ]
    x = quantized_input(rng, 16, (1, 8, 8), 16)
    t = x
    for layer in layers:
        layer.calibrate([t])
        t = layer.forward([t])[0]
    caches, t = [], x
    for layer in layers:
        t, c = layer.forward([t], train=True)
        caches.append(c)
    dy = QTensor(rng.integers(-2**15, 2**15, size=t.codes.shape), FixedFormat(16, 0))
    grads, e = {}, dy
    for layer, c in zip(reversed(layers), reversed(caches)):
        (e,), g = layer.backward(c, e, [layer.name != "c1"])
        grads[layer.name] = g
    # float backprop of the float network, by hand
    from test_conv_kernels import float_conv_adjoint as adj
    g1 = layers[0].geo
    g2 = layers[3].geo
    a = float_conv(x.value(), w1, g1) + b1.reshape(1, -1, 1, 1)
    bm = np.maximum(a, 0)
    win = bm.reshape(16, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(16, 4, 4, 4, 4)
    c = win.max(axis=-1)
    d = float_conv(c, w2, g2) + b2.reshape(1, -1, 1, 1)
    em = np.maximum(d, 0)
    f = em.reshape(16, 6, 2, 2, 2, 2).mean(axis=(3, 5))
    dg = dy.value() @ wd
    df = dg.reshape(16, 6, 2, 2)
    de = np.repeat(np.repeat(df, 2, axis=2), 2, axis=3) / 4
    dd = de * (d > 0)
    dc, dw2 = adj(c, w2, dd, g2)
    dwin = np.zeros_like(win)
    np.put_along_axis(dwin, win.argmax(axis=-1)[..., None], dc[..., None], axis=-1)
    db_ = dwin.reshape(16, 4, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(16, 4, 8, 8)
    da = db_ * (a > 0)
    _, dw1 = adj(x.value(), w1, da, g1)
    for name, ref in (("c2", dw2), ("c1", dw1)):
        got = grads[name]["W"].value()
        cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
        assert cos > 0.99, (name, cos)
    ref_b1 = da.sum(axis=(0, 2, 3))
    got_b1 = grads["c1"]["B"].value()
    assert (got_b1 * ref_b1).sum() / np.linalg.norm(got_b1) / np.linalg.norm(ref_b1) > 0.99
    assert f.shape == (16, 6, 2, 2)
