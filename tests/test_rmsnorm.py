"""RMSNorm and F.normalize (PyTorch's nn.RMSNorm, the hand-written x * rsqrt(mean(x²) + eps) * w,
F.normalize; ONNX RMSNormalization-23 and both exporters' decompositions; datapath §8.11):
LayerNorm's integer arithmetic without the mean, γ and β optional. The statistics and x̂ are
LayerNorm's with S1 = 0 and follow the float definition within §8.7's bound; the channel-axis
form is the trailing-axis one on the transposed codes; training bit-exact with hdl_models
under every algorithm at any width and both scaling policies; BP gradients against central
differences; the int export bit-exact in onnxruntime under every rounding; F.normalize's
constant 1/sqrt(D) folded into the next Dense/Conv; both PyTorch exporters' fixtures; what
cannot be honoured refused by name."""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import pytest
from cli_helpers import check_norm_trains_resumes_and_exports
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import calibrated
from onnx import helper
from onnx_helpers import model as onnx_model
from onnx_helpers import optional_affine
from onnx_helpers import ort_run as ort_run_model
from table_activation_checks import (ALGOS, TableActivationChecks, check_bit_exact, check_int_export_every_rounding,
                                     check_pytorch_fixture, cnn_graph, mlp_graph)
from test_hard_sigmoid import WEIGHTS, check_bp_gradients
from test_onnx_export import ort_run

from edgedfa import load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.layers import LayerSpec
from edgedfa.layers.layernorm import LayerNorm
from edgedfa.layers.rmsnorm import RMSNorm
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.describe import describe
from edgedfa.onnx.export import build_proto

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


def _rms(layout):
    """An act for mlp_graph/cnn_graph: RMSNorm over ``layout[i] = (axes, normalised shape, keys)``, then ReLU."""
    def act(x, i):
        axes, shape, keys = layout[i]
        r = np.random.default_rng(10 + i)
        params = {k: r.uniform(0.5, 1.5, shape) if k == "scale" else r.uniform(-.3, .3, shape) for k in keys}
        return [Node(f"rms{i}", "RMSNorm", [x], [f"n{i}"], {"epsilon": 1e-5, "axes": axes}, params),
                Node(f"relu{i}", "Relu", [f"n{i}"], [f"a{i}"], {}, {})], f"a{i}"
    return act


def rms_mlp(seed):
    """γ and β after the first Dense, no affine (F.normalize's form) after the second."""
    return mlp_graph("rms_mlp", [_rms({1: ([1], (6,), ("scale", "B")), 2: ([1], (6,), ())})] * 2, seed)


def rms_cnn(seed):
    """Over the channels at each position (rows strided by the positions), γ only; then over (H, W)."""
    return cnn_graph("rms_cnn", [_rms({1: ([1], (3,), ("scale",)), 2: ([2, 3], (2, 2), ("scale", "B"))})] * 2, seed)


GRAPHS = {"mlp": (rms_mlp, (5,)), "cnn": (rms_cnn, (2, 4, 4))}


class TestRMSNormLayers(TableActivationChecks):
    GRAPHS = GRAPHS

    @pytest.mark.parametrize("kind", ["cnn", "mlp"])
    def test_bp_gradients_match_the_float_adjoint(self, kind):
        """Central differences of the float reference against the engine's BP at 16 bits, for W
        of every Dense/Conv and the γ, β each RMSNorm has (the whole adjoint is checked)."""
        make, shape = self.GRAPHS[kind]
        checked = check_bp_gradients(make(3), shape, {**WEIGHTS, "RMSNorm": ("scale", "B")})
        want = {"mlp": [("rms1", "scale"), ("rms1", "B")],
                "cnn": [("rms1", "scale"), ("rms2", "scale"), ("rms2", "B")]}[kind]
        assert sorted(c for c in checked if c[0].startswith("rms")) == sorted(want)


@pytest.mark.parametrize("bits", [4, 11, 16])
@pytest.mark.parametrize("scaling", ["adaptive", "static"])
@pytest.mark.parametrize("algo", ALGOS)
def test_bit_exact_at_narrow_and_wide_words_under_both_scalings(bits, scaling, algo):
    """The CNN (channel rows strided by the positions, and (H, W) rows) at 4, 11 and 16 bits,
    adaptive and static scaling, every algorithm: two steps bit-exact with hdl_models."""
    m = calibrated(rms_cnn(bits), bits, bits, scale=1.5, scaling=scaling)
    check_bit_exact(m, (2, 4, 4), algo, seed=bits, n=8, scale=3, min_checked=16)


