"""Sub of two data tensors (``h - tanh(h)``, ``x - x.mean(dim)``, a difference of two branches):
an ``Add`` whose second operand is subtracted (attr ``signs``). Matches onnxruntime on the
original graph, trains bit-exactly with hdl_models under every algorithm, its BP gradients
point where the float reference's do, the int export is bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from model_helpers import calibrated, emulates_bit_exact
from onnx_helpers import check, model, rand
from test_hard_sigmoid import check_bp_gradients
from test_onnx_export import _check_int_exact, ort_run

from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.onnx.export import build_proto

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def diff_mlp(seed, n_in=5, hidden=6, n_classes=3):
    """Dense -> Relu -> (r - tanh(r)) and (mean over features - r), broadcast -> Dense."""
    rng = np.random.default_rng(seed)
    dense = lambda name, i, o, n_o, n_i: Node(name, "Dense", [i], [o], {}, {  # noqa: E731
        "W": rng.uniform(-1, 1, (n_o, n_i)) * np.sqrt(3 / n_i), "B": rng.uniform(-.2, .2, n_o)})
    nodes = [dense("d1", "input", "h", hidden, n_in), Node("relu", "Relu", ["h"], ["r"], {}, {}),
             Node("tanh", "Tanh", ["r"], ["t"], {}, {}),
             Node("diff", "Add", ["r", "t"], ["d"], {"signs": [1, -1]}, {}),
             dense("d2", "d", "g", 1, hidden),
             Node("centre", "Add", ["g", "d"], ["c"], {"signs": [1, -1]}, {}),
             dense("out", "c", "y", n_classes, hidden)]
    return Graph("diff", "input", (n_in,), "y", nodes, {})


@pytest.mark.parametrize("shapes", [((4, 6), (4, 6)), ((4, 6), (4, 1)), ((4, 1), (4, 6)), ((3, 4, 5), (3, 1, 1))])
def test_sub_of_two_data_tensors_matches_onnxruntime(shapes):
    """x - relu(x) shaped by two Reshapes/pools: same shape, either side broadcast."""
    sa, sb = shapes
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes_a"], ["a"], keepdims=1) if sa != sb and sa[-1] == 1 else
             helper.make_node("Identity", ["r"], ["a"]),
             helper.make_node("ReduceMean", ["x", "axes_b"], ["b"], keepdims=1) if sb != sa and sb[-1] == 1 else
             helper.make_node("Tanh", ["x"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    full = sa if sa[-1] != 1 else sb
    axes = np.arange(2, len(full) + 1, dtype=np.int64)
    width = int(np.prod(full))
    inits = {"axes_a": axes, "axes_b": axes, "W": rand(3, width, seed=1), "B": rand(3, seed=2)}
    g = check(model(nodes, inits, ["N", *full], opset=18), rand(5, *full, seed=3))
    assert any(n.op == "Add" and n.attrs.get("signs") == [1, -1] for n in g.nodes)


@pytest.mark.parametrize("algo", ALGOS)
def test_a_difference_trains_bit_exact_with_the_datapath_model(algo):
    model_ = calibrated(diff_mlp(3), 8, 3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (12, 5)), rng.integers(0, 3, 12)
    r = emulates_bit_exact(model_, x, y, algo)
    assert r["checked"] >= 16


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(6, 14), algo=st.sampled_from(ALGOS),
       scaling=st.sampled_from(["adaptive", "static"]))
def test_a_difference_bit_exact_with_the_datapath_model_any_width(seed, bits, algo, scaling):
    model_ = calibrated(diff_mlp(seed, n_in=3, hidden=4), bits, seed, scaling=scaling)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 2, (8, 3)), rng.integers(0, 3, 8)
    emulates_bit_exact(model_, x, y, algo)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16))
def test_int_export_of_a_difference_equals_engine(seed, bits):
    _check_int_exact(diff_mlp(seed), Numerics.from_bits(bits), seed)


def test_bp_gradients_through_a_difference_match_the_float_adjoint():
    """The subtracted operand's error is -dy (and summed over its broadcast axes)."""
    assert len(check_bp_gradients(diff_mlp(3), (5,))) == 3


def test_float_and_qdq_exports_write_the_difference():
    model_ = calibrated(diff_mlp(5), 8, 5)
    x = np.random.default_rng(6).normal(0, 1, (32, 5))
    proto, _ = build_proto(model_, "float")
    assert {"Sub"} <= {n.op_type for n in proto.graph.node}
    flt = model_.run_float(x)
    assert np.abs(ort_run(proto, x) - flt).max() <= 1e-5 * max(1.0, np.abs(flt).max())
    codes = model_.logits_codes(x)
    q = ort_run(build_proto(model_, "qdq")[0], x)
    assert np.abs(q - model_.run(x)).max() <= 2 * 2.0 ** -codes.fmt.frac_bits
