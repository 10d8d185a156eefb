"""Slice and Split on data (``x[:, a:b:s]``, ``torch.chunk``, ``torch.split``, ``nn.GLU``): Gathers
of the selected positions along each non-batch axis. They match onnxruntime in every form the
opsets write, train bit-exactly with hdl_models under every algorithm, and export int bit-exact."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from edgedfa.api import load_onnx
from edgedfa.cosim import emulate
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig
from model_helpers import calibrated
from onnx_helpers import check, model, ort_run, rand
from table_activation_checks import check_step_and_int_export

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
BIG = 2**63 - 1  # what exporters write for "to the end"
N = 4


def _ints(*v):
    return np.array(v, np.int64)


def _slice13(starts, ends, axes, steps=None):
    names = ["x", "st", "en", "ax"] + (["sp"] if steps is not None else [])
    inits = {"st": _ints(*starts), "en": _ints(*ends), "ax": _ints(*axes)}
    if steps is not None:
        inits["sp"] = _ints(*steps)
    return [helper.make_node("Slice", names, ["y"])], inits


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [-1], [2], None), ([0], [BIG], [1], None), ([2], [0], [2], [-1]), ([-1], [-BIG - 1], [2], [-1]),
    ([0, 1], [2, 5], [1, 2], [1, 2]), ([1], [100], [-1], [3])])
def test_slice_of_data_matches_onnxruntime(starts, ends, axes, steps):
    nodes, inits = _slice13(starts, ends, axes, steps)
    g = check(model(nodes, inits, ["N", 3, 7], opset=13), rand(N, 3, 7, seed=1))
    assert set(n.op for n in g.nodes) <= {"Gather", "Reshape"}


def test_slice_1_with_attributes_matches_onnxruntime():
    nodes = [helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -2], axes=[1, 2])]
    check(model(nodes, {}, ["N", 3, 7], opset=9), rand(N, 3, 7, seed=2))


@pytest.mark.parametrize("opset,inputs,attrs,outs", [
    (13, {"split": _ints(2, 5)}, {"axis": 2}, 2), (13, {}, {"axis": 1}, 3), (11, {}, {"axis": -1, "split": [1, 2, 4]}, 3),
    (18, {}, {"axis": 2, "num_outputs": 3}, 3)])
def test_split_of_data_matches_onnxruntime(opset, inputs, attrs, outs):
    """Each part through its own ReLU into a Concat, so every output is read."""
    names = ["x"] + list(inputs)
    parts = [f"p{i}" for i in range(outs)]
    nodes = [helper.make_node("Split", names, parts, **attrs)] + \
        [helper.make_node("Relu", [p], [f"r{i}"]) for i, p in enumerate(parts)] + \
        [helper.make_node("Concat", [f"r{i}" for i in range(outs)], ["y"], axis=attrs["axis"])]
    g = check(model(nodes, dict(inputs), ["N", 3, 7], opset=opset), rand(N, 3, 7, seed=3))
    assert [n.op for n in g.nodes].count("Gather") == outs


@pytest.mark.parametrize("node,inits,message", [
    (helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"]), {"st": _ints(1), "en": _ints(3), "ax": _ints(0)},
     "Slice of the batch axis"),
    (helper.make_node("Split", ["x", "sp"], ["y", "z"], axis=0), {"sp": _ints(1, 1)}, "Split of the batch axis"),
    (helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"]), {"st": _ints(5), "en": _ints(2), "ax": _ints(2)},
     "selects nothing"),
    (helper.make_node("Split", ["x", "sp"], ["y", "z"], axis=2), {"sp": _ints(3, 3)}, r"split sizes \[3, 3\]"),
])
def test_what_cannot_be_a_data_move_is_refused_by_name(node, inits, message):
    node.name = "cut"
    nodes = [node] + ([helper.make_node("Concat", list(node.output), ["o"], axis=2)] if len(node.output) > 1 else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 7])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, [None, 3, None])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(EdgeDFAError, match=f"cut.*{message}"):
        load_graph_bytes(m.SerializeToString(), source="cut.onnx")


def _gated(seed):
    """Conv1d -> Split over channels -> a * sigmoid(b) -> a slice of the length -> Dense."""
    nodes = [helper.make_node("Conv", ["x", "K", "KB"], ["c"], pads=[1, 1]),
             helper.make_node("Split", ["c", "sp"], ["a", "b"], axis=1),
             helper.make_node("Sigmoid", ["b"], ["sb"]), helper.make_node("Mul", ["a", "sb"], ["g"]),
             helper.make_node("Slice", ["g", "st", "en", "ax"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"]), helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    inits = {"K": rand(6, 2, 3, seed=seed), "KB": rand(6, seed=seed + 1), "sp": _ints(3, 3), "st": _ints(1),
             "en": _ints(-1), "ax": _ints(2), "W": rand(3, 3 * 6, seed=seed + 2), "B": rand(3, seed=seed + 3)}
    return load_graph_bytes(model(nodes, inits, ["N", 2, 8], opset=13).SerializeToString())


@pytest.mark.parametrize("algo", ["bp", "dfa", "sdfa", "modular", "hybrid"])
def test_a_gated_conv_trains_bit_exact_with_the_datapath_model(algo):
    m = calibrated(_gated(3), 8, 3, scale=1.5)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1.5, (12, 2, 8)), rng.integers(0, 3, 12)
    r = emulate(m, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=4, algo=algo))
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 10


@pytest.mark.parametrize("name", ["gated_ts", "gated_dynamo"])
def test_pytorch_glu_chunk_and_slice_import_train_and_export(name):
    """``nn.GLU``, ``torch.chunk`` and ``x[..., 1:-1]`` as both exporters write them (Split, Slice):
    equal to onnxruntime, a step bit-exact with hdl_models, the int export bit-exact."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    shape = json.load(open(os.path.join(FIXTURES, "manifest.json")))[f"{name}.onnx"]["input_shape"]
    m = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [n.op for n in m.graph.nodes].count("Gather") == 5
    x = rand(8, *shape, seed=6).astype(np.float64)
    ref = ort_run(onnx.load(path), x)
    assert np.abs(run_float(m.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(m, x, np.random.default_rng(7).integers(0, 3, 8))
