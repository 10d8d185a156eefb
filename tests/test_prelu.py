"""PReLU (PyTorch's nn.PReLU, ONNX PRelu; datapath §7.1): x above zero, a·x at or below, the slope
a trained parameter per channel or shared. §7.1 written out in integers against both
implementations; training bit-exact with hdl_models under every algorithm at any width and both
scaling policies, slopes past ±1 (saturation) included; the int export bit-exact in
onnxruntime; BP gradients of the slope against central differences; resume bit-exact; the
slope shapes both PyTorch exporters write, after Gemm/MatMul and Conv1d/Conv2d; what cannot be
honoured refused by name."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from cli_helpers import check_resume_equals_whole, run
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import calibrated
from onnx import helper
from onnx_helpers import check as check_onnx
from onnx_helpers import model as onnx_model
from onnx_helpers import ort_run as ort_run_model
from onnx_helpers import rand
from strategies import rounding_modes, signed_formats
from table_activation_checks import (ALGOS, KINDS, TableActivationChecks, check_bit_exact, check_step_and_int_export,
                                     cnn_graph, mlp_graph)
from test_hard_sigmoid import WEIGHTS, check_bp_gradients
from test_onnx_export import ort_run
from test_onnx_rnn_batchfirst import _axes_node, _weights

from edgedfa import load_checkpoint, load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.layers import LayerSpec
from edgedfa.layers.prelu import PRelu
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.export import build_proto
from hdl_models.accelerator import Accelerator
from hdl_models.hwconfig import HwConfig
from hdl_models.layers.prelu import PReluHw

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


# -- §7.1 in integers -------------------------------------------------------------------------
def _round(v: int, s: int, mode: str) -> int:
    """v·2^-s for the deterministic modes of §2, from the table alone (Python integers)."""
    if s <= 0:
        return v << -s
    q, r, h = v >> s, v & ((1 << s) - 1), 1 << (s - 1)
    up = {"AP_TRN": False, "AP_RND": r >= h, "AP_RND_CONV": r > h or (r == h and q & 1),
          "AP_TRN_ZERO": r != 0 and v < 0, "AP_RND_INF": r > h or (r == h and v >= 0)}[mode]
    return q + int(up)


def _sat(v: int, width: int) -> int:
    return min(max(v, -(1 << (width - 1))), (1 << (width - 1)) - 1)


def spec_prelu(q, a, fx: FixedFormat, fa: FixedFormat, dy, f_dy: int, err_bits: int, rnd: str):
    """(y, live, g_a, dx codes, dx fraction) of one slope over a vector, from §7.1's text."""
    ys, live = [], []
    for v in q:
        p = v * a
        y = _round(p, fa.frac_bits, rnd)
        ys.append(v if v > 0 else _sat(y, fx.width))
        live.append(v > 0 or fx.min_code <= y <= fx.max_code if fa.frac_bits <= 0 else
                    v > 0 or (fx.min_code << fa.frac_bits) <= p < ((fx.max_code + 1) << fa.frac_bits))
    d = [e if ok else 0 for e, ok in zip(dy, live)]
    g = sum(e * v for e, v in zip(d, q) if v <= 0)
    f = max(fa.frac_bits, 0)
    wide = [e * (a << (f - fa.frac_bits) if v <= 0 else 1 << f) for e, v in zip(d, q)]
    s = max(0, max(abs(w) for w in wide).bit_length() - (err_bits - 1))
    dx, frac = [_sat(_round(w, s, rnd), err_bits) for w in wide], f_dy + f - s
    if frac > 32:  # §7's error floor
        dx, frac = [_sat(_round(v, frac - 32, rnd), err_bits) for v in dx], 32
    return ys, live, g, dx, frac


@settings(max_examples=150)
@given(fx=signed_formats(max_width=16), width_a=st.integers(2, 16), int_a=st.integers(-2, 4),
       err_bits=st.integers(4, 16), rnd=st.sampled_from(["AP_TRN", "AP_RND", "AP_RND_CONV", "AP_TRN_ZERO"]),
       data=st.data())
