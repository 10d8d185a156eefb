"""Recurrent layers leave the importer batch-first (layout 1) and run in the integer engine."""

import json
import math
import os

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper
from onnx_helpers import check, model, rand, rel_err

import edgedfa
import edgedfa.onnx as eo
from edgedfa import cli
from edgedfa.api import build_model
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float, tensor_shapes
from edgedfa.numerics import Numerics
from edgedfa.onnx.ir import BATCH
from edgedfa.onnx.passes.batch_first import _regroup
from table_activation_checks import check_step_and_int_export

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
with open(os.path.join(FIXTURES, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
RECURRENT_FIXTURES = sorted(n for n in MANIFEST if n.split("_")[0] in ("rnn", "gru", "lstm"))
RECURRENT_OPS = ("RNN", "GRU", "LSTM")
INT_REL_ERR = 1e-3  # 16-bit engine vs float64 reference; measured <= 1.7e-4 on these fixtures


def _x(name, n=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *MANIFEST[name]["input_shape"]))


def _assert_batch_first(g):
    recurrent = [n for n in g.nodes if n.op in RECURRENT_OPS]
    assert recurrent and all(n.attrs["layout"] == 1 for n in recurrent)
    assert all(n.attrs["perm"][0] == 0 for n in g.nodes if n.op == "Transpose")
    for name, shape in tensor_shapes(g).items():  # "N" marks the batch dimension
        assert shape[0] == "N" and "N" not in shape[1:], (name, shape)


def test_every_recurrent_fixture_is_covered():
    assert len(RECURRENT_FIXTURES) == 30


@pytest.mark.parametrize("name", RECURRENT_FIXTURES)
def test_fixture_imports_batch_first_and_matches_onnxruntime(name):
    path = os.path.join(FIXTURES, name)
    g = eo.load_graph(path)
    _assert_batch_first(g)
    x = _x(name, 6, seed=len(name)).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    step = MANIFEST[name]["fixed_batch"] or len(x)  # a fixed-batch export runs one batch at a time
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + step]})[0]
                          for i in range(0, len(x), step)])
    assert rel_err(run_float(g, x), ref) <= 1e-5


@pytest.mark.parametrize("name", RECURRENT_FIXTURES)
def test_fixture_runs_in_the_integer_engine_close_to_float(name):
    path = os.path.join(FIXTURES, name)
    x = _x(name)
    m = edgedfa.load_onnx(path, data=x, numerics=Numerics.from_bits(16, acc_bits=48))
    assert m.in_fmt is not None and all(layer.out_fmt is not None for layer in m.layers)
    ref = run_float(m.graph, x)
    assert np.abs(m.run(x) - ref).max() <= INT_REL_ERR * np.abs(ref).max()


