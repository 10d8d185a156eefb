"""Shared helpers for the ONNX import tests: build a model, compare with onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgedfa.float_ref import run_float
from edgedfa.onnx import load_graph_bytes

RTOL = 1e-5


def model(nodes, inits, in_shape, out_name="y", opset=17, in_name="x", out_shape=None):
    """A one-input, one-output float model; ``inits`` maps names to numpy arrays."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, 8)
    if out_shape is None:  # the checker wants an output shape: take the inferred one
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        m.graph.output[0].CopyFrom(inferred.graph.output[0])
    return m


def ort_run(m, x):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def rel_err(y, ref):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))


def check(m, x, softmax=None):
    """Import ``m``, run it in float64 and compare with onnxruntime; returns the Graph."""
    g = load_graph_bytes(m.SerializeToString(), source="test-model")
    y = run_float(g, x)
    if softmax or g.meta.get("output_softmax"):
        y = apply_softmax(y, g.meta["output_softmax_op"])
    ref = ort_run(m, x)
    assert rel_err(y, ref) <= RTOL
    return g


def apply_softmax(y, kind):
    z = y - y.max(-1, keepdims=True)
    log = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return log if kind == "LogSoftmax" else np.exp(log)


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def optional_affine(last: str, steps, prefix: str) -> list:
    """A decomposition's tail: ``last`` through each ``(on, op, constant)`` step that is on (a Mul
    by γ, an Add of β), then an Identity to "n"."""
    nodes = []
    for on, op, k in steps:
        if on:
            nodes.append(helper.make_node(op, [last, k], [f"{op}_out"], name=f"{prefix}/{op}"))
            last = f"{op}_out"
    return nodes + [helper.make_node("Identity", [last], ["n"], name=f"{prefix}/out")]
