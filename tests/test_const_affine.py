"""Constant Mul/Div/Add/Sub folded into the Dense or Conv next to them (edgedfa/onnx/affine.py):
every fold computes what onnxruntime computes on the original graph, every other case is
refused by name, and a model that normalises its own input trains, emulates and exports."""

import json
import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from edgedfa.api import load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes

from onnx_helpers import check, model, ort_run, rand
from table_activation_checks import check_step_and_int_export

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
N = 5


def _node(op, ins, out, **kw):
    return helper.make_node(op, ins, [out], name=f"/{out}", **kw)


def _ops(g):
    return [n.op for n in g.nodes]


def _mlp(pre=(), mid=(), hidden=6, inits=None):
    """x [N, 4] -> pre -> Gemm -> Relu -> mid -> Gemm -> y, extra nodes and constants given."""
    nodes = list(pre) + [_node("Gemm", [pre[-1].output[0] if pre else "x", "W1", "B1"], "h", transB=1),
                         _node("Relu", ["h"], "r")]
    nodes += list(mid) + [_node("Gemm", [mid[-1].output[0] if mid else "r", "W2", "B2"], "y", transB=1)]
    consts = {"W1": rand(hidden, 4, seed=1), "B1": rand(hidden, seed=2), "W2": rand(3, hidden, seed=3),
              "B2": rand(3, seed=4)}
    consts.update(inits or {})
    return model(nodes, consts, ["N", 4])


def test_a_model_that_normalises_its_own_input_folds_into_the_first_dense():
    m = _mlp(pre=[_node("Sub", ["x", "mean"], "c"), _node("Div", ["c", "std"], "n")],
             inits={"mean": rand(4, seed=5), "std": np.abs(rand(4, seed=6)) + 0.5})
    assert _ops(check(m, rand(N, 4, seed=7))) == ["Dense", "Relu", "Dense"]


@pytest.mark.parametrize("scale", [0.5, 3.0, [0.5, 1.0, 2.0, 0.25, 4.0, 1.5]])
def test_a_positive_scale_after_relu_folds_into_the_dense_before(scale):
    """PyTorch's x + 0.5 * relu(fc(x)): the scale moves through the ReLU into fc's rows."""
    m = _mlp(mid=[_node("Mul", ["k", "r"], "s")], inits={"k": np.array(scale, np.float32)})
    g = check(m, rand(N, 4, seed=7))
    assert _ops(g) == ["Dense", "Relu", "Dense"]
    assert not np.allclose(g.nodes[0].params["W"], rand(6, 4, seed=1))  # the first Dense took it


def test_a_positive_scale_after_prelu_folds_into_the_dense_before():
    """prelu(z) * a == prelu(z * a) for a > 0: the slope stays a trained parameter."""
    nodes = [_node("Gemm", ["x", "W1", "B1"], "h", transB=1), _node("PRelu", ["h", "slope"], "p"),
             _node("Mul", ["p", "k"], "s"), _node("Add", ["s", "x"], "a"), _node("Gemm", ["a", "W2", "B2"], "y", transB=1)]
    consts = {"W1": rand(4, 4, seed=1), "B1": rand(4, seed=2), "slope": np.array([0.25, -0.5, 1.5, 0.1], np.float32),
              "k": np.array([0.5, 2.0, 1.0, 3.0], np.float32), "W2": rand(3, 4, seed=3), "B2": rand(3, seed=4)}
    g = check(model(nodes, consts, ["N", 4]), rand(N, 4, seed=7))
    assert _ops(g) == ["Dense", "PRelu", "Add", "Dense"]


def test_a_negative_scale_after_relu_folds_into_the_dense_after():
    m = _mlp(mid=[_node("Mul", ["r", "k"], "s")], inits={"k": np.array(-0.5, np.float32)})
    g = check(m, rand(N, 4, seed=7))
    assert np.allclose(g.nodes[0].params["W"], rand(6, 4, seed=1))  # the second Dense took it


