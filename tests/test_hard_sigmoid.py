"""HardSigmoid (clip(alpha x + beta, 0, 1)) and HardSwish (x times it, PyTorch's nn.Hardswish
of MobileNetV3): imported, trained by every algorithm bit-exactly with hdl_models, exported
bit-exactly (int), close to the float reference; out-of-range slopes refused by name. Also the
BP gradients of the Mul graphs (a gate, SiLU, x·x with one tensor as both factors) against
central differences of the float reference."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from model_helpers import calibrated, emulates_bit_exact
from onnx_helpers import model as onnx_model
from test_onnx_export import _check_int_exact, ort_run

from edgedfa import load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.model import IntModel
from edgedfa.numerics import Numerics
from edgedfa.onnx.export import build_proto
from edgedfa.train import TrainConfig

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def hard_cnn(seed, c=3, n_classes=3):
    """conv -> HardSwish (HardSigmoid + Mul) -> conv -> HardSigmoid(0.2, 0.5) -> Flatten -> Dense."""
    rng = np.random.default_rng(seed)
    conv = lambda name, i, o, cin: Node(name, "Conv", [i], [o], {"kernel_shape": [3, 3], "pads": [1] * 4},  # noqa: E731
                                        {"W": rng.uniform(-.5, .5, (c, cin, 3, 3)), "B": rng.uniform(-.2, .2, c)})
    nodes = [conv("conv1", "input", "c1", 2),
             Node("hs", "HardSigmoid", ["c1"], ["g1"], {"alpha": 1 / 6, "beta": 0.5}, {}),
             Node("hswish", "Mul", ["c1", "g1"], ["a1"], {}, {}),
             conv("conv2", "a1", "c2", c),
             Node("hsig", "HardSigmoid", ["c2"], ["a2"], {"alpha": 0.2, "beta": 0.5}, {}),
             Node("flat", "Flatten", ["a2"], ["f"], {"axis": 1}, {}),
             Node("dense", "Dense", ["f"], ["out"], {}, {"W": rng.uniform(-.3, .3, (n_classes, c * 16)),
                                                        "B": np.zeros(n_classes)})]
    return Graph("hard", "input", (2, 4, 4), "out", nodes, {})


_model = partial(calibrated, scale=2.0)  # this file's calibration spread


@pytest.mark.parametrize("algo", ALGOS)
def test_a_square_trains_bit_exact_with_the_datapath_model(algo):
    model = _model(square_mlp(4), 8, 4)
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 1, (12, 5)), rng.integers(0, 3, 12)
    emulates_bit_exact(model, x, y, algo)


@pytest.mark.parametrize("algo", ALGOS)
def test_hard_swish_cnn_trains_bit_exact_with_the_datapath_model(algo):
    graph = hard_cnn(3)
    model = _model(graph, 8, 3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 2, (12, 2, 4, 4)), rng.integers(0, 3, 12)
    r = emulates_bit_exact(model, x, y, algo)
    assert r["checked"] >= 16


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(6, 14), algo=st.sampled_from(ALGOS),
       rounding=st.sampled_from(["AP_RND", "AP_RND_CONV", "AP_TRN"]))
def test_hard_sigmoid_bit_exact_with_the_datapath_model_any_width(seed, bits, algo, rounding):
    graph = hard_cnn(seed, c=2)
    model = _model(graph, bits, seed, act_rounding=rounding, err_rounding=rounding)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 3, (8, 2, 4, 4)), rng.integers(0, 3, 8)
    emulates_bit_exact(model, x, y, algo)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16))
def test_int_export_of_hard_sigmoid_equals_engine(seed, bits):
    _check_int_exact(hard_cnn(seed), Numerics.from_bits(bits), seed)


def test_hard_sigmoid_follows_the_float_reference_at_16_bits():
    model = _model(hard_cnn(5), 16, 5)
    x = np.random.default_rng(6).normal(0, 2, (64, 2, 4, 4))
    ref = run_float(model.to_graph(), x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()
    y = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def _onnx(path, op, **attrs):
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.5, .5, (8, 16)).astype(np.float32), "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node(op, ["h"], ["a"], name=f"/act/{op}", **attrs),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    onnx.save(onnx_model(nodes, inits, ["N", 8]), path)


@pytest.mark.parametrize("op,ops", [("HardSwish", ["Dense", "HardSigmoid", "Mul", "Dense"]),
                                    ("HardSigmoid", ["Dense", "HardSigmoid", "Dense"])])
def test_onnx_hard_swish_and_hard_sigmoid_import(tmp_path, op, ops):
    path = str(tmp_path / "m.onnx")
    _onnx(path, op)
    model = load_onnx(path, numerics=Numerics.from_bits(16))
    assert [n.op for n in model.graph.nodes] == ops
    if op == "HardSwish":
        assert model.graph.nodes[1].attrs == {"alpha": 1 / 6, "beta": 0.5}
    x = np.random.default_rng(1).normal(0, 2, (16, 8))
    model.calibrate(x)
    ref = run_float(model.to_graph(), x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()


def test_a_slope_outside_the_unit_is_refused_by_name(tmp_path):
    path = str(tmp_path / "m.onnx")
    _onnx(path, "HardSigmoid", alpha=2.0)
    with pytest.raises(EdgeDFAError, match=r"/act/HardSigmoid.*0 < alpha < 1"):
        load_onnx(path, numerics=Numerics.from_bits(8))


def _loss(graph, x, y):
    z = run_float(graph, x)
    z = z - z.max(axis=1, keepdims=True)
    return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())


def square_mlp(seed):
    """Dense -> Mul(h, h) -> Dense: one tensor as both factors (its two errors add up)."""
    rng = np.random.default_rng(seed)
    return Graph("square", "input", (5,), "y", [
        Node("d1", "Dense", ["input"], ["h"], {}, {"W": rng.uniform(-1, 1, (6, 5)), "B": rng.uniform(-.2, .2, 6)}),
        Node("sq", "Mul", ["h", "h"], ["a"], {}, {}),
        Node("out", "Dense", ["a"], ["y"], {}, {"W": rng.uniform(-1, 1, (3, 6)), "B": np.zeros(3)})], {})


@pytest.mark.parametrize("name", ["gated_mlp", "hard_cnn", "square_mlp"])
def test_bp_gradients_of_mul_and_hard_sigmoid_match_the_float_adjoint(name):
    from test_mul import gated_mlp

    graph, shape = {"gated_mlp": (gated_mlp(3), (5,)), "hard_cnn": (hard_cnn(3), (2, 4, 4)),
                    "square_mlp": (square_mlp(3), (5,))}[name]
    check_bp_gradients(graph, shape)


WEIGHTS = {"Dense": ("W",), "Conv": ("W",)}


def check_bp_gradients(graph, shape, params=None) -> list:
    """At 16 bits the wide gradient of every weight (``params``: op -> parameter names, W of
    Dense and Conv by default) points where central differences of the float reference's
    cross-entropy do (the engine sums over the batch: a scale, not a direction). Returns the
    (node, parameter) pairs checked."""
    from edgedfa.api import make_trainer
    from edgedfa.fixed import dequantize

    model = IntModel(graph, Numerics.from_bits(16, scaling="static"), 3)
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1.5, (16,) + shape), rng.integers(0, 3, 16)
    model.calibrate(x)
    seen = {}
    for layer in model.layers:
        if layer.trainable:
            layer.weight_update = lambda g, step, lr, n=layer.name: seen.setdefault(n, g) and {}
    xq = model.quantize_input(x)
    make_trainer(model, TrainConfig(algo="bp")).step(xq, y, 0, 10)
    xf, float_graph = dequantize(xq.codes, model.in_fmt), model.to_graph()
    params = params or WEIGHTS
    checked = []
    for node in (n for n in float_graph.nodes if n.op in params):
        for key in (k for k in params[node.op] if k in node.params):  # an RMSNorm may have neither
            w, num = node.params[key], np.zeros_like(node.params[key])
            for idx in np.ndindex(w.shape):
                old = w[idx]
                w[idx] = old + 1e-4
                up = _loss(float_graph, xf, y)
                w[idx] = old - 1e-4
                num[idx] = (up - _loss(float_graph, xf, y)) / 2e-4
                w[idx] = old
            g = seen[node.name][key].value()
            assert (g * num).sum() / (np.linalg.norm(g) * np.linalg.norm(num)) >= 0.999, (node.name, key)
            checked.append((node.name, key))
    return checked