def test_forward_backward_and_gradient_follow_the_spec(fx, width_a, int_a, err_bits, rnd, data):
    """Both implementations on one shared slope: every output code, the live mask, the slope's
    exact gradient and the narrowed input error equal §7.1 written out with Python integers
    (slopes past ±1 that saturate included)."""
    fa = FixedFormat(width_a, int_a)
    n = data.draw(st.integers(1, 12))
    q = data.draw(st.lists(st.integers(fx.min_code, fx.max_code), min_size=n, max_size=n))
    a = data.draw(st.integers(fa.min_code, fa.max_code))
    dy = data.draw(st.lists(st.integers(-(1 << (err_bits - 1)), (1 << (err_bits - 1)) - 1), min_size=n, max_size=n))
    f_dy = data.draw(st.integers(0, 20))
    num = Numerics.from_bits(err_bits, act_rounding=rnd, err_rounding=rnd)  # the input format comes with x
    y, live, g, dx, frac = spec_prelu(q, a, fx, fa, dy, f_dy, err_bits, rnd)
    layer = PRelu(Node("p", "PRelu", ["x"], ["y"], {}, {"slope": np.full(1, 0.25)}), LayerSpec(1, num, 0, [(n,)]))
    layer.params["slope"] = QTensor(np.array([a]), fa)
    x, e = QTensor(np.array([q]), fx), QTensor(np.array([dy]), FixedFormat.with_frac(err_bits, f_dy))
    out, cache = layer.forward([x], train=True)
    assert out.codes[0].tolist() == y and out.fmt == fx and cache[1][0].tolist() == live
    (dxs,), grads = layer.backward(cache, e, [True])
    assert grads["slope"].codes.tolist() == [g] and grads["slope"].fmt.frac_bits == f_dy + fx.frac_bits
    assert dxs.codes[0].tolist() == dx and dxs.fmt.frac_bits == frac
    hw, acc = PReluHw(layer.node, layer), Accelerator(HwConfig(rows=4, cols=4))
    out_hw, cache_hw, _ = hw.forward(acc, [x], True)
    (dx_hw,), g_hw, _, _ = hw.backward(acc, cache_hw, e, [True])
    assert out_hw.codes[0].tolist() == y and g_hw["slope"].codes.tolist() == [g]
    assert dx_hw.codes[0].tolist() == dx and dx_hw.fmt.frac_bits == frac


def test_slope_formats_and_the_shapes_the_gradient_sums_over():
    """PyTorch's 0.25 is code 32 of ap_fixed<8,1> (a weight's format, §7); a per-channel slope
    of a map sums its gradient over the batch and the positions, a shared one over everything."""
    num = Numerics.from_bits(8)
    layer = PRelu(Node("p", "PRelu", ["x"], ["y"], {}, {"slope": np.full((3, 1, 1), 0.25)}),
                  LayerSpec(1, num, 0, [(3, 2, 2)]))
    assert layer.params["slope"].fmt == FixedFormat(8, 1) and layer.params["slope"].codes.ravel().tolist() == [32] * 3
    x = QTensor(-np.arange(24).reshape(2, 3, 2, 2), FixedFormat(8, 4))
    _, cache = layer.forward([x], train=True)
    _, grads = layer.backward(cache, QTensor(np.ones((2, 3, 2, 2), np.int64), FixedFormat(8, 1)), [False])
    assert grads["slope"].codes.ravel().tolist() == [int(x.codes[:, c].sum()) for c in range(3)]
    with pytest.raises(EdgeDFAError, match=r"node 'p' \(PRelu\): slope of shape \[3\] must be finite and broadcast"):
        PRelu(Node("p", "PRelu", ["x"], ["y"], {}, {"slope": np.full(3, 0.25)}), LayerSpec(1, num, 0, [(3, 2, 2)]))


# -- bit-exact with hdl_models and onnxruntime, the float reference, BP gradients ------------
def _prelu(shapes, lo=-0.4, hi=0.8):
    """An act for mlp_graph/cnn_graph: PRelu with the slope shape ``shapes[i]``."""
    def act(x, i):
        r = np.random.default_rng(30 + i)
        return [Node(f"prelu{i}", "PRelu", [x], [f"a{i}"], {}, {"slope": r.uniform(lo, hi, shapes[i])})], f"a{i}"
    return act