def test_constant_minus_data_and_data_plus_constant():
    m = _mlp(pre=[_node("Sub", ["one", "x"], "c"), _node("Add", ["c", "b"], "n")],
             inits={"one": np.float32(1.0).reshape(()), "b": rand(1, 4, seed=8)})
    assert _ops(check(m, rand(N, 4, seed=7))) == ["Dense", "Relu", "Dense"]


def _cnn(pre, pads, inits, group=1, channels=2):
    """x [N, C, 6, 6] -> pre -> Conv (3x3) -> Relu -> Flatten -> Gemm -> y."""
    src = pre[-1].output[0] if pre else "x"
    nodes = list(pre) + [_node("Conv", [src, "K", "KB"], "c", pads=[pads] * 4, group=group),
                         _node("Relu", ["c"], "r"), _node("Flatten", ["r"], "f"),
                         _node("Gemm", ["f", "W", "B"], "y", transB=1)]
    side = 6 + 2 * pads - 2
    consts = {"K": rand(4, channels // group, 3, 3, seed=1), "KB": rand(4, seed=2),
              "W": rand(3, 4 * side * side, seed=3), "B": rand(3, seed=4)}
    consts.update(inits)
    return model(nodes, consts, ["N", channels, 6, 6])


@pytest.mark.parametrize("pads", [0, 1])
@pytest.mark.parametrize("group", [1, 2])
def test_a_per_channel_scale_folds_into_a_conv_after_it(pads, group):
    """x / 255 or x / std before a Conv: exact with or without zero padding, grouped or not."""
    m = _cnn([_node("Div", ["x", "s"], "n")], pads, {"s": np.array([[[2.0]], [[0.5]]], np.float32)}, group)
    assert _ops(check(m, rand(N, 2, 6, 6, seed=7)))[0] == "Conv"


@pytest.mark.parametrize("group", [1, 2])
def test_an_offset_folds_into_an_unpadded_conv_after_it(group):
    m = _cnn([_node("Sub", ["x", "m"], "n")], 0, {"m": np.array([[[0.3]], [[-1.2]]], np.float32)}, group)
    assert _ops(check(m, rand(N, 2, 6, 6, seed=7)))[0] == "Conv"


def _stage(g):
    st = g.meta["input_affine"]
    return np.asarray(st["scale"]), np.asarray(st["offset"])


def test_an_offset_before_a_zero_padded_conv_becomes_the_input_stage():
    """(x - mean) / std before a padded Conv: no Conv can take the offset, so the data is
    scaled and offset before the input quantizer; the Conv keeps the model's own weights."""
    m = _cnn([_node("Sub", ["x", "m"], "d"), _node("Div", ["d", "s"], "n")], 1,
             {"m": np.array([[[0.5]], [[-1.0]]], np.float32), "s": np.array([[[2.0]], [[0.25]]], np.float32)})
    g = check(m, rand(N, 2, 6, 6, seed=7))
    assert _ops(g) == ["Conv", "Relu", "Flatten", "Dense"]
    assert np.array_equal(g.nodes[0].params["W"], rand(4, 2, 3, 3, seed=1))
    a, b = _stage(g)
    assert a.shape == b.shape == (2, 1, 1)  # one value per channel, kept compact
    assert np.allclose(a.ravel(), [0.5, 4.0]) and np.allclose(b.ravel(), [-0.25, 4.0])


def test_a_per_pixel_offset_through_a_reshape_of_the_input_is_staged_on_the_input():
    """x [N, 72] viewed as [N, 2, 6, 6] minus a per-pixel mean image: the stage is laid out
    on the graph's input, one value per input element."""
    mean = rand(2, 6, 6, seed=9)
    m = _cnn([_node("Reshape", ["x", "shape"], "v"), _node("Sub", ["v", "m"], "n")], 1,
             {"shape": np.array([-1, 2, 6, 6], np.int64), "m": mean})
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 72
    del m.graph.input[0].type.tensor_type.shape.dim[2:]
    g = check(m, rand(N, 72, seed=7))
    a, b = _stage(g)
    assert a.shape == (1,) and b.shape == (72,) and np.allclose(b, -mean.reshape(-1))


def test_an_affine_on_an_input_read_twice_is_refused_by_name():
    """The stage changes what every reader of the input sees: x - m before a padded Conv and x
    itself into a residual Add is refused."""
    nodes = [_node("Sub", ["x", "m"], "n"), _node("Conv", ["n", "K"], "c", pads=[1, 1, 1, 1]),
             _node("Add", ["c", "x"], "a"), _node("Flatten", ["a"], "f"), _node("Gemm", ["f", "W", "B"], "y", transB=1)]
    consts = {"m": np.float32(0.5).reshape(()), "K": rand(2, 2, 3, 3, seed=1), "W": rand(3, 72, seed=2),
              "B": rand(3, seed=3)}
    with pytest.raises(EdgeDFAError, match=r"'/n' \(Sub\).*graph's input and Conv '/c' cannot be folded.*read by"
                                           r" nothing else"):
        load_graph_bytes(model(nodes, consts, ["N", 2, 6, 6]).SerializeToString(), source="m")


def test_the_input_stage_trains_emulates_exports_and_survives_a_checkpoint(tmp_path):
    """Engine and hdl_models see the same staged codes (a BP step bit-exact), the int export
    applies it in double ops bit-exact in onnxruntime, float and qdq exports carry it, and a
    saved structure brings it back."""
    from edgedfa.model import graph_from_json, graph_to_json
    from edgedfa.onnx.export import build_proto

    m = _cnn([_node("Sub", ["x", "m"], "d"), _node("Div", ["d", "s"], "n")], 1,
             {"m": rand(2, 6, 6, seed=5) * 40 + 100, "s": np.array([[[60.0]], [[25.0]]], np.float32)})
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    net = load_onnx(str(path), numerics=Numerics.from_bits(8))
    x = (rand(16, 2, 6, 6, seed=11).astype(np.float64) * 100 + 120).round()  # raw pixel-like data
    check_step_and_int_export(net, x, np.random.default_rng(3).integers(0, 3, 16))
    assert net.in_fmt.int_bits <= 5  # fits the staged data (|x| < 7); the raw pixels would need 9
    flt = net.run_float(x)
    assert np.abs(ort_run(build_proto(net, "float")[0], x) - flt).max() <= 1e-5 * np.abs(flt).max()
    codes = net.logits_codes(x)
    lsb = 2.0 ** -codes.fmt.frac_bits  # the QDQ graph rounds as the engine does, but for ties
    assert np.abs(ort_run(build_proto(net, "qdq")[0], x) - net.run(x)).max() <= 2 * lsb
    back = graph_from_json(graph_to_json(net.graph), {n.name: n.params for n in net.graph.nodes})
    assert np.array_equal(run_float(back, x), run_float(net.graph, x))


def test_a_per_channel_scale_after_a_conv_moves_through_relu_and_maxpool():
    nodes = [_node("Conv", ["x", "K", "KB"], "c", pads=[1, 1, 1, 1]), _node("Relu", ["c"], "r"),
             _node("MaxPool", ["r"], "p", kernel_shape=[2, 2], strides=[2, 2]), _node("Mul", ["p", "k"], "s"),
             _node("Flatten", ["s"], "f"), _node("Gemm", ["f", "W", "B"], "y", transB=1)]
    consts = {"K": rand(3, 1, 3, 3, seed=1), "KB": rand(3, seed=2), "k": np.array([[[0.5]], [[2.0]], [[1.5]]], np.float32),
              "W": rand(2, 3 * 3 * 3, seed=3), "B": rand(2, seed=4)}
    g = check(model(nodes, consts, ["N", 1, 6, 6]), rand(N, 1, 6, 6, seed=7))
    assert _ops(g) == ["Conv", "Relu", "MaxPool", "Flatten", "Dense"]
    assert not np.allclose(g.nodes[0].params["W"], rand(3, 1, 3, 3, seed=1))


def test_a_scale_before_a_flatten_folds_into_the_dense_after():
    nodes = [_node("Conv", ["x", "K", "KB"], "c", pads=[1, 1, 1, 1]), _node("Tanh", ["c"], "t"),
             _node("Mul", ["t", "k"], "s"), _node("Flatten", ["s"], "f"), _node("Gemm", ["f", "W", "B"], "y", transB=1)]
    consts = {"K": rand(3, 1, 3, 3, seed=1), "KB": rand(3, seed=2), "k": np.array([[[0.5]], [[-2.0]], [[1.5]]], np.float32),
              "W": rand(2, 3 * 6 * 6, seed=3), "B": rand(2, seed=4)}
    assert _ops(check(model(nodes, consts, ["N", 1, 6, 6]), rand(N, 1, 6, 6, seed=7))) == \
        ["Conv", "Tanh", "Flatten", "Dense"]


def test_a_scale_on_a_residual_branch_with_no_neighbour_to_take_it_is_refused_by_name():
    """tanh(h) * 0.5 + h: no Dense or Conv on either side of the Mul (Tanh before, Add after)."""
    nodes = [_node("Gemm", ["x", "W1", "B1"], "h", transB=1), _node("Tanh", ["h"], "t"),
             _node("Mul", ["t", "k"], "s"), _node("Add", ["s", "h"], "a"), _node("Gemm", ["a", "W2", "B2"], "y", transB=1)]
    consts = {"W1": rand(4, 4, seed=1), "B1": rand(4, seed=2), "k": np.float32(0.5).reshape(()),
              "W2": rand(3, 4, seed=3), "B2": rand(3, seed=4)}
    with pytest.raises(EdgeDFAError, match=r"'/s' \(Mul\).*between Tanh '/t' and Add '/a' cannot be folded"):
        load_graph_bytes(model(nodes, consts, ["N", 4]).SerializeToString(), source="m")


@pytest.mark.parametrize("bad, message", [
    (("Div", ["k", "x"]), "Div is supported only as data divided by a constant"),
    (("Div", ["x", "z"]), "division by a constant that holds a zero"),
    (("Add", ["x", "nan"]), "not finite"),
])
def test_what_is_not_a_constant_scale_or_offset_is_refused_by_name(bad, message):
    op, ins = bad
    pre = [_node("Relu", ["x"], "x2")] if "x2" in ins else []
    nodes = pre + [_node(op, ins, "n"), _node("Gemm", ["n", "W", "B"], "y", transB=1)]
    consts = {"k": np.float32(2.0).reshape(()), "z": np.array([1.0, 0.0, 1.0, 1.0], np.float32),
              "nan": np.array([np.nan], np.float32), "W": rand(3, 4, seed=1),
              "B": rand(3, seed=2)}
    with pytest.raises(EdgeDFAError, match=message):
        load_graph_bytes(model(nodes, {k: v for k, v in consts.items() if k in ins or k in "WB"},
                               ["N", 4], out_shape=None).SerializeToString(), source="m")


def test_a_constant_that_would_widen_the_data_is_refused_by_name():
    nodes = [_node("Gemm", ["x", "W1", "B1"], "g", transB=1), _node("Mul", ["g", "wide"], "n"),
             _node("Gemm", ["n", "W2", "B2"], "y", transB=1)]
    consts = {"W1": rand(1, 4, seed=1), "B1": rand(1, seed=2), "wide": rand(1, 5, seed=3), "W2": rand(3, 5, seed=4),
              "B2": rand(3, seed=5)}
    with pytest.raises(EdgeDFAError, match=r"'/n' \(Mul\).*does not broadcast to the data's per-sample shape \[1\]"):
        load_graph_bytes(model(nodes, consts, ["N", 4]).SerializeToString(), source="m")


@settings(max_examples=40, deadline=None)
@given(scale=st.lists(st.floats(0.1, 4.0), min_size=6, max_size=6),
       offset=st.lists(st.floats(-2.0, 2.0), min_size=6, max_size=6), after_relu=st.booleans(),
       seed=st.integers(0, 2**16))
def test_any_per_unit_affine_computes_what_onnxruntime_computes(scale, offset, after_relu, seed):
    """(h * k + c) per hidden unit, before the ReLU (folded back into the first Dense) or after
    it (folded forward into the second): always what onnxruntime computes."""
    gemm1, relu = _node("Gemm", ["x", "W1", "B1"], "h", transB=1), _node("Relu", ["a", "h"][after_relu], "r")
    src = "r" if after_relu else "h"
    affine = [_node("Mul", [src, "k"], "s"), _node("Add", ["s", "c"], "a")]
    body = [relu] + affine if after_relu else affine + [relu]
    nodes = [gemm1] + body + [_node("Gemm", ["a" if after_relu else "r", "W2", "B2"], "y", transB=1)]
    consts = {"W1": rand(6, 4, seed=seed), "B1": rand(6, seed=seed + 1), "k": np.array(scale, np.float32),
              "c": np.array(offset, np.float32), "W2": rand(3, 6, seed=seed + 2), "B2": rand(3, seed=seed + 3)}
    assert _ops(check(model(nodes, consts, ["N", 4]), rand(N, 4, seed=seed + 4))) == ["Dense", "Relu", "Dense"]


def _fixtures():
    manifest = json.load(open(os.path.join(FIXTURES, "manifest.json")))
    return sorted(f for f in manifest if f.startswith(("input_norm_", "scaled_residual_", "input_stage_")))


@pytest.mark.parametrize("name", _fixtures())
def test_pytorch_exports_import_equal_to_onnxruntime_and_train_bit_exact(name):
    """Both exporters' files: a CNN that normalises its own input (and scales its head's input),
    an MLP with a scaled residual branch, a CNN normalising before a padded Conv and a GRU
    normalising its sequence (both input stages); a step of training bit-exact with hdl_models,
    the int export bit-exact in onnxruntime."""
    path = os.path.join(FIXTURES, name)
    shape = json.load(open(os.path.join(FIXTURES, "manifest.json")))[name]["input_shape"]
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    ops = [n.op for n in model.graph.nodes]
    if name.startswith("input_stage_"):
        assert "input_affine" in model.graph.meta and ("GRU" in ops if "gru" in name else "Conv" in ops)
    else:
        assert "input_affine" not in model.graph.meta
        assert ops == (["Dense", "Relu", "Dense", "Relu", "Add", "Dense"] if name.startswith("scaled_residual") else
                       ["Conv", "Relu", "Reshape" if "dynamo" in name else "Flatten", "Dense"])
    x = rand(8, *shape, seed=11).astype(np.float64)
    ref = ort_run(onnx.load(path), x)
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, np.random.default_rng(3).integers(0, 3, 8))


