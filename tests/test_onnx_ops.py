"""Each supported ONNX op, built with onnx.helper, imports and matches onnxruntime."""

import numpy as np
import pytest
from onnx import helper

from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.onnx import load_graph_bytes
from onnx_helpers import check, model, rand, rel_err

N = 3


def ops(g):
    return [n.op for n in g.nodes]


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (6,), (1, 6)])
def test_gemm_forms(trans_a, trans_b, c_shape):
    w = rand(6, 5, seed=1) if trans_b else rand(5, 6, seed=1)
    inits = {"W": w}
    inputs = ["x", "W"]
    if c_shape is not None:
        inits["C"] = rand(*c_shape, seed=2) if c_shape else np.float32(0.7)
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], transA=trans_a, transB=trans_b,
                            alpha=0.5, beta=1.5)
    in_shape = ["N", 5] if not trans_a else [5, "N"]
    x = rand(N, 5, seed=3) if not trans_a else rand(5, N, seed=3)
    if trans_a:  # the graph input must be batch first: transpose it in the graph
        node.input[0] = "xt"
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), node]
        in_shape, x = ["N", 5], rand(N, 5, seed=3)
    else:
        nodes = [node]
    g = check(model(nodes, inits, in_shape, opset=13), x)
    assert ops(g)[-1] == "Dense"


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_matmul_add_becomes_dense_with_bias(opset):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"])]
    g = check(model(nodes, {"W": rand(7, 4, seed=1), "b": rand(4, seed=2)}, ["N", 7],
                    opset=opset), rand(N, 7))
    assert ops(g) == ["Dense"] and "B" in g.nodes[0].params


def test_matmul_on_sequence_is_dense_on_last_axis():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["b", "h"], ["y"])]
    g = check(model(nodes, {"W": rand(7, 4, seed=1), "b": rand(1, 1, 4, seed=2)},
                    ["N", 5, 7]), rand(N, 5, 7))
    assert ops(g) == ["Dense"]


CONV_CASES = [
    dict(shape=(2, 12), w=(4, 2, 3), attrs={}),
    dict(shape=(4, 12), w=(6, 2, 3), attrs=dict(group=2, dilations=[2], pads=[1, 2])),
    dict(shape=(2, 13), w=(4, 2, 4), attrs=dict(auto_pad="SAME_UPPER", strides=[2])),
    dict(shape=(2, 13), w=(4, 2, 4), attrs=dict(auto_pad="SAME_LOWER", strides=[2])),
    dict(shape=(2, 9, 8), w=(4, 2, 3, 3), attrs=dict(auto_pad="VALID", strides=[2, 1])),
    dict(shape=(4, 9, 8), w=(4, 1, 3, 2), attrs=dict(group=4, pads=[1, 0, 2, 1],
                                                    dilations=[1, 2])),
    dict(shape=(3, 7, 7), w=(6, 3, 3, 3), attrs=dict(auto_pad="SAME_UPPER")),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(case, bias):
    inits = {"W": rand(*case["w"], seed=1)}
    inputs = ["x", "W"]
    if bias:
        inits["B"] = rand(case["w"][0], seed=2)
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["y"], **case["attrs"])
    g = check(model([node], inits, ["N", *case["shape"]], opset=11), rand(N, *case["shape"]))
    assert ops(g) == ["Conv"] and len(g.nodes[0].attrs["pads"]) == 2 * (len(case["w"]) - 2)