CANONICAL = {
    "lstm_ts.onnx": ["LSTM", "Squeeze", "Dense"],
    "gru_dynamo.onnx": ["GRU", "Reshape", "Dense"],
    "gru_bidir_seq_ts.onnx": ["GRU", "Reshape", "Reshape", "Dense"],
    "rnn_2layer_dynamo.onnx": ["RNN", "Squeeze", "RNN", "Squeeze", "Dense"],
    "rnn_bidir_seq_dynamo.onnx": ["RNN", "RNN", "Squeeze", "Squeeze", "Concat", "Reshape",
                                  "Dense"],
    "rnn_relu_hn_dynamo.onnx": ["RNN", "Squeeze", "Unsqueeze", "Squeeze", "Dense"],
    # out[:, -1] of a bidirectional layer: the backward direction's last step is not its final
    # state, so a time step is gathered; cat(h_n[-2], h_n[-1]) of two bidirectional layers
    "gru_bidir_last_ts.onnx": ["GRU", "Reshape", "Gather", "Dense"],
    "lstm_bidir2_hn_dynamo.onnx": ["LSTM", "Reshape", "LSTM", "Concat", "Gather", "Gather", "Concat", "Dense"],
    # PyTorch's default layout read by a LayerNorm over the features, or by a maximum over time
    "lstm_seq_layernorm_ts.onnx": ["LSTM", "Squeeze", "LayerNorm", "Gather", "Dense"],
    "gru_seq_max_dynamo.onnx": ["GRU", "Squeeze", "Transpose", "Reshape", "MaxPool", "Reshape", "Dense"],
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_input_transpose_disappears_and_readers_are_remapped(name):
    g = eo.load_graph(os.path.join(FIXTURES, name))
    assert [n.op for n in g.nodes] == CANONICAL[name]
    axes = {n.op: n.attrs.get("axes") or n.attrs.get("shape") for n in g.nodes}
    if name == "lstm_ts.onnx":  # h_n[-1]: Y_h [N, 1, H] loses its direction axis
        assert axes["Squeeze"] == [1]
    if name == "gru_bidir_seq_ts.onnx":  # Y [N, T, 2, H] merged to [N, T, 2H]
        assert axes["Reshape"] == [-1, 80] and g.nodes[1].attrs["shape"] == [-1, 8, 10]


@pytest.mark.parametrize("name", [f"{k}_{e}" for k in ("lstm_seq_layernorm", "gru_seq_max") for e in ("ts", "dynamo")])
def test_seq_first_readers_train_bit_exact_and_export(name):
    """A LayerNorm and a maximum over time after a sequence-first layer (refused before): a step
    of training bit-exact with hdl_models, the int export bit-exact in onnxruntime."""
    m = edgedfa.load_onnx(os.path.join(FIXTURES, f"{name}.onnx"), numerics=Numerics.from_bits(8))
    x = _x(f"{name}.onnx", 8, seed=3)
    check_step_and_int_export(m, x, np.random.default_rng(2).integers(0, 4, 8))


# -- hand-built graphs --------------------------------------------------------------------
H, T, FEAT = 4, 5, 3


def _weights(gates, seed=1):
    return {"W": rand(1, gates * H, FEAT, seed=seed, scale=0.5),
            "R": rand(1, gates * H, H, seed=seed + 1, scale=0.5),
            "B": rand(1, 2 * gates * H, seed=seed + 2, scale=0.5)}


def _axes_node(op, x, out, axes, opset):
    if opset < 13:
        return [helper.make_node(op, [x], [out], axes=axes)], {}
    name = f"{out}_axes"
    return [helper.make_node(op, [x, name], [out])], {name: np.array(axes, np.int64)}


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_elementwise_before_and_per_step_dense_after_a_seq_first_lstm(opset):
    """Relu on the [T, N, I] input; MatMul + bias and Tanh on [T, N, H]; Y_c read too."""
    sq_y, c1 = _axes_node("Squeeze", "Y", "Ys", [1], opset)
    sq_c, c2 = _axes_node("Squeeze", "Yc", "c", [0], opset)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("Relu", ["xt"], ["xr"]),
             helper.make_node("LSTM", ["xr", "W", "R", "B"], ["Y", "Yh", "Yc"], hidden_size=H,
                              name="lstm"),
             *sq_y,
             helper.make_node("MatMul", ["Ys", "M"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["mb"]),
             helper.make_node("Tanh", ["mb"], ["th"]),
             helper.make_node("Transpose", ["th"], ["tb"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["tb"], ["f"], axis=1),
             *sq_c,
             helper.make_node("Concat", ["f", "c"], ["y"], axis=1)]
    inits = dict(_weights(4), M=rand(H, 2, seed=4), b=rand(2, seed=5), **c1, **c2)
    g = check(model(nodes, inits, ["N", T, FEAT], opset=opset), rand(7, T, FEAT))
    _assert_batch_first(g)
    assert [n.op for n in g.nodes] == ["Relu", "LSTM", "Squeeze", "Squeeze", "Dense", "Tanh",
                                       "Flatten", "Concat"]
    if opset < 14:  # layout needs opset 14: the graph was converted, the source recorded
        assert g.meta["opset"] == 14 and g.meta["source_opset"] == opset
    x = rand(9, T, FEAT).astype(np.float64)
    m = build_model(g, Numerics.from_bits(16, acc_bits=48), seed=0)
    m.calibrate(x)
    ref = run_float(g, x)
    assert np.abs(m.run(x) - ref).max() <= INT_REL_ERR * np.abs(ref).max()


GATED = {  # a per-step activation of a [T, N, H] output, as the exporters write them
    "silu": (17, [helper.make_node("Sigmoid", ["Ys"], ["sg"]), helper.make_node("Mul", ["Ys", "sg"], ["th"])], {}),
    "hardswish": (17, [helper.make_node("HardSwish", ["Ys"], ["th"])], {}),
    "gelu_erf": (17, [helper.make_node("Div", ["Ys", "r2"], ["dv"]), helper.make_node("Erf", ["dv"], ["ef"]),
                      helper.make_node("Add", ["ef", "one"], ["ad"]), helper.make_node("Mul", ["Ys", "ad"], ["ml"]),
                      helper.make_node("Mul", ["ml", "half"], ["th"])],
                 {"r2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}),
    "gelu": (20, [helper.make_node("Gelu", ["Ys"], ["th"])], {}),
}


@pytest.mark.parametrize("act", sorted(GATED))
def test_gated_activations_after_a_seq_first_lstm(act):
    """SiLU's Mul of two activations, HardSwish and GELU (Erf subgraph or Gelu node) on a
    seq-first LSTM's [T, N, H] output follow the layout like any element-wise op."""
    opset, act_nodes, consts = GATED[act]
    sq_y, c1 = _axes_node("Squeeze", "Y", "Ys", [1], opset)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y", "Yh", "Yc"], hidden_size=H, name="lstm"),
             *sq_y, *act_nodes,
             helper.make_node("Transpose", ["th"], ["tb"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["tb"], ["y"], axis=1)]
    g = check(model(nodes, dict(_weights(4), **c1, **consts), ["N", T, FEAT], opset=opset), rand(7, T, FEAT))
    _assert_batch_first(g)
    assert g.nodes[0].op == "LSTM" and g.nodes[-1].op == "Flatten"
    x = rand(9, T, FEAT).astype(np.float64)
    m = build_model(g, Numerics.from_bits(16, acc_bits=48), seed=0)
    m.calibrate(x)
    ref = run_float(g, x)
    assert np.abs(m.run(x) - ref).max() <= INT_REL_ERR * np.abs(ref).max()


def test_seq_first_model_input_is_rejected_with_advice():
    """A model fed [seq, batch, features]: the input's first axis is not the batch."""
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Yh"], hidden_size=H,
                              name="the_gru"),
             helper.make_node("Squeeze", ["Yh", "zero"], ["y"])]
    m = model(nodes, dict(_weights(3), zero=np.array([0], np.int64)), [T, 2, FEAT])
    with pytest.raises(EdgeDFAError) as err:
        eo.load_graph_bytes(m.SerializeToString(), source="seq_first.onnx")
    msg = str(err.value)
    assert "seq_first.onnx" in msg and "the_gru" in msg and "batch_first=True" in msg
    assert "sequence-first" in msg


def test_reader_that_needs_the_batch_second_is_rejected_naming_it():
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["Y", "Yh"], hidden_size=H,
                              name="gru"),
             helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),
             helper.make_node("Softmax", ["Ys"], ["s"], axis=-1, name="per_step_softmax"),
             helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["st"], ["y"], axis=1)]
    m = model(nodes, dict(_weights(3), one=np.array([1], np.int64)), ["N", T, FEAT])
    with pytest.raises(EdgeDFAError) as err:
        eo.load_graph_bytes(m.SerializeToString(), source="softmax.onnx")
    msg = str(err.value)
    assert "per_step_softmax" in msg and "'gru'" in msg and "batch on axis 1" in msg
    assert "batch_first=True" in msg