# -- the spec in integers -------------------------------------------------------------------
def _pair(num, d, eps=1e-5):
    """An RMSNorm and a LayerNorm over the last axis of (d,), γ = 1, β = 0."""
    rms = RMSNorm(Node("rms", "RMSNorm", ["x"], ["y"], {"epsilon": eps, "axes": [1]}, {}), LayerSpec(1, num, 0, [(d,)]))
    ln = LayerNorm(Node("ln", "LayerNorm", ["x"], ["y"], {"epsilon": eps, "axis": -1},
                        {"scale": np.ones(d), "B": np.zeros(d)}), LayerSpec(1, num, 0, [(d,)]))
    return rms, ln


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), d=st.integers(1, 40), rows=st.integers(1, 5))
def test_statistics_are_layernorms_without_the_mean_and_follow_the_float_definition(seed, bits, d, rows):
    """μ = 0 and Q = D·S2 exactly; the gains are group_statistics' with S1 = 0; on rows whose sum
    is 0 x̂ equals LayerNorm's; x̂ is x / sqrt(mean(x²) + ε) within §8.7's bound."""
    rng = np.random.default_rng(seed)
    num = Numerics.from_bits(bits)
    rms, ln = _pair(num, d)
    fmt = FixedFormat(bits, 3)
    x = QTensor(rng.integers(fmt.min_code, fmt.max_code + 1, (rows, d)), fmt)
    s = rms.statistics(x)
    assert s["mu"] == [0] * rows and s["q"] == (d * (x.codes * x.codes).sum(axis=1)).tolist()
    xhat = rms.normalise(x, s)[0]
    v = x.codes * fmt.lsb
    ms = (v * v).mean(axis=1, keepdims=True) + 1e-5
    ref = v / np.sqrt(ms)
    inv = 1 / np.sqrt(ms)
    bound = rms.xhat_fmt.lsb / 2 + np.abs(v) * inv * (1.44e-5 + 2.0 ** -23 + 2.0 ** -42 / ms) \
        + inv * 2.0 ** -(fmt.frac_bits + 9)
    inside = np.abs(ref) < 31
    assert np.all(np.abs(xhat * rms.xhat_fmt.lsb - ref)[inside] <= bound[inside] * (1 + 1e-9))
    if d % 2 == 0:  # [a, -a]: every row sums to 0, LayerNorm's μ is 0 too
        half = x.codes[:, :d // 2]
        centred = QTensor(np.concatenate([half, -half], axis=1), fmt)
        rms2, ln2 = _pair(num, d)
        assert np.array_equal(rms2.normalise(centred, rms2.statistics(centred))[0],
                              ln2.normalise(centred, ln2.statistics(centred))[0])


@pytest.mark.parametrize("d", [4, 6])
def test_backward_drops_layernorms_mean_of_e(d):
    """dx = ι·(e − x̂·mean(e·x̂)): with rows and errors that sum to 0 per row, the integers equal
    LayerNorm's (whose mean(e) term is then 0); with any other errors it differs from LayerNorm's
    and follows the float formula."""
    rng = np.random.default_rng(d)
    num = Numerics.from_bits(8, scaling="static")
    rms, ln = _pair(num, d)
    fmt = FixedFormat(8, 3)
    half = rng.integers(-100, 100, (6, d // 2))
    x = QTensor(np.concatenate([half, -half], axis=1), fmt)
    for layer in (rms, ln):
        layer.calibrate([x])
    (y_r, c_r), (y_l, c_l) = rms.forward([x], train=True), ln.forward([x], train=True)
    assert np.array_equal(y_r.codes, y_l.codes)
    e = rng.integers(-100, 100, (6, d // 2))
    dy = QTensor(np.concatenate([e, -e], axis=1), FixedFormat(8, 0))
    (dx_r,), g_r = rms.backward(c_r, dy, [True])
    (dx_l,), _ = ln.backward(c_l, dy, [True])
    assert g_r == {} and dx_r.fmt == dx_l.fmt and np.array_equal(dx_r.codes, dx_l.codes)
    dy = QTensor(rng.integers(0, 100, (6, d)), FixedFormat(8, 0))  # positive: mean(e) far from 0
    (dx_r,), _ = rms.backward(c_r, dy, [True])
    (dx_l,), _ = ln.backward(c_l, dy, [True])
    assert not np.array_equal(dx_r.codes, dx_l.codes)
    v = x.codes * fmt.lsb
    inv = 1 / np.sqrt((v * v).mean(axis=1, keepdims=True) + 1e-5)
    xh, ev = v * inv, dy.codes * dy.fmt.lsb
    ref = inv * (ev - xh * (ev * xh).mean(axis=1, keepdims=True))
    got = dx_r.codes * dx_r.fmt.lsb
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max() + dx_r.fmt.lsb


@pytest.mark.parametrize("c,p", [(3, 5), (4, 1), (1, 6)])
def test_channel_rows_are_the_trailing_rows_of_the_transposed_codes(c, p):
    """Over axis 1 of (C, P) (F.normalize over a Conv map's channels): output, dx and the
    gradients equal, integer for integer, an RMSNorm over the last axis of the (P, C) transpose."""
    rng = np.random.default_rng(c * 10 + p)
    num = Numerics.from_bits(8, scaling="static")
    gamma, beta = rng.uniform(.5, 1.5, c), rng.uniform(-.3, .3, c)
    ch = RMSNorm(Node("ch", "RMSNorm", ["x"], ["y"], {"epsilon": 1e-5, "axes": [1]}, {"scale": gamma, "B": beta}),
                 LayerSpec(1, num, 0, [(c, p)]))
    tr = RMSNorm(Node("tr", "RMSNorm", ["x"], ["y"], {"epsilon": 1e-5, "axes": [2]}, {"scale": gamma, "B": beta}),
                 LayerSpec(1, num, 0, [(p, c)]))
    fmt = FixedFormat(8, 3)
    x = QTensor(rng.integers(-128, 128, (5, c, p)), fmt)
    xt = QTensor(x.codes.transpose(0, 2, 1).copy(), fmt)
    ch.calibrate([x])
    tr.calibrate([xt])
    assert ch.out_fmt == tr.out_fmt
    (y_c, cache_c), (y_t, cache_t) = ch.forward([x], train=True), tr.forward([xt], train=True)
    assert np.array_equal(y_c.codes.transpose(0, 2, 1), y_t.codes)
    dy = QTensor(rng.integers(-128, 128, (5, c, p)), FixedFormat(8, 0))
    (dx_c,), g_c = ch.backward(cache_c, dy, [True])
    (dx_t,), g_t = tr.backward(cache_t, QTensor(dy.codes.transpose(0, 2, 1).copy(), dy.fmt), [True])
    assert dx_c.fmt == dx_t.fmt and np.array_equal(dx_c.codes.transpose(0, 2, 1), dx_t.codes)
    for key in ("scale", "B"):
        assert g_c[key].fmt == g_t[key].fmt and np.array_equal(g_c[key].codes, g_t[key].codes)


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_int_export_of_zero_rows_and_any_epsilon(eps, bits):
    """Zero rows (with ε = 0: a zero gain, x̂ = 0 as F.normalize gives), saturated codes, channel
    rows strided by the positions, every rounding of §2 but stochastic: the int export equals the
    engine in onnxruntime."""
    rng = np.random.default_rng(bits)
    nodes = [Node("rms1", "RMSNorm", ["x"], ["n"], {"epsilon": eps, "axes": [1]}, {"scale": rng.uniform(-1.5, 1.5, 4)}),
             Node("flat", "Flatten", ["n"], ["f"], {"axis": 1}, {}),
             Node("out", "Dense", ["f"], ["y"], {}, {"W": rng.uniform(-.5, .5, (3, 20)), "B": np.zeros(3)})]
    x = rng.normal(0, 2, (32, 4, 5)).astype(np.float32).astype(np.float64)
    x[:4, :, :2] = 0.0
    x[4:8] = 0.0
    x[8, 2] = np.linspace(-100, 100, 5)  # saturated codes
    check_int_export_every_rounding(Graph("rows", "x", (4, 5), "y", nodes, {}), bits, x)


def test_a_zero_row_normalises_to_zero_with_epsilon_zero():
    """ε = 0 (F.normalize's 1e-12 squared, below ε's 2^-40 grid): a zero row gives x̂ = 0 in the
    engine, the float reference and the float export, as x / max(||x||, eps) does."""
    g = Graph("zero", "x", (6,), "n", [Node("rms", "RMSNorm", ["x"], ["n"], {"epsilon": 0.0, "axes": [1]}, {})], {})
    m = calibrated(g, 12, 0)
    x = np.random.default_rng(0).normal(0, 1, (4, 6))
    x[1] = 0.0
    y = m.run(x)
    assert np.all(y[1] == 0) and np.all(run_float(m.to_graph(), x)[1] == 0)
    assert np.all(ort_run(build_proto(m, "float")[0], x)[1] == 0)
    assert np.abs(y - run_float(m.to_graph(), x)).max() < 0.01 * math.sqrt(6)


# -- import -----------------------------------------------------------------------------------
def _l2_onnx(shape=(8,), dim=1, floor="Clip", expand=True, keepdims=1, div_of=None, opset=17, eps=1e-12):
    """Gemm/Conv -> F.normalize as TorchScript writes it (ReduceL2, Clip(min), Shape/Expand, Div)
    -> a Gemm (or Flatten, Gemm)."""
    rng = np.random.default_rng(len(shape))
    conv = len(shape) > 1
    inits = {"W": rng.uniform(-.5, .5, (4, shape[0], 3) if conv else (6, shape[0])).astype(np.float32),
             "b": rng.uniform(-.2, .2, 4 if conv else 6).astype(np.float32),
             "eps": np.array(eps, np.float32), "two": np.array(2.0, np.float32)}
    n_flat = 4 * shape[1] if conv else 6
    inits["Wf"] = rng.uniform(-.5, .5, (3, n_flat)).astype(np.float32)
    inits["bf"] = np.zeros(3, np.float32)
    first = (helper.make_node("Conv", ["x", "W", "b"], ["h"], name="/c/Conv", pads=[1, 1]) if conv else
             helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="/f1/Gemm", transB=1))
    axes = {"axes": [dim]} if opset < 18 else {}
    red_in = ["h"] if opset < 18 else ["h", "axes"]
    if opset >= 18:
        inits["axes"] = np.array([dim], np.int64)
    nodes = [first, helper.make_node("ReduceL2", red_in, ["r"], name="/ReduceL2", keepdims=keepdims, **axes)]
    if div_of:  # the division is of another tensor than the norm's
        nodes.append(helper.make_node("Neg", ["h"], [div_of], name="/other"))
    cur = "r"
    if floor == "Clip":
        nodes.append(helper.make_node("Clip", [cur, "eps"], ["cl"], name="/Clip"))
        cur = "cl"
    elif floor == "Max":
        nodes.append(helper.make_node("Max", ["eps", cur], ["cl"], name="/Max"))
        cur = "cl"
    if expand:
        nodes += [helper.make_node("Shape", ["h"], ["s"], name="/Shape"),
                  helper.make_node("Expand", [cur, "s"], ["e"], name="/Expand")]
        cur = "e"
    nodes.append(helper.make_node("Div", [div_of or "h", cur], ["n"], name="/Div"))
    if conv:
        nodes.append(helper.make_node("Flatten", ["n"], ["fl"], name="/Flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["fl" if conv else "n", "Wf", "bf"], ["y"], name="/f2/Gemm", transB=1))
    return onnx_model(nodes, inits, ["N"] + list(shape), opset=opset)


@pytest.mark.parametrize("kw", [dict(), dict(expand=False), dict(floor="Max"), dict(floor=None), dict(opset=18),
                                dict(shape=(2, 5)), dict(eps=1e-3)])
def test_f_normalize_imports_as_rmsnorm_with_its_constant_folded(kw):
    """TorchScript's and dynamo's forms (with or without Expand, a Clip, a Max or no floor, axes
    as attribute or input, over a Conv map's channels): one RMSNorm without γ, ε = eps²/D, the
    1/sqrt(D) in the next Gemm's columns; equal to onnxruntime in float, close in integers."""
    m = _l2_onnx(**kw)
    graph = load_graph_bytes(m.SerializeToString(), source="l2.onnx")
    rms = next(n for n in graph.nodes if n.op == "RMSNorm")
    d = 4 if "shape" in kw else 6
    assert rms.params == {} and rms.attrs["axes"] == [1]
    assert "RMSNorm            [N, " in describe(graph) and "over axes [1] (no γ, β: x / rms(x))" in describe(graph)
    eps = kw.get("eps", 1e-12) if kw.get("floor", "Clip") else 0.0
    assert rms.attrs["epsilon"] == pytest.approx(np.float32(eps) ** 2 / d, rel=1e-6)
    w_onnx = onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "Wf"))
    assert np.allclose(graph.nodes[-1].params["W"], w_onnx / math.sqrt(d), rtol=1e-6)
    x = np.random.default_rng(1).normal(0, 3, (16,) + tuple(kw.get("shape", (8,))))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = calibrated(graph, 16, 0, scale=3.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


def _rms_onnx(square="Pow", inverse="Reciprocal", eps=1e-6, mul=True, add=False, opset=17, axis=-1,
              shape=(6,), classes=3):
    """Gemm -> x * rsqrt(mean(x²) + eps) [* w] [+ b] in the forms the exporters write, or
    RMSNormalization itself (``inverse="op"``) -> Relu -> Gemm."""
    rng = np.random.default_rng(7)
    inits = {"W": rng.uniform(-.5, .5, (8, shape[-1])).astype(np.float32), "b": np.zeros(8, np.float32),
             "Wf": rng.uniform(-.5, .5, (classes, 8)).astype(np.float32), "bf": np.zeros(classes, np.float32),
             "two": np.array(2.0, np.float32), "one": np.array(1.0, np.float32), "eps": np.array(eps, np.float32),
             "w": rng.uniform(.5, 1.5, 8).astype(np.float32), "beta": rng.uniform(-.3, .3, 8).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="/f1/Gemm", transB=1)]
    if inverse == "op":
        nodes.append(helper.make_node("RMSNormalization", ["h", "w"], ["n"], name="/norm/RMSNormalization",
                                      epsilon=eps, axis=axis))
    else:
        nodes.append(helper.make_node("Pow", ["h", "two"], ["sq"], name="/Pow") if square == "Pow" else
                     helper.make_node("Mul", ["h", "h"], ["sq"], name="/Square"))
        nodes.append(helper.make_node("ReduceMean", ["sq"], ["ms"], name="/ReduceMean", axes=[axis], keepdims=1))
        cur = "ms"
        if eps:
            nodes.append(helper.make_node("Add", ["ms", "eps"], ["mse"], name="/Add"))
            cur = "mse"
        nodes.append(helper.make_node("Sqrt", [cur], ["rt"], name="/Sqrt"))
        if inverse == "Reciprocal":
            nodes += [helper.make_node("Reciprocal", ["rt"], ["inv"], name="/Reciprocal"),
                      helper.make_node("Mul", ["h", "inv"], ["n0"], name="/Mul")]
        elif inverse == "Div1":
            nodes += [helper.make_node("Div", ["one", "rt"], ["inv"], name="/Div"),
                      helper.make_node("Mul", ["inv", "h"], ["n0"], name="/Mul")]
        else:
            nodes.append(helper.make_node("Div", ["h", "rt"], ["n0"], name="/Div"))
        nodes += optional_affine("n0", ((mul, "Mul", "w"), (add, "Add", "beta")), "/affine")
    nodes += [helper.make_node("Relu", ["n"], ["a"], name="/relu"),
              helper.make_node("Gemm", ["a", "Wf", "bf"], ["y"], name="/f2/Gemm", transB=1)]
    return onnx_model(nodes, inits, ["N"] + list(shape), opset=opset)


@pytest.mark.parametrize("kw,keys", [(dict(), ["scale"]), (dict(square="Mul"), ["scale"]),
                                     (dict(inverse="Div1"), ["scale"]), (dict(inverse="Div"), ["scale"]),
                                     (dict(eps=0.0), ["scale"]), (dict(mul=False), []),
                                     (dict(add=True), ["B", "scale"]), (dict(mul=False, add=True), ["B"]),
                                     (dict(inverse="op", opset=23), ["scale"])])
def test_rmsnorm_decompositions_and_rmsnormalization_import(kw, keys):
    """Pow or Mul for the square, Reciprocal, Div(1, .) or Div(x, .), with or without the Add of
    eps, the Mul by γ, the Add of β, and RMSNormalization-23: one RMSNorm with the graph's γ and β;
    equal to onnxruntime in float, close in integers."""
    m = _rms_onnx(**kw)
    graph = load_graph_bytes(m.SerializeToString(), source="rms.onnx")
    assert [n.op for n in graph.nodes] == ["Dense", "RMSNorm", "Relu", "Dense"]
    rms = graph.nodes[1]
    assert sorted(rms.params) == keys and rms.attrs["axes"] == [1]
    assert rms.attrs["epsilon"] == pytest.approx(float(np.float32(kw.get("eps", 1e-6))))
    x = np.random.default_rng(1).normal(0, 3, (16, 6))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = calibrated(graph, 16, 0, scale=3.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


REFUSED = [
    (lambda: _l2_onnx(keepdims=0, expand=False), r"/ReduceL2.*keepdims=0"),
    (lambda: _l2_onnx(dim=0), r"/ReduceL2.*over the batch axis"),
    (lambda: _l2_onnx(div_of="x2"), r"/ReduceL2.*not followed by the division of its own input"),
    (lambda: _l2_onnx(eps=-1.0), r"/ReduceL2.*eps >= 0"),
    (lambda: _rms_onnx(axis=0), r"/ReduceMean.*mean square.*over the batch axis"),
    (lambda: _rms_onnx(inverse="op", opset=23, axis=0), r"RMSNormalization over axis 0"),
]


@pytest.mark.parametrize("make,match", REFUSED)
def test_what_the_datapath_cannot_honour_is_refused_by_name(make, match):
    """A ReduceL2 with keepdims=0, over the batch, whose division is of another tensor, with a
    negative floor; a mean square or RMSNormalization over the batch: refused naming the node."""
    m = make()
    with pytest.raises(EdgeDFAError, match=match):
        load_graph_bytes(m.SerializeToString(), source="rms.onnx")


def test_a_reducel2_used_as_a_feature_is_refused_by_name():
    """||h|| read by a Gemm (no division): the ReduceL2 is refused, naming the node and its use."""
    rng = np.random.default_rng(0)
    m = onnx_model([helper.make_node("ReduceL2", ["x"], ["r"], name="/norm_feature", axes=[1], keepdims=1),
                    helper.make_node("Gemm", ["r", "W", "b"], ["y"], name="/fc", transB=1)],
                   {"W": rng.uniform(-1, 1, (3, 1)).astype(np.float32), "b": np.zeros(3, np.float32)}, ["N", 6])
    with pytest.raises(EdgeDFAError, match=r"feat.onnx.*/norm_feature.*F.normalize.*not followed by the division"):
        load_graph_bytes(m.SerializeToString(), source="feat.onnx")


def test_the_float_export_writes_the_decomposition_and_imports_back(tmp_path):
    """Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul (γ Mul, β Add) at opset 17 for every RMSNorm
    (ε = 0 written as 2^-100); it imports back to the same RMSNorms (ε's code, γ, β), and through
    the metadata to the exact integer model; QDQ close, its report says why it is not exact."""
    m = calibrated(rms_cnn(2), 8, 2, scale=1.5)
    proto = build_proto(m, "float")[0]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("ReduceMean") == 2 and ops.count("Reciprocal") == 2 and "RMSNormalization" not in ops
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    got = [(n.attrs["axes"], sorted(n.params)) for n in graph.nodes if n.op == "RMSNorm"]
    assert got == [([1], ["scale"]), ([2, 3], ["B", "scale"])]
    qdq, report = build_proto(m, "qdq")
    assert "the float root does not" in report
    x = np.random.default_rng(3).normal(0, 1.5, (16, 2, 4, 4))
    ref = m.run(x)
    assert np.abs(ort_run(qdq, x) - ref).max() <= 0.1 * np.abs(ref).max()
    assert np.abs(ort_run(proto, x) - run_float(m.to_graph(), x)).max() <= 1e-5 * np.abs(ref).max()
    path = tmp_path / "rms.onnx"
    path.write_bytes(proto.SerializeToString())
    assert np.array_equal(load_onnx(str(path)).run(x), m.run(x))


def test_an_f_normalize_model_exports_with_epsilon_zero_and_imports_back():
    """F.normalize's ε = eps²/D rounds to code 0: the float export writes 2^-100, which imports
    back to code 0 again; the model's float function is the original's (onnxruntime)."""
    m0 = _l2_onnx()
    graph = load_graph_bytes(m0.SerializeToString(), source="l2.onnx")
    m = calibrated(graph, 8, 0, scale=3.0)
    assert next(layer for layer in m.layers if layer.op == "RMSNorm").eps_code == 0
    proto = build_proto(m, "float")[0]
    back = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    rms = next(n for n in back.nodes if n.op == "RMSNorm")
    assert rms.params == {} and int(np.rint(np.ldexp(rms.attrs["epsilon"], 40))) == 0
    x = np.random.default_rng(4).normal(0, 3, (16, 8))
    assert np.abs(ort_run(proto, x) - run_float(m.to_graph(), x)).max() <= 1e-5 * np.abs(ort_run(proto, x)).max()


@pytest.mark.parametrize("name,forms", [("l2norm_ts", [([1], [])]), ("l2norm_dynamo", [([1], [])]),
                                        ("l2norm_seq_ts", [([2], [])]), ("l2norm_seq_dynamo", [([2], [])]),
                                        ("l2norm_conv1d_ts", [([1], [])]), ("l2norm_conv1d_dynamo", [([1], [])]),
                                        ("rmsnorm_dynamo", [([1], ["scale"])]),
                                        ("rmsnorm_opset23_dynamo", [([1], ["scale"])]),
                                        ("rmsnorm_hand_ts", [([1], ["scale"])]),
                                        ("rmsnorm_hand_dynamo", [([1], ["scale"])]),
                                        ("gru_seq_l2norm_ts", [([2], [])]), ("gru_seq_l2norm_dynamo", [([2], [])])])
def test_pytorch_fixtures_import_train_and_export(name, forms):
    """Both exporters (opset 20; dynamo's nn.RMSNorm also at 23): F.normalize over a Linear's
    features, a sequence's last axis, a Conv1d's channels and a sequence-first GRU's features
    before its last step (the batch-first rewrite keeps the norm, its 1/sqrt(D) folds through the
    step's Gather), nn.RMSNorm and the hand-written form; the import equals onnxruntime in float, a BP step is bit-exact with hdl_models, the
    int export bit-exact in onnxruntime, the float export within float tolerance."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [(n.attrs["axes"], sorted(n.params)) for n in model.graph.nodes if n.op == "RMSNorm"] == forms
    check_pytorch_fixture(path, model)


def test_cli_trains_resumes_and_exports_an_rmsnorm_model(tmp_path, capsys):
    """`edgedfa train` on an RMSNorm MLP (γ and β) for 2 epochs equals 1 epoch and a resume bit for
    bit (γ, β, their moments and exponents included); γ moved; the int export equals the trained
    model on the test set in onnxruntime; `emulate` is bit-exact and costs the norm unit."""
    src = tmp_path / "rms.onnx"
    src.write_bytes(_rms_onnx(add=True, shape=(64,), classes=10).SerializeToString())
    check_norm_trains_resumes_and_exports(capsys, tmp_path, src, "RMSNorm", (64,))


def test_qdq_export_of_a_norm_before_any_wide_word(tmp_path):
    """An RMSNorm first, its γ in int8, the Dense's int32 bias after it: the ReduceMean was written
    for opset 17 (axes an attribute) before the bias raised the export to opset 21 (axes an
    input), and the checker refused the file; the export now builds again at the final opset."""
    from edgedfa.model import IntModel
    from edgedfa.onnx.export import build_proto

    rng = np.random.default_rng(0)
    nodes = [Node("rms", "RMSNorm", ["input"], ["n"], {"epsilon": 1e-5, "axes": [1]}, {"scale": rng.uniform(.5, 1.5, 6)}),
             Node("out", "Dense", ["n"], ["y"], {}, {"W": rng.normal(0, .5, (3, 6)), "B": rng.normal(0, .1, 3)})]
    m = IntModel(Graph("g", "input", (6,), "y", nodes, {}), Numerics.from_bits(8), 0)
    x = rng.normal(0, 1, (8, 6))
    m.calibrate(x)
    proto, _ = build_proto(m, "qdq")
    assert proto.opset_import[0].version == 21
    mean = next(n for n in proto.graph.node if n.op_type == "ReduceMean")
    assert len(mean.input) == 2 and not [a for a in mean.attribute if a.name == "axes"]
    ref = m.run(x)
    assert np.abs(ort_run(proto, x) - ref).max() <= 0.1 * np.abs(ref).max()