POOLS = [
    ("MaxPool", (3, 10), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ("MaxPool", (3, 9, 9), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", (3, 8, 7), dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER")),
    ("AveragePool", (3, 10), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ("AveragePool", (3, 10), dict(kernel_shape=[3], strides=[2], pads=[1, 1],
                                  count_include_pad=1)),
    ("AveragePool", (3, 9, 9), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", (3, 8, 8), dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1])),
    ("GlobalAveragePool", (3, 5, 4), {}),
    ("GlobalAveragePool", (3, 6), {}),
]


@pytest.mark.parametrize("op,shape,attrs", POOLS)
def test_pooling(op, shape, attrs):
    g = check(model([helper.make_node(op, ["x"], ["y"], **attrs)], {}, ["N", *shape],
                    opset=13), rand(N, *shape))
    assert ops(g) == [op]


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_space_is_global_pool(keepdims):
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)
    g = check(model([node], {}, ["N", 3, 4, 5], opset=13), rand(N, 3, 4, 5))
    assert ops(g)[0] == "GlobalAveragePool"


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Tanh", {}), ("Sigmoid", {}),
                                      ("LeakyRelu", {"alpha": 0.2}), ("LeakyRelu", {})])
@pytest.mark.parametrize("opset", [11, 14, 16, 21])
def test_activations(op, attrs, opset):
    g = check(model([helper.make_node(op, ["x"], ["y"], **attrs)], {}, ["N", 6], opset=opset),
              rand(N, 6, scale=3))
    assert ops(g) == [op]


@pytest.mark.parametrize("opset,form", [(6, "attrs"), (11, "inputs"), (13, "inputs"),
                                        (13, "min only"), (13, "none")])
def test_clip(opset, form):
    inits, inputs, attrs = {}, ["x"], {}
    if form == "attrs":
        attrs = dict(min=-0.5, max=1.5)
    elif form != "none":
        inits["lo"] = np.float32(-0.5)
        inputs.append("lo")
        if form == "inputs":
            inits["hi"] = np.float32(1.5)
            inputs.append("hi")
    g = check(model([helper.make_node("Clip", inputs, ["y"], **attrs)], inits, ["N", 6],
                    opset=opset), rand(N, 6, scale=2))
    assert ops(g) == ["Clip"]


def test_flatten_reshape_transpose_squeeze_unsqueeze():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Reshape", ["f", "s"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["y"])]
    inits = {"s": np.array([0, 4, -1], np.int64), "ax": np.array([2], np.int64)}
    g = check(model(nodes, inits, ["N", 2, 3, 4], opset=13), rand(N, 2, 3, 4))
    assert ops(g) == ["Flatten", "Reshape", "Transpose", "Unsqueeze", "Squeeze"]
    assert g.nodes[1].attrs["shape"] == [-1, 4, 6]


def test_shape_chain_reshape_is_folded():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as TorchScript writes x.view(N, -1)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
             helper.make_node("Concat", ["bu", "minus1"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64)}
    g = check(model(nodes, inits, ["N", 3, 4], opset=13, out_shape=["N", 12]), rand(N, 3, 4))
    assert ops(g) == ["Reshape"] and g.nodes[0].attrs["shape"] == [-1, 12]