def test_batch_second_graph_output_is_rejected():
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("RNN", ["xt", "W", "R", "B"], ["Y", "Yh"], hidden_size=H),
             helper.make_node("Squeeze", ["Y", "one"], ["y"])]
    m = model(nodes, dict(_weights(1), one=np.array([1], np.int64)), ["N", T, FEAT])
    with pytest.raises(EdgeDFAError, match="does not have the batch first"):
        eo.load_graph_bytes(m.SerializeToString())


# -- the regrouping rule, exactly ------------------------------------------------------------
@st.composite
def _regroupings(draw):
    """(new shape, perm, dst): old = new.transpose(perm), dst merges within blocks of old."""
    blocks = draw(st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=3), max_size=3))
    new_blocks = [[BATCH]] + blocks
    old_order = draw(st.permutations(range(len(new_blocks))))
    starts = np.cumsum([0] + [len(b) for b in new_blocks])
    perm = [int(starts[k]) + i for k in old_order for i in range(len(new_blocks[k]))]
    dst = []
    for k in old_order:
        merge = k and draw(st.booleans())
        dst += [math.prod(new_blocks[k])] if merge else list(new_blocks[k])
    for _ in range(draw(st.integers(0, 2))):
        dst.insert(draw(st.integers(0, len(dst))), 1)
    return [d for b in new_blocks for d in b], perm, dst