def prelu_mlp(seed):
    """A slope per feature after the first Dense, one shared after the second."""
    return mlp_graph("prelu_mlp", [_prelu({1: (6,), 2: (1,)})] * 2, seed)


def prelu_cnn(seed):
    """A slope per channel of the first conv map, one shared (as (1, 1, 1)) after the second."""
    return cnn_graph("prelu_cnn", [_prelu({1: (3, 1, 1), 2: (1, 1, 1)})] * 2, seed)


GRAPHS = {"mlp": (prelu_mlp, (5,)), "cnn": (prelu_cnn, (2, 4, 4))}


class TestPReluLayers(TableActivationChecks):
    GRAPHS = GRAPHS

    @pytest.mark.parametrize("kind", KINDS)
    def test_bp_gradients_match_the_float_adjoint(self, kind):
        """Central differences of the float reference against the engine's BP at 16 bits, for W
        of every Dense/Conv and every slope."""
        make, shape = self.GRAPHS[kind]
        checked = check_bp_gradients(make(3), shape, {**WEIGHTS, "PRelu": ("slope",)})
        assert [c for c in checked if c[0].startswith("prelu")] == [("prelu1", "slope"), ("prelu2", "slope")]


def _steep(seed):
    """Slopes of -1.6 to 1.9 after a narrow calibration: negative-side products saturate."""
    return mlp_graph("steep", [_prelu({1: (6,), 2: (1,)}, -1.6, 1.9)] * 2, seed)


@pytest.mark.parametrize("algo", ALGOS)
def test_slopes_past_one_saturate_and_stay_bit_exact(algo):
    m = calibrated(_steep(1), 8, 1, scale=0.5)
    x = np.random.default_rng(2).normal(0, 3, (12, 5))
    _, caches, _ = m.forward(m.quantize_input(x), train=True)
    assert not caches["prelu1"][1].all()  # some product left the input's range: clamped, no error
    check_bit_exact(m, (5,), algo, seed=2, n=12, scale=3, min_checked=16)
    proto, report = build_proto(m, "int")
    assert report.startswith("int: bit-exact") and np.array_equal(ort_run(proto, x), m.run(x))


@pytest.mark.parametrize("algo", ["bp", "sdfa", "hybrid"])
def test_the_slope_trains_from_the_error_each_algorithm_gives(algo):
    """A few steps move every slope (BP, the sparse projection at the module's end, hybrid's
    DFA module below the BP head), and hdl_models agrees on every integer."""
    from edgedfa.api import make_trainer
    from edgedfa.train import TrainConfig
    m = calibrated(prelu_mlp(4), 8, 4, scale=1.5)
    before = {l.name: l.params["slope"].value().copy() for l in m.layers if l.op == "PRelu"}
    rng = np.random.default_rng(5)
    trainer = make_trainer(m, TrainConfig(batch_size=8, algo=algo))
    for step in range(6):
        trainer.step(m.quantize_input(rng.normal(0, 1.5, (8, 5))), rng.integers(0, 3, 8), step, 7)
    assert all(not np.array_equal(l.params["slope"].value(), before[l.name]) for l in m.layers if l.op == "PRelu")