def test_torchscript_unflatten_shape_chain_is_folded():
    """nn.Unflatten(1, (2, 6)) as TorchScript writes it: the dim wrapped by a Mod of two
    constants, Shape sliced around it, concatenated with the new sizes (it was refused: Mod)."""
    c = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(  # noqa: E731
        name, 7, [len(v)] if isinstance(v, list) else [], v if isinstance(v, list) else [v]))
    nodes = [c("dim", 3), c("rank", 2), helper.make_node("Mod", ["dim", "rank"], ["m"]),
             helper.make_node("Shape", ["x"], ["s"]), c("zero", [0]), c("one", [1]),
             helper.make_node("Reshape", ["m", "one"], ["m1"]),
             helper.make_node("Slice", ["s", "zero", "m1"], ["head"]),
             helper.make_node("Add", ["m", "one_s"], ["m2"]), helper.make_node("Reshape", ["m2", "one"], ["m3"]),
             c("big", [2**63 - 1]), helper.make_node("Slice", ["s", "m3", "big"], ["tail"]),
             c("sizes", [2, 6]), helper.make_node("Concat", ["head", "sizes", "tail"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    g = check(model(nodes, {"one_s": np.array(1, np.int64)}, ["N", 12], opset=13, out_shape=["N", 2, 6]),
              rand(N, 12))
    assert ops(g) == ["Reshape", "Relu"] and g.nodes[0].attrs["shape"] == [-1, 2, 6]


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_of_constants_folds_with_the_sign_rule_of_fmod(fmod):
    from types import SimpleNamespace

    from edgedfa.onnx.passes.fold_constants import ARITHMETIC
    a, b = np.array([7, -7, 7, -7], np.int64), np.array([3, 3, -3, -3], np.int64)
    got = ARITHMETIC["Mod"](SimpleNamespace(attrs={"fmod": fmod}), [a, b])
    assert got.dtype == np.int64  # ONNX: the divisor's sign (fmod 0), the dividend's (fmod 1)
    assert got.tolist() == ([1, 2, -2, -1] if fmod == 0 else [1, -1, 1, -1])


def test_reshape_baked_to_export_batch_is_generalised():
    nodes = [helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = model(nodes, {"t": np.array([2, -1], np.int64)}, [2, 3, 4], opset=13)
    g = check(m, rand(2, 3, 4))
    from edgedfa.float_ref import run_float
    assert g.nodes[0].attrs["shape"] == [-1, 12]
    assert run_float(g, rand(5, 3, 4)).shape == (5, 12)


def _fold(g):
    from edgedfa.fold_batchnorm import fold_batchnorm
    return fold_batchnorm(g, lambda node: True)


@pytest.mark.parametrize("opset", [9, 13])
def test_batchnorm_is_kept_and_folds_into_conv_and_gemm_on_request(opset):
    c = 4
    bn = {f"{p}{i}": v for i in (1, 2) for p, v in
          (("g", rand(c, seed=i) * 0.3 + 1), ("b", rand(c, seed=i + 5)),
           ("m", rand(c, seed=i + 9)), ("v", np.abs(rand(c, seed=i + 7)) + 0.5))}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "g1", "b1", "m1", "v1"], ["cb"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["cb"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "b2"], ["d"], transB=1),
             helper.make_node("BatchNormalization", ["d", "g2", "b2", "m2", "v2"], ["y"])]
    inits = dict(bn, W=rand(c, 2, 3, seed=3), G=rand(c, c * 6, seed=4))
    g = check(model(nodes, inits, ["N", 2, 6], opset=opset), rand(N, 2, 6))
    assert ops(g) == ["Conv", "BatchNorm", "Relu", "Flatten", "Dense", "BatchNorm"]
    assert g.nodes[1].attrs == {"epsilon": pytest.approx(1e-3), "momentum": pytest.approx(0.9)}
    folded = _fold(g)
    assert ops(folded) == ["Conv", "Relu", "Flatten", "Dense"] and folded.output_name == "y"
    x = rand(N, 2, 6)
    assert rel_err(run_float(folded, x), run_float(g, x)) <= 1e-5


@pytest.mark.parametrize("shape", [(4,), (4, 5), (4, 5, 3)])
def test_batchnorm_alone_is_kept_or_folded_to_an_affine_layer(shape):
    c = 4
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"])]
    inits = dict(g=rand(c, seed=1), b=rand(c, seed=2), m=rand(c, seed=3),
                 v=np.abs(rand(c, seed=4)) + 0.1)
    g = check(model(nodes, inits, ["N", *shape], opset=15), rand(N, *shape))
    assert ops(g)[1] == "BatchNorm"
    folded = _fold(g)
    assert ops(folded)[1] == ("Dense" if len(shape) == 1 else "Conv")
    x = rand(N, *shape)
    assert rel_err(run_float(folded, x), run_float(g, x)) <= 1e-5


def test_batchnorm_running_statistics_outputs_read_by_the_graph_are_refused():
    c = 3
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1),
             helper.make_node("Add", ["y", "rm"], ["z"])]
    inits = dict(g=rand(c, seed=1), b=rand(c, seed=2), m=rand(c, seed=3), v=np.abs(rand(c, seed=4)) + 0.1)
    m = model(nodes, inits, ["N", c], out_name="z", opset=15)
    with pytest.raises(EdgeDFAError, match="running mean/variance outputs"):
        load_graph_bytes(m.SerializeToString(), source="bn-outputs")