@given(_regroupings())
def test_regroup_rebuilds_the_reshape_on_the_batch_first_tensor(case):
    new_shape, perm, dst = case
    src = [new_shape[p] for p in perm]
    plan = _regroup(src, dst, perm)
    assert plan is not None  # every group lies inside a block, so it maps to new's axes
    _, order, out_perm = plan
    real = [3 if d == BATCH else d for d in new_shape]
    new = np.arange(math.prod(real)).reshape(real)
    expected = new.transpose(perm).reshape([3 if d == BATCH else d for d in dst])
    out_new = new.reshape([3 if dst[j] == BATCH else dst[j] for _, b in order for j in b])
    assert out_new.shape[0] == 3
    np.testing.assert_array_equal(out_new.transpose(out_perm), expected)


def test_regroup_refuses_to_merge_the_batch():
    assert _regroup([5, BATCH, 4], [5 * 4, BATCH], [1, 0, 2]) is None
    assert _regroup([BATCH, 2, 3], [BATCH, 6], [0, 2, 1]) is None  # 2, 3 swapped in new


# -- training an imported recurrent model from the CLI -------------------------------------
def _npz(path, shape, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.standard_normal((64, *shape)).astype(np.float32),
             y_train=rng.integers(0, n_classes, 64), y_test=rng.integers(0, n_classes, 16),
             x_test=rng.standard_normal((16, *shape)).astype(np.float32))


@pytest.mark.parametrize("name,algo", [("gru_ts.onnx", "sdfa"), ("lstm_2layer_dynamo.onnx", "bp"),
                                       ("rnn_bidir_seq_dynamo.onnx", "dfa")])
def test_cli_trains_an_imported_recurrent_model(tmp_path, name, algo):
    # No fixture takes the 8x8 digits (inputs [8, 6], 4 classes): random data and labels.
    data = tmp_path / "d.npz"
    _npz(data, MANIFEST[name]["input_shape"], 4)
    out = tmp_path / "run"
    status = cli.main(["train", "--model", os.path.join(FIXTURES, name), "--data", str(data),
                       "--epochs", "1", "--quiet", "--algo", algo, "--batch-size", "16",
                       "--out", str(out)])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == algo and metrics["steps"] == 4 and len(metrics["history"]) == 1
    assert (out / "checkpoint.npz").exists()
