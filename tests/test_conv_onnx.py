"""An ONNX CNN with BatchNormalization runs on the integer Conv, BatchNorm and pooling layers
(or with its BatchNorms folded into the convolutions), close to onnxruntime's float execution,
and trains a step."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgedfa  # noqa: E402
from edgedfa.numerics import Numerics  # noqa: E402


def _cnn_model(rng) -> bytes:
    """conv-bn-relu-maxpool - grouped conv-bn-relu - avgpool(ceil) - 1x1 conv - gap - gemm."""
    inits, nodes = [], []

    def param(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def bn(x, c, name):
        args = [param(f"{name}_{k}", v) for k, v in (
            ("s", rng.uniform(0.5, 1.5, c)), ("b", rng.uniform(-0.3, 0.3, c)),
            ("m", rng.uniform(-0.5, 0.5, c)), ("v", rng.uniform(0.5, 2.0, c)))]
        nodes.append(helper.make_node("BatchNormalization", [x] + args, [name], epsilon=1e-5))
        return name

    nodes.append(helper.make_node("Conv", ["x", param("w1", rng.uniform(-0.5, 0.5, (8, 1, 3, 3))),
                                           param("b1", rng.uniform(-0.1, 0.1, 8))], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", [bn("c1", 8, "n1")], ["r1"]))
    nodes.append(helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Conv", ["p1", param("w2", rng.uniform(-0.5, 0.5, (8, 4, 3, 3)))], ["c2"],
                                  pads=[1, 1, 1, 1], group=2))
    nodes.append(helper.make_node("Relu", [bn("c2", 8, "n2")], ["r2"]))
    nodes.append(helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2],
                                  ceil_mode=1))
    nodes.append(helper.make_node("Conv", ["p2", param("w3", rng.uniform(-0.5, 0.5, (6, 8, 1, 1)))], ["c3"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["c3"], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    nodes.append(helper.make_node("Gemm", ["f", param("wd", rng.uniform(-1, 1, (5, 6))),
                                           param("bd", rng.uniform(-0.1, 0.1, 5))], ["y"], transB=1))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("batchnorm, tolerance", [("train", 0.03), ("fold", 0.02)])
def test_imported_cnn_matches_onnxruntime_and_trains(tmp_path, batchnorm, tolerance):
    rng = np.random.default_rng(0)
    path = tmp_path / "cnn.onnx"
    path.write_bytes(_cnn_model(rng))
    x = rng.uniform(0, 1, (48, 1, 8, 8))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)})[0]
    num = Numerics.from_bits(12).with_overrides({"batchnorm": batchnorm})
    model = edgedfa.load_onnx(str(path), data=x, numerics=num)
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("BatchNorm") == (2 if batchnorm == "train" else 0) and ops.count("Conv") == 3
    y = model.run(x)
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= tolerance * scale  # 12-bit weights and activations; one more rounding per BN
    assert (y.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.9
    # one BP step through every layer kind changes every conv
    from edgedfa.train import TrainConfig
    from edgedfa.api import make_trainer
    before = {layer.name: layer.params["W"].codes.copy() for layer in model.layers if layer.op == "Conv"}
    start = {layer.name: {k: v.codes.copy() for k, v in layer.params.items()} for layer in model.layers
             if layer.op == "BatchNorm"}
    trainer = make_trainer(model, TrainConfig(algo="bp", batch_size=48))
    trainer.step(model.quantize_input(x), rng.integers(0, 5, 48), 0, 4)
    for layer in model.layers:
        if layer.op == "Conv":
            assert (layer.params["W"].codes != before[layer.name]).any(), layer.name
        if layer.op == "BatchNorm":  # scale and bias trained, running statistics moved
            assert all((layer.params[k].codes != q).any() for k, q in start[layer.name].items()), layer.name