def test_dropout_identity_removed_and_softmax_absorbed():
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["d"]),
             helper.make_node("Identity", ["d"], ["i"]),
             helper.make_node("Gemm", ["i", "W"], ["l"], transB=1),
             helper.make_node("Softmax", ["l"], ["y"], axis=-1)]
    g = check(model(nodes, {"W": rand(3, 6), "ratio": np.float32(0.3)}, ["N", 6], opset=13),
              rand(N, 6))
    assert ops(g) == ["Dense"]
    assert g.meta["output_softmax"] is True and g.meta["output_softmax_op"] == "Softmax"


def test_residual_add_sum_and_concat():
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Add", ["ar", "x"], ["s"]),
             helper.make_node("Conv", ["s", "W2"], ["b"], pads=[0, 0]),
             helper.make_node("Sum", ["s", "ar", "x"], ["t"]),
             helper.make_node("Concat", ["t", "b"], ["y"], axis=1)]
    inits = {"W1": rand(2, 2, 3, seed=1), "W2": rand(3, 2, 1, seed=2)}
    g = check(model(nodes, inits, ["N", 2, 7], opset=13), rand(N, 2, 7))
    assert ops(g).count("Add") == 2 and ops(g)[-1] == "Concat"


# -- recurrent layers -------------------------------------------------------------------
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_model(kind, direction="forward", layout=0, lbr=0, bias=True, seq=5, feat=4,
                    hidden=3, activations=None, opset=14, clip=None):
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[kind]
    inits = {"W": rand(dirs, g * hidden, feat, seed=1, scale=0.5),
             "R": rand(dirs, g * hidden, hidden, seed=2, scale=0.5)}
    if bias:
        inits["B"] = rand(dirs, 2 * g * hidden, seed=3, scale=0.5)
    attrs = dict(hidden_size=hidden, direction=direction)
    if layout:
        attrs["layout"] = 1
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    if activations:
        attrs["activations"] = activations
    if clip is not None:
        attrs["clip"] = clip
    outs = ["Y", "Y_h"] + (["Y_c"] if kind == "LSTM" else [])
    node = helper.make_node(kind, ["xt" if not layout else "x", "W", "R"] +
                            (["B"] if bias else []), outs, **attrs)
    nodes = [] if layout else [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    nodes.append(node)
    # Y [T, dirs, N, H] (layout 0) -> [N, T*dirs*H]; layout 1: Y [N, T, dirs, H]
    if not layout:
        nodes.append(helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]))
        nodes.append(helper.make_node("Flatten", ["Yt"], ["y"], axis=1))
    else:
        nodes.append(helper.make_node("Flatten", ["Y"], ["y"], axis=1))
    return model(nodes, inits, ["N", seq, feat], opset=opset)


