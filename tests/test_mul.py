"""Mul, the element-wise product of two activations (a gate; PyTorch's SiLU exports as
x * sigmoid(x)): imported, trained by every algorithm bit-exactly with hdl_models, exported
bit-exactly (int), close to the float reference, refused by name when a factor is constant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from model_helpers import calibrated, emulates_bit_exact, grows_back_while_training
from onnx_helpers import model as onnx_model
from test_onnx_export import _check_int_exact, ort_run

from edgedfa import load_onnx
from edgedfa.fixed import FixedFormat
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.onnx.export import build_proto

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def gated_mlp(seed, n_in=5, hidden=6, n_classes=3):
    """Dense -> SiLU (Sigmoid + Mul) -> two Dense branches, one a per-sample scalar gate
    (broadcast over the other's features) -> Mul -> Dense."""
    rng = np.random.default_rng(seed)
    dense = lambda name, i, o, n_o, n_i: Node(name, "Dense", [i], [o], {}, {  # noqa: E731
        "W": rng.uniform(-1, 1, (n_o, n_i)) * np.sqrt(3 / n_i), "B": rng.uniform(-.2, .2, n_o)})
    nodes = [dense("d1", "input", "h", hidden, n_in),
             Node("sig", "Sigmoid", ["h"], ["s"], {}, {}),
             Node("silu", "Mul", ["h", "s"], ["a"], {}, {}),
             dense("d2", "a", "v", hidden, hidden),
             dense("d3", "a", "g", 1, hidden),
             Node("gate_sig", "Sigmoid", ["g"], ["gs"], {}, {}),
             Node("gate", "Mul", ["v", "gs"], ["w"], {}, {}),
             dense("out", "w", "y", n_classes, hidden)]
    return Graph("gated", "input", (n_in,), "y", nodes, {})




@pytest.mark.parametrize("algo", ALGOS)
def test_gated_mlp_trains_bit_exact_with_the_datapath_model(algo):
    """Forward products, both factors' errors (one broadcast back over the features) and every
    update agree with hdl_models, integer for integer, over two steps."""
    graph = gated_mlp(3)
    model = calibrated(graph, 8, 3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (12, 5)), rng.integers(0, 3, 12)
    r = emulates_bit_exact(model, x, y, algo)
    assert r["checked"] >= 16


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(6, 14), algo=st.sampled_from(ALGOS),
       scaling=st.sampled_from(["adaptive", "static"]))
def test_mul_bit_exact_with_the_datapath_model_any_width(seed, bits, algo, scaling):
    graph = gated_mlp(seed, n_in=3, hidden=4)
    model = calibrated(graph, bits, seed, scaling=scaling)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 2, (8, 3)), rng.integers(0, 3, 8)
    emulates_bit_exact(model, x, y, algo)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16))
def test_int_export_of_mul_equals_engine(seed, bits):
    _check_int_exact(gated_mlp(seed), Numerics.from_bits(bits), seed)


def test_mul_follows_the_float_reference_at_16_bits():
    graph = gated_mlp(5)
    model = calibrated(graph, 16, 5)
    x = np.random.default_rng(6).normal(0, 1, (64, 5))
    ref = run_float(model.to_graph(), x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()
    y = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_trained_mul_format_is_managed_and_frozen_by_the_int_export():
    """Under adaptive scaling the product's format is the exponent unit's to move: set three
    integer bits too narrow, it grows back while training (bit-exact with hdl_models), and the
    int export, which freezes the formats reached, equals the engine bit for bit."""
    graph = gated_mlp(7)
    model = calibrated(graph, 8, 7, scaling="adaptive")
    mul = next(layer for layer in model.layers if layer.name == "gate")
    assert set(mul.managed_formats()) == {"out"}
    narrow = FixedFormat(8, mul.out_fmt.int_bits - 3)
    mul.set_managed_format("out", narrow)
    rng = np.random.default_rng(8)
    x, y = rng.normal(0, 1, (40, 5)), rng.integers(0, 3, 40)
    grows_back_while_training(model, mul, x, y)
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), model.run(x))


def _silu_onnx(path, const_factor=False):
    """What torch.onnx.export writes for Linear -> SiLU -> Linear (MatMul/Add, Sigmoid, Mul)."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.5, .5, (8, 16)).astype(np.float32), "B1": rng.uniform(-.1, .1, 16).astype(np.float32),
             "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32), "k": np.float32(1.5).reshape(())}
    other = "k" if const_factor else "/act/Sigmoid_output_0"
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["mm"], name="/fc1/MatMul"),
             helper.make_node("Add", ["mm", "B1"], ["h"], name="/fc1/Add"),
             helper.make_node("Sigmoid", ["h"], ["/act/Sigmoid_output_0"], name="/act/Sigmoid"),
             helper.make_node("Mul", ["h", other], ["a"], name="/act/Mul"),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    onnx.save(onnx_model(nodes, inits, ["N", 8]), path)


def test_pytorch_silu_imports_as_a_mul_of_two_activations(tmp_path):
    path = str(tmp_path / "silu.onnx")
    _silu_onnx(path)
    model = load_onnx(path, numerics=Numerics.from_bits(16))
    assert [n.op for n in model.graph.nodes] == ["Dense", "Sigmoid", "Mul", "Dense"]
    x = np.random.default_rng(1).normal(0, 1, (16, 8))
    model.calibrate(x)
    ref = run_float(model.to_graph(), x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()


def test_mul_by_a_constant_is_no_layer_but_folded_into_the_weights(tmp_path):
    """h * 1.5 (h also read by the Sigmoid) folds into the Dense after it (tests/test_const_affine.py)."""
    path = str(tmp_path / "scaled.onnx")
    _silu_onnx(path, const_factor=True)
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert "Mul" not in [n.op for n in model.graph.nodes]
