"""ONNX import: PyTorch fixtures, the onnx package's PyTorch-converted cases, bad input."""

import glob
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedfa.onnx as eo
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.onnx import registry
from onnx_helpers import apply_softmax, model, rand, rel_err

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
MANIFEST = json.load(open(os.path.join(FIXTURES, "manifest.json")))
CONFORMANCE_PASSING = 58  # measured; docs/operators.md reports it


def _ort(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _float_out(g, x):
    y = run_float(g, x)
    return apply_softmax(y, g.meta["output_softmax_op"]) if g.meta.get("output_softmax") else y


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_pytorch_fixture_matches_onnxruntime(name):
    path = os.path.join(FIXTURES, name)
    info = MANIFEST[name]
    g = eo.load_graph(path)
    assert g.input_shape == tuple(info["input_shape"])
    batch = info["fixed_batch"] or 4
    x = rand(2 * batch, *g.input_shape, seed=len(name))
    y = _float_out(g, x)
    if info.get("training_mode"):  # compare with the inference form: the running statistics
        path = _inference_form(path)
    # A fixed-batch export runs in onnxruntime one export batch at a time; ours takes any.
    ref = np.concatenate([_ort(path, x[i:i + batch]) for i in range(0, 2 * batch, batch)])
    assert rel_err(y, ref) <= 1e-5


def _inference_form(path):
    """The model with its training-mode BatchNormalization nodes in inference mode, as bytes."""
    m = onnx.load(path)
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            del n.output[1:]
            for a in n.attribute:
                if a.name == "training_mode":
                    a.i = 0
    return m.SerializeToString()


EXPECTED_OPS = {
    "mlp_ts.onnx": ["Dense", "BatchNorm", "Relu", "Dense", "Tanh", "Dense"],
    "bn_cnn2d_ts.onnx": ["Conv", "BatchNorm", "Relu", "MaxPool", "Flatten", "Dense", "BatchNorm", "Relu", "Dense"],
    "bn_cnn2d_dynamo.onnx": ["Conv", "BatchNorm", "Relu", "MaxPool", "Reshape", "Dense", "BatchNorm", "Relu",
                             "Dense"],
    "bn_cnn1d_training_ts.onnx": ["Conv", "BatchNorm", "Relu", "MaxPool", "Flatten", "Dense"],
    "lstm_ts.onnx": ["LSTM", "Squeeze", "Dense"],
    "gru_dynamo.onnx": ["GRU", "Reshape", "Dense"],
    "rnn_relu_hn_ts.onnx": ["RNN", "Squeeze", "Dense"],
    # torch 2.13's dynamo exporter unrolls nn.RNN; the importer rolls it back up
    "rnn_dynamo.onnx": ["RNN", "Squeeze", "Dense"],
    "rnn_2layer_dynamo.onnx": ["RNN", "Squeeze", "RNN", "Squeeze", "Dense"],
    "rnn_bidir_seq_dynamo.onnx": ["RNN", "RNN", "Squeeze", "Squeeze", "Concat", "Reshape", "Dense"],
    "cnn2d_fixed_batch_ts.onnx": ["Conv", "Relu", "MaxPool", "Conv", "Clip", "Add", "Conv",
                                  "Conv", "Sigmoid", "Tanh", "Concat", "Conv", "Relu",
                                  "GlobalAveragePool", "Reshape", "Dense"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_fixture_canonical_ops(name):
    g = eo.load_graph(os.path.join(FIXTURES, name))
    assert [n.op for n in g.nodes] == EXPECTED_OPS[name]


def test_fixture_meta_records_softmax_and_batch():
    g = eo.load_graph(os.path.join(FIXTURES, "mlp_logsoftmax_ts.onnx"))
    assert g.meta["output_softmax"] is True and g.meta["output_softmax_op"] == "LogSoftmax"
    fixed = eo.load_graph(os.path.join(FIXTURES, "mlp_fixed_batch_ts.onnx"))
    assert fixed.meta["export_batch"] == 3 and not fixed.meta.get("output_softmax")
    assert run_float(fixed, rand(7, 20)).shape == (7, 5)


def test_recurrent_params_keep_onnx_layout():
    path = os.path.join(FIXTURES, "lstm_ts.onnx")
    g = eo.load_graph(path)
    node = next(n for n in g.nodes if n.op == "LSTM")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    lstm = next(n for n in onnx.load(path).graph.node if n.op_type == "LSTM")
    for key, idx in (("W", 1), ("R", 2), ("B", 3)):
        np.testing.assert_array_equal(node.params[key], inits[lstm.input[idx]])
    assert node.params["W"].shape == (1, 40, 6)


def test_rerolled_rnn_directions():
    g = eo.load_graph(os.path.join(FIXTURES, "rnn_bidir_seq_dynamo.onnx"))
    assert [n.attrs["direction"] for n in g.nodes if n.op == "RNN"] == ["forward", "reverse"]
    relu = eo.load_graph(os.path.join(FIXTURES, "rnn_relu_hn_dynamo.onnx"))
    assert next(n for n in relu.nodes if n.op == "RNN").attrs["activations"] == ["Relu"]


def test_an_rnn_exported_from_a_batch_of_one_rerolls():
    """From an example batch of one, dynamo folds the zero state's first step (0 @ R + b_hh)
    to a constant: step 0 is act(L[0] + b_hh), and R is read off step 1."""
    path = os.path.join(FIXTURES, "rnn_relu_batch1_dynamo.onnx")
    assert "Expand" not in [n.op_type for n in onnx.load(path).graph.node]
    g = eo.load_graph(path)
    rnn = next(n for n in g.nodes if n.op == "RNN")
    assert [n.op for n in g.nodes][0] == "RNN" and rnn.attrs["activations"] == ["Relu"]
    ts = eo.load_graph(os.path.join(FIXTURES, "rnn_ts.onnx"))  # another module, same parameter layout
    assert rnn.params["R"].shape == next(n for n in ts.nodes if n.op == "RNN").params["R"].shape


def test_unrolled_rnn_that_cannot_be_rerolled_is_rejected_with_advice():
    m = onnx.load(os.path.join(FIXTURES, "rnn_dynamo.onnx"))
    steps = [n for n in m.graph.node if "rnn.bias_hh_l0" in n.input]
    bias = next(t for t in m.graph.initializer if t.name == "rnn.bias_hh_l0")
    other = numpy_helper.from_array(numpy_helper.to_array(bias) + 1, "another_bias")
    m.graph.initializer.append(other)
    steps[3].input[list(steps[3].input).index("rnn.bias_hh_l0")] = "another_bias"
    with pytest.raises(EdgeDFAError) as err:
        eo.load_graph_bytes(m.SerializeToString(), source="rnn_dynamo_edited.onnx")
    assert "unrolled" in str(err.value) and "dynamo=False" in str(err.value)
    assert "rnn_dynamo_edited.onnx" in str(err.value)


# -- the onnx package's PyTorch-converted backend cases ----------------------------------
CONVERTED = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                         "pytorch-converted")


def _conformance_case(case):
    g = eo.load_graph(os.path.join(case, "model.onnx"))
    data = sorted(glob.glob(os.path.join(case, "test_data_set_*")))[0]
    x = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "input_0.pb")))
    ref = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "output_0.pb")))
    y = _float_out(g, x)
    return y.shape == ref.shape and rel_err(y, ref) <= 1e-5