# -- import -----------------------------------------------------------------------------------
def _prelu_onnx(slope, opset=16, conv=False):
    """MatMul (or a Conv2d) -> PRelu(slope) -> MatMul/Flatten."""
    rng = np.random.default_rng(0)
    if conv:
        inits = {"W": rng.uniform(-.5, .5, (3, 2, 3, 3)).astype(np.float32), "s": np.asarray(slope, np.float32)}
        nodes = [helper.make_node("Conv", ["x", "W"], ["h"], name="/conv/Conv", pads=[1] * 4),
                 helper.make_node("PRelu", ["h", "s"], ["a"], name="/act/PRelu"),
                 helper.make_node("Flatten", ["a"], ["y"], name="/flatten", axis=1)]
        return onnx_model(nodes, inits, ["N", 2, 4, 4], opset=opset)
    inits = {"W1": rng.uniform(-.5, .5, (8, 6)).astype(np.float32), "s": np.asarray(slope, np.float32),
             "W2": rng.uniform(-.3, .3, (6, 4)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("PRelu", ["h", "s"], ["a"], name="/act/PRelu"),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    return onnx_model(nodes, inits, ["N", 8], opset=opset)


@pytest.mark.parametrize("shape,opset,conv,kept", [
    ((6,), 16, False, (6,)), ((1, 6), 9, False, (6,)), ((1,), 7, False, (1,)), ((), 16, False, (1,)),
    ((3, 1, 1), 16, True, (3, 1, 1)), ((1, 3, 1, 1), 9, True, (3, 1, 1)), ((1, 1, 1), 7, True, (1, 1, 1)),
    ((4,), 16, True, (1, 1, 4))])
def test_prelu_imports_every_slope_shape_and_follows_onnxruntime(shape, opset, conv, kept):
    """The slope broadcast to the input's rank, the batch axis dropped (opset 6, where a vector is
    per channel, is onnx's pytorch-converted PReLU cases: tests/test_onnx_import.py). Float
    equals onnxruntime; 16-bit integers within 1% of it."""
    slope = np.random.default_rng(1).uniform(-0.5, 1.2, shape)
    m = _prelu_onnx(slope, opset, conv)
    x = np.random.default_rng(2).normal(0, 2, (16, 2, 4, 4) if conv else (16, 8))
    graph = check_onnx(m, x)
    node = next(n for n in graph.nodes if n.op == "PRelu")
    assert np.shape(node.params["slope"]) == kept
    ref = ort_run_model(m, x)
    model = calibrated(graph, 16, 0, scale=2.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


@pytest.mark.parametrize("slope,conv,match", [
    (np.full((2, 6), 0.25), False, r"/act/PRelu.*slope of shape \[2, 6\] does not broadcast"),
    (np.full((5,), 0.25), False, r"/act/PRelu.*slope of shape \[5\] does not broadcast"),
    (np.full((3, 1), 0.25), True, r"/act/PRelu.*slope of shape \[3, 1\] does not broadcast"),
    (np.array([0.25, np.nan, 0.1, 0, 0, 0]), False, r"/act/PRelu.*slope must be finite")])
def test_what_the_datapath_cannot_honour_is_refused_by_name(slope, conv, match):
    with pytest.raises(EdgeDFAError, match=match):
        load_graph_bytes(_prelu_onnx(slope, 16, conv).SerializeToString(), source="prelu.onnx")


def test_a_computed_slope_is_refused_by_name():
    m = _prelu_onnx(np.full(6, 0.25))
    m.graph.node[1].input[1] = "h"  # PRelu(h, h): a slope computed by the graph
    with pytest.raises(EdgeDFAError, match=r"prelu.onnx.*/act/PRelu.*slope \(input 1\) must be a constant"):
        load_graph_bytes(m.SerializeToString(), source="prelu.onnx")


def test_a_per_feature_slope_follows_a_seq_first_gru_batch_first():
    """PRelu over H on a layout-0 GRU's [T, N, H] output: the batch-first pass rebuilds it as a
    reader on the last axis, like a constant-row Add."""
    sq_y, c1 = _axes_node("Squeeze", "Y", "Ys", [1], 17)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["Y", "Yh"], hidden_size=4, name="gru"),
             *sq_y, helper.make_node("PRelu", ["Ys", "s"], ["th"]),
             helper.make_node("Transpose", ["th"], ["tb"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["tb"], ["y"], axis=1)]
    inits = dict(_weights(3), **c1, s=np.array([0.3, -0.2, 0.5, 1.1], np.float32))
    g = check_onnx(onnx_model(nodes, inits, ["N", 5, 3], opset=17), rand(7, 5, 3, scale=2.0))
    assert [n.op for n in g.nodes] == ["GRU", "Squeeze", "PRelu", "Flatten"]


@pytest.mark.parametrize("name,slopes", [
    ("prelu_ts", [(8,), (1,)]), ("prelu_dynamo", [(8,), (1,)]),
    ("prelu_cnn1d_ts", [(4, 1), (1, 1)]), ("prelu_cnn1d_dynamo", [(4, 1), (1, 1)]),
    ("prelu_cnn2d_ts", [(3, 1, 1), (5,)]), ("prelu_cnn2d_dynamo", [(3, 1, 1), (5,)])])
def test_pytorch_prelu_fixtures_import_train_and_export(name, slopes):
    """Both exporters (opset 20): nn.PReLU(C) and nn.PReLU() after Linear, Conv1d and Conv2d
    ((C,), (1, C), (C, 1), (1, C, 1), (C, 1, 1), (1, C, 1, 1) and (1,) slopes as written); the
    import equals onnxruntime in float, a BP step is bit-exact with hdl_models, the int export
    bit-exact in onnxruntime, the float export within float tolerance."""
    import onnxruntime as ort
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [np.shape(n.params["slope"]) for n in model.graph.nodes if n.op == "PRelu"] == slopes
    shape = tuple(ort.InferenceSession(path).get_inputs()[0].shape[1:])
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 2, (8,) + shape).astype(np.float32).astype(np.float64), rng.integers(0, 3, 8)
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, y)
    out = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(out - run_float(model.to_graph(), x)).max() <= 1e-5 * max(1.0, np.abs(out).max())