def test_an_opset_6_bias_with_legacy_broadcasting_aligns_at_its_axis():
    """Add-6 with broadcast=1, axis=1: a (C,) constant lines up with the channels of [N, C, L],
    not with the trailing axis numpy would pick; it becomes the Conv's bias."""
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1], name="/conv"),
             helper.make_node("Add", ["c", "b"], ["y"], broadcast=1, axis=1, name="/bias")]
    bias = np.array([0.5, -1.0, 2.0], np.float32)
    m = model(nodes, {"K": rand(3, 2, 3, seed=1), "b": bias}, ["N", 2, 5], opset=6, out_shape=["N", 3, 5])
    g = load_graph_bytes(m.SerializeToString(), source="legacy")
    assert _ops(g) == ["Conv"] and np.allclose(g.nodes[0].params["B"], bias)


def test_a_negation_before_the_output_softmax_folds_into_the_dense():
    """nn.Softmin after a classifier: Softmax(-logits); the Dense takes the sign."""
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["z"], transB=1), helper.make_node("Neg", ["z"], ["n"]),
             helper.make_node("Softmax", ["n"], ["y"], axis=-1)]
    g = check(model(nodes, {"W": rand(3, 4, seed=1), "B": rand(3, seed=2)}, ["N", 4], opset=13), rand(N, 4, seed=3))
    assert _ops(g) == ["Dense"] and np.allclose(g.nodes[0].params["W"], -rand(3, 4, seed=1))