def test_pytorch_converted_conformance():
    cases = sorted(glob.glob(os.path.join(CONVERTED, "test_*")))
    assert len(cases) >= 80
    passed, rejected, wrong = [], [], []
    for case in cases:
        try:
            (passed if _conformance_case(case) else wrong).append(os.path.basename(case))
        except EdgeDFAError as exc:
            assert os.path.join(case, "model.onnx") in str(exc)
            rejected.append(os.path.basename(case))
    assert wrong == []  # every case either matches or is rejected with EdgeDFAError
    assert len(passed) >= CONFORMANCE_PASSING, passed


# -- bad input -------------------------------------------------------------------------------
def _good_model():
    return model([helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
                 {"W": rand(3, 4), "B": rand(3)}, ["N", 4], opset=13)


def _raises(data_or_model, *fragments):
    data = data_or_model if isinstance(data_or_model, bytes) else \
        data_or_model.SerializeToString()
    with pytest.raises(EdgeDFAError) as err:
        eo.load_graph_bytes(data, source="bad.onnx")
    for f in ("bad.onnx",) + fragments:
        assert f in str(err.value), str(err.value)
    return str(err.value)


def test_not_onnx_truncated_and_empty():
    _raises(b"", "empty")
    _raises(b"this is plainly not a protobuf \xff\xfe", "not an ONNX model")
    good = _good_model().SerializeToString()
    _raises(good[: len(good) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(EdgeDFAError, match="no such file"):
        eo.load_graph(tmp_path / "absent.onnx")


def test_checker_failure():
    m = _good_model()
    m.graph.node[0].input[1] = "undefined_weight"
    _raises(m, "checker")


def test_every_unsupported_op_is_listed_with_the_supported_set():
    nodes = [helper.make_node("Softsign", ["x"], ["a"], name="first_softsign"),
             helper.make_node("Sin", ["a"], ["b"], name="the_sine"),
             helper.make_node("Relu", ["b"], ["y"])]
    msg = _raises(model(nodes, {}, ["N", 4], opset=13), "first_softsign", "Softsign", "the_sine",
                  "Sin", "2 unsupported")
    for op in ("Conv", "Gemm", "LSTM", "GRU", "RNN", "MaxPool"):
        assert op in msg


def test_shape_that_cannot_be_resolved():
    m = model([helper.make_node("Relu", ["x"], ["y"])], {}, ["N", "len"], opset=13)
    _raises(m, "dynamic or unknown dimension")
    g = eo.load_graph_bytes(m.SerializeToString(), input_shape=(7,))
    assert g.input_shape == (7,)
    data_reshape = model([helper.make_node("Reshape", ["x", "t"], ["y"])],
                         {"t": np.array([-1, 5], np.int64)}, ["N", 4], opset=13,
                         out_shape=[None, 5])
    _raises(data_reshape, "Reshape")


def test_input_without_batch_dimension():
    scalar = model([helper.make_node("Relu", ["x"], ["y"])], {}, [], opset=13)
    _raises(scalar, "no batch dimension")
    fixed_vector = model([helper.make_node("Relu", ["x"], ["y"])], {}, [6], opset=13)
    _raises(fixed_vector, "no batch dimension")
    batch_second = model([helper.make_node("Relu", ["x"], ["y"])], {}, [5, "N", 3], opset=13)
    _raises(batch_second, "batch")


def test_two_inputs_or_two_outputs():
    m = _good_model()
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4]))
    _raises(m, "exactly one input", "x2")
    m = _good_model()
    m.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))
    _raises(m, "exactly one output")