# -- the command line: train, resume, export --------------------------------------------------
def _mlp_file(path):
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.125, .125, (64, 16)).astype(np.float32), "b1": np.zeros(16, np.float32),
             "s1": np.full(16, 0.25, np.float32), "W2": rng.uniform(-.25, .25, (16, 10)).astype(np.float32),
             "s2": np.full(1, 0.25, np.float32), "W3": rng.uniform(-.3, .3, (10, 10)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="/fc1/MatMul"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="/fc1/Add"),
             helper.make_node("PRelu", ["h", "s1"], ["a"], name="/act1/PRelu"),
             helper.make_node("MatMul", ["a", "W2"], ["h2"], name="/fc2/MatMul"),
             helper.make_node("PRelu", ["h2", "s2"], ["a2"], name="/act2/PRelu"),
             helper.make_node("MatMul", ["a2", "W3"], ["y"], name="/fc3/MatMul")]
    path.write_bytes(onnx_model(nodes, inits, ["N", 64], opset=16).SerializeToString())
    return path


def test_cli_trains_resumes_and_exports_a_prelu_model(tmp_path, capsys):
    """`edgedfa train` on a PRelu MLP for 2 epochs equals 1 epoch and a resume bit for bit (the
    slopes, their Adam moments and exponent counters included); the slopes moved; the int
    export equals the trained model on the test set in onnxruntime; `emulate` is bit-exact."""
    from edgedfa.cosim import emulate
    from edgedfa.data import digits_std
    src = _mlp_file(tmp_path / "prelu.onnx")
    base = ["--model", src, "--dataset", "digits-std", "--algo", "sdfa", "--quiet"]
    check_resume_equals_whole(capsys, tmp_path, base)
    model = load_checkpoint(str(tmp_path / "whole"))
    slopes = [l.params["slope"].value() for l in model.layers if l.op == "PRelu"]
    assert all(np.any(s != 0.25) for s in slopes)
    code, out, _ = run(capsys, "export", tmp_path / "whole", "--format", "int", "-o", tmp_path / "int.onnx")
    assert code == 0 and "int: bit-exact" in out
    x = digits_std().x_test
    assert np.array_equal(ort_run(onnx.load(str(tmp_path / "int.onnx")), x), model.run(x))
    r = emulate(model, x[:64], digits_std().y_test[:64], 1, HwConfig(rows=4, cols=4))
    assert r["bit_exact"], r["first_mismatch"]


def test_the_float_export_writes_prelu_and_imports_back(tmp_path):
    m = calibrated(prelu_cnn(2), 8, 2, scale=1.5)
    proto, report = build_proto(m, "float")
    assert [n.op_type for n in proto.graph.node].count("PRelu") == 2
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    assert [np.shape(n.params["slope"]) for n in graph.nodes if n.op == "PRelu"] == [(3, 1, 1), (1, 1, 1)]
    assert "slope's code" in build_proto(m, "qdq")[1]
    path = tmp_path / "prelu.onnx"
    path.write_bytes(proto.SerializeToString())
    x = np.random.default_rng(3).normal(0, 1.5, (16, 2, 4, 4))
    assert np.array_equal(load_onnx(str(path)).run(x), m.run(x))  # the metadata rebuilds the exact integer model