@pytest.mark.parametrize("kind,lbr", [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_directions(kind, direction, lbr):
    g = check(recurrent_model(kind, direction, lbr=lbr), rand(N, 5, 4, scale=1.5))
    node = next(n for n in g.nodes if n.op == kind)
    assert node.attrs["direction"] == direction and set(node.params) == {"W", "R", "B"}


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_without_bias_and_other_activations(kind):
    acts = {"RNN": ["Relu"], "GRU": ["Sigmoid", "Relu"], "LSTM": ["Sigmoid", "Relu", "Tanh"]}
    g = check(recurrent_model(kind, bias=False, activations=acts[kind], opset=11),
              rand(N, 5, 4))
    node = next(n for n in g.nodes if n.op == kind)
    assert "B" not in node.params and node.attrs["activations"] == acts[kind]


def test_lstm_input_forget():
    m = recurrent_model("LSTM")
    next(n for n in m.graph.node if n.op_type == "LSTM").attribute.append(
        helper.make_attribute("input_forget", 1))
    g = check(m, rand(N, 5, 4))
    assert next(n for n in g.nodes if n.op == "LSTM").attrs["input_forget"] == 1


@pytest.mark.parametrize("opset", [7, 11, 13, 19])
def test_zero_pad_folds_into_conv(opset):
    pads = [0, 0, 1, 2, 0, 0, 2, 0]
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], pads=pads, mode="constant")
        inits = {}
    else:
        pad = helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant")
        inits = {"pads": np.array(pads, np.int64)}
    nodes = [pad, helper.make_node("Conv", ["p", "W"], ["y"], pads=[1, 0, 0, 1])]
    g = check(model(nodes, dict(inits, W=rand(3, 2, 3, 3)), ["N", 2, 6, 5],
                    opset=opset), rand(N, 2, 6, 5))
    assert ops(g) == ["Conv"] and g.nodes[0].attrs["pads"] == [2, 2, 2, 1]


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_clip(kind):
    check(recurrent_model(kind, clip=0.4), rand(N, 5, 4, scale=3))


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_layout_1_matches_layout_0(kind, direction):
    """onnxruntime's CPU kernels lack layout=1: compare with the layout-0 graph instead."""
    from edgedfa.float_ref import run_float
    from edgedfa.onnx import load_graph_bytes
    x = rand(N, 5, 4)
    g0 = load_graph_bytes(recurrent_model(kind, direction).SerializeToString())
    g1 = load_graph_bytes(recurrent_model(kind, direction, layout=1).SerializeToString())
    node = next(n for n in g1.nodes if n.op == kind)
    assert node.attrs["layout"] == 1
    y1 = run_float(g1, x).reshape(N, 5, -1, 3)  # [N, T, dirs, H]
    y0 = run_float(g0, x).reshape(N, 5, -1, 3)  # [N, T, dirs, H] after the Transpose
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_last_step_read_becomes_final_hidden(kind):
    m = recurrent_model(kind)
    g = m.graph
    del g.node[2:]
    g.node.extend([helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),
                   helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]),
                   helper.make_node("Gather", ["Yb", "last"], ["y"], axis=1)])
    from onnx import numpy_helper
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "one"),
                          numpy_helper.from_array(np.array(-1, np.int64), "last")])
    out = check(m, rand(N, 5, 4))
    rnn = next(n for n in out.nodes if n.op == kind)
    assert rnn.outputs[1] and ops(out)[-1] == "Squeeze"


def test_softmax_not_at_output_is_a_layer_and_log_softmax_is_rejected():
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1),
             helper.make_node("Relu", ["s"], ["y"])]
    g = check(model(nodes, {}, ["N", 4], opset=13), rand(N, 4))
    assert [(n.op, n.attrs.get("axis")) for n in g.nodes] == [("Softmax", 1), ("Relu", None)]
    nodes[0] = helper.make_node("LogSoftmax", ["x"], ["s"], axis=-1)
    with pytest.raises(EdgeDFAError, match="LogSoftmax is supported only as the last node"):
        check(model(nodes, {}, ["N", 4], opset=13), rand(N, 4))


@pytest.mark.parametrize("indices", [np.array(2, np.int64), np.array(-1, np.int64), np.array([3, 0], np.int64)])
def test_gather_of_constant_places_on_data_matches_onnxruntime(indices):
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    g = check(model(nodes, {"i": indices}, ["N", 4, 3], opset=13), rand(N, 4, 3))
    assert [n.op for n in g.nodes] == ["Gather"]


@pytest.mark.parametrize("indices, axis, message", [
    (np.array([1, 1], np.int64), 1, "none twice"),
    (np.array(5, np.int64), 1, "each must lie in -4..3"),
    (np.array(0, np.int64), 0, "only axes other than the batch's"),
])
def test_gather_that_is_no_data_move_is_refused_by_name(indices, axis, message):
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=axis, name="pick")]
    with pytest.raises(EdgeDFAError, match=message) as err:
        load_graph_bytes(model(nodes, {"i": indices}, ["N", 4, 3], opset=13, out_shape=None).SerializeToString())
    assert "pick" in str(err.value)