def test_integer_input_is_rejected():
    m = _good_model()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(EdgeDFAError):
        eo.load_graph_bytes(m.SerializeToString())


def test_registry_rejects_double_registration_and_lists_ops():
    with pytest.raises(EdgeDFAError, match="already registered"):
        registry.register("Relu", 14)(lambda node, ctx: None)
    table = registry.supported()
    for op in ("Gemm", "MatMul", "Conv", "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Clip",
               "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
               "Transpose", "Squeeze", "Unsqueeze", "Add", "Sum", "Concat",
               "BatchNormalization", "Dropout", "Identity", "RNN", "GRU", "LSTM"):
        assert op in table
    for opset in range(7, 29):  # every op of the table at every opset onnx 1.23 knows it in
        assert all(registry.lookup(op, opset) is not None for op in table if table[op][0] <= opset), opset
    assert table["HardSwish"][0] == 14  # an op of opset 14: from there on


def test_describe_graph_and_file(tmp_path):
    g = eo.load_graph(os.path.join(FIXTURES, "cnn1d_ts.onnx"))
    text = eo.describe(g)
    assert "[N, 1, 40]" in text and "Conv" in text and "Dense" in text
    bad = tmp_path / "softsign.onnx"
    onnx.save(model([helper.make_node("Softsign", ["x"], ["y"], name="e1")], {}, ["N", 4],
                    opset=13), str(bad))
    report = eo.inspect_onnx(bad)
    assert not report["ok"] and report["unsupported"] == ["e1 (Softsign)"]
    assert "! e1" in eo.describe_onnx(bad)
