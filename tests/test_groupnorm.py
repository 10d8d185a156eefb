"""GroupNorm (PyTorch's nn.GroupNorm, nn.InstanceNorm1d/2d(affine=True); ONNX
InstanceNormalization and PyTorch's GroupNorm decomposition; datapath §8.9): LayerNorm's integer
arithmetic on rows of C/G channels × positions, γ and β per channel. The statistics and x̂ are
LayerNorm's on the same rows and follow the float definition within §8.7's bound; training
bit-exact with hdl_models under every algorithm at any width and both scaling policies; BP
gradients of every weight, γ and β against central differences; the int export bit-exact in
onnxruntime; resume bit-exact; both PyTorch exporters' fixtures; what cannot be honoured refused
by name."""

from __future__ import annotations

import os

import numpy as np
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
from edgedfa.layers.groupnorm import GroupNorm
from edgedfa.layers.layernorm import LayerNorm
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.export import build_proto

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


def _gn(layout):
    """An act for mlp_graph/cnn_graph: GroupNorm of ``layout[i] = (groups, channels)``, then ReLU."""
    def act(x, i):
        r = np.random.default_rng(10 + i)
        groups, c = layout[i]
        return [Node(f"gn{i}", "GroupNorm", [x], [f"n{i}"], {"epsilon": 1e-5, "groups": groups},
                     {"scale": r.uniform(0.5, 1.5, c), "B": r.uniform(-.3, .3, c)}),
                Node(f"relu{i}", "Relu", [f"n{i}"], [f"a{i}"], {}, {})], f"a{i}"
    return act


def gn_mlp(seed):
    """GroupNorm over [N, C] (positions 1): 3 groups of 2 features, then 2 groups of 3."""
    return mlp_graph("gn_mlp", [_gn({1: (3, 6), 2: (2, 6)})] * 2, seed)


def gn_cnn(seed):
    """Two groups of 2 channels × 4x4 after the first conv, an instance norm (4 groups) after the second."""
    return cnn_graph("gn_cnn", [_gn({1: (2, 4), 2: (4, 4)})] * 2, seed, c=4)


GRAPHS = {"mlp": (gn_mlp, (5,)), "cnn": (gn_cnn, (2, 4, 4))}


class TestGroupNormLayers(TableActivationChecks):
    GRAPHS = GRAPHS

    @pytest.mark.parametrize("kind", ["cnn", "mlp"])
    def test_bp_gradients_match_the_float_adjoint(self, kind):
        """Central differences of the float reference against the engine's BP at 16 bits, for W
        of every Dense/Conv and γ, β of every GroupNorm (its float reference is its training
        forward, so the whole adjoint is checked)."""
        make, shape = self.GRAPHS[kind]
        checked = check_bp_gradients(make(3), shape, {**WEIGHTS, "GroupNorm": ("scale", "B")})
        assert [c for c in checked if c[0].startswith("gn")] == [(f"gn{i}", k) for i in (1, 2) for k in ("scale", "B")]


@pytest.mark.parametrize("bits", [6, 11, 16])
@pytest.mark.parametrize("scaling", ["adaptive", "static"])
@pytest.mark.parametrize("algo", ALGOS)
def test_bit_exact_at_narrow_and_wide_words_under_both_scalings(bits, scaling, algo):
    """The CNN (a GroupNorm of 2 groups and an instance norm) at 6, 11 and 16 bits, adaptive and
    static scaling, every algorithm: two steps bit-exact with hdl_models."""
    m = calibrated(gn_cnn(bits), bits, bits, scale=1.5, scaling=scaling)
    check_bit_exact(m, (2, 4, 4), algo, seed=bits, n=8, scale=3, min_checked=16)


# -- the spec in integers -------------------------------------------------------------------
def _layers(num, c, p, groups):
    """A GroupNorm over (C, P) and a LayerNorm over rows of C/G·P values (γ = 1, β = 0)."""
    gn = GroupNorm(Node("gn", "GroupNorm", ["x"], ["y"], {"epsilon": 1e-5, "groups": groups},
                        {"scale": np.ones(c), "B": np.zeros(c)}), LayerSpec(1, num, 0, [(c, p)]))
    d = c // groups * p
    ln = LayerNorm(Node("ln", "LayerNorm", ["x"], ["y"], {"epsilon": 1e-5, "axis": -1},
                        {"scale": np.ones(d), "B": np.zeros(d)}), LayerSpec(1, num, 0, [(d,)]))
    return gn, ln


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), c=st.sampled_from([1, 2, 4, 6]), p=st.integers(1, 9),
       batch=st.integers(1, 4), data=st.data())
def test_groups_are_normalised_as_layernorm_normalises_rows(seed, bits, c, p, batch, data):
    """x̂ of a GroupNorm equals x̂ of a LayerNorm over its (B·G, C/G·P) rows, the exact mean and Q
    agree, and x̂ follows the float definition within §8.7's bound (γ = 1): §8.9 is §8.8 on a view."""
    groups = data.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    rng = np.random.default_rng(seed)
    num = Numerics.from_bits(bits)
    gn, ln = _layers(num, c, p, groups)
    fmt = FixedFormat(bits, 3)
    x = QTensor(rng.integers(fmt.min_code, fmt.max_code + 1, (batch, c, p)), fmt)
    rows = QTensor(x.codes.reshape(batch * groups, -1), fmt)
    s_gn, s_ln = gn.statistics(x), ln.statistics(rows)
    assert (s_gn["mu"], s_gn["q"], s_gn["gains"]) == (s_ln["mu"], s_ln["q"], s_ln["gains"])
    xhat = gn.normalise(x, s_gn)[0]
    assert np.array_equal(xhat, ln.normalise(rows, s_ln)[0])
    v = rows.codes * fmt.lsb
    mean = v.mean(axis=1, keepdims=True)
    var = v.var(axis=1, keepdims=True)
    inv = 1 / np.sqrt(var + 1e-5)
    ref = (v - mean) * inv
    lsb_xh = gn.xhat_fmt.lsb
    bound = lsb_xh / 2 + np.abs(v - mean) * inv * (1.44e-5 + 2.0 ** -23 + 2.0 ** -42 / (var + 1e-5) + 2.0 ** -33) \
        + inv * 2.0 ** -(fmt.frac_bits + 9)
    inside = np.abs(ref) < 31
    assert np.all(np.abs(xhat * lsb_xh - ref)[inside] <= bound[inside] * (1 + 1e-9))


@pytest.mark.parametrize("c,p,groups", [(4, 6, 2), (4, 3, 4), (6, 1, 3), (2, 5, 1)])
def test_forward_and_backward_are_layernorms_with_gamma_per_channel(c, p, groups):
    """G = 1 with γ, β repeated along the positions is a LayerNorm over (C, P); any G with γ = 1,
    β = 0 a LayerNorm over the last axis of the (G, C/G·P) view: the output, dx and (G = 1) the
    gradients summed per channel equal, integer for integer."""
    rng = np.random.default_rng(c * 100 + p)
    num = Numerics.from_bits(8, scaling="static")
    gamma, beta = (rng.uniform(.5, 1.5, c), rng.uniform(-.3, .3, c)) if groups == 1 else (np.ones(c), np.zeros(c))
    gn = GroupNorm(Node("gn", "GroupNorm", ["x"], ["y"], {"epsilon": 1e-5, "groups": groups},
                        {"scale": gamma, "B": beta}), LayerSpec(1, num, 0, [(c, p)]))
    d = c // groups * p
    shape = (c, p) if groups == 1 else (groups, d)
    params = {k: np.repeat(v, p).reshape(c, p) if groups == 1 else np.full(d, v[0]) for k, v in (("scale", gamma),
                                                                                              ("B", beta))}
    ln = LayerNorm(Node("ln", "LayerNorm", ["x"], ["y"], {"epsilon": 1e-5, "axis": -2 if groups == 1 else -1}, params),
                   LayerSpec(1, num, 0, [shape]))
    fmt = FixedFormat(8, 3)
    x = QTensor(rng.integers(-128, 128, (5, c, p)), fmt)
    gn.calibrate([x])
    ln.calibrate([QTensor(x.codes.reshape((5,) + shape), fmt)])
    assert gn.out_fmt == ln.out_fmt
    y_gn, cache_gn = gn.forward([x], train=True)
    y_ln, cache_ln = ln.forward([QTensor(x.codes.reshape((5,) + shape), fmt)], train=True)
    assert np.array_equal(y_gn.codes.reshape(-1), y_ln.codes.reshape(-1))
    dy = QTensor(rng.integers(-128, 128, (5, c, p)), FixedFormat(8, 0))
    (dx_gn,), g_gn = gn.backward(cache_gn, dy, [True])
    (dx_ln,), g_ln = ln.backward(cache_ln, QTensor(dy.codes.reshape((5,) + shape), dy.fmt), [True])
    assert dx_gn.fmt == dx_ln.fmt and np.array_equal(dx_gn.codes.reshape(-1), dx_ln.codes.reshape(-1))
    if groups == 1:
        for key in ("scale", "B"):
            assert g_gn[key].fmt == g_ln[key].fmt
            assert np.array_equal(g_gn[key].codes, g_ln[key].codes.reshape(c, p).sum(axis=1))


def test_a_constant_group_normalises_to_beta():
    """Q = 0 in a group: x̂ = 0 (the gain is finite through ε), the output is β per channel."""
    g = Graph("one", "x", (4, 3), "f", [
        Node("gn", "GroupNorm", ["x"], ["y"], {"epsilon": 1e-5, "groups": 2},
             {"scale": np.full(4, 1.5), "B": np.linspace(-.5, .5, 4)}),
        Node("flat", "Flatten", ["y"], ["f"], {"axis": 1}, {})], {})
    m = calibrated(g, 12, 0)
    x = np.random.default_rng(0).normal(0, 1, (4, 4, 3))
    x[:, 2:] = 0.75
    y = m.run(x).reshape(4, 4, 3)
    assert np.abs(y[:, 2:] - np.linspace(-.5, .5, 4)[2:, None]).max() <= 2 * m.layers[0].out_fmt.lsb
    assert np.abs(y - run_float(m.to_graph(), x).reshape(4, 4, 3)).max() < 0.02


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_int_export_of_constant_groups_and_any_epsilon(eps, bits):
    """Groups with Q = 0 (with ε = 0: a zero gain), saturated codes, every rounding of §2 but
    stochastic: the int export equals the engine in onnxruntime."""
    rng = np.random.default_rng(bits)
    nodes = [Node("gn1", "GroupNorm", ["x"], ["n"], {"epsilon": eps, "groups": 2},
                  {"scale": rng.uniform(-1.5, 1.5, 4), "B": rng.uniform(-.3, .3, 4)}),
             Node("flat", "Flatten", ["n"], ["f"], {"axis": 1}, {}),
             Node("out", "Dense", ["f"], ["y"], {}, {"W": rng.uniform(-.5, .5, (3, 20)), "B": np.zeros(3)})]
    x = rng.normal(0, 2, (32, 4, 5)).astype(np.float32).astype(np.float64)
    x[:4, :2] = 0.5
    x[4:8] = 0.0
    x[8, 2] = np.linspace(-100, 100, 5)  # saturated codes
    check_int_export_every_rounding(Graph("groups", "x", (4, 5), "y", nodes, {}), bits, x)


# -- import -----------------------------------------------------------------------------------
def _gn_onnx(groups=2, mul=True, add=True, unit=True, direct=False, in_shape=(2, 4, 4), classes=3, opset=17):
    """Conv(4 channels) -> PyTorch's GroupNorm decomposition (or InstanceNormalization itself when
    ``direct``) -> Relu -> Flatten -> Gemm; ``unit``: the InstanceNormalization's scale ones."""
    rng = np.random.default_rng(groups)
    c, hw = 4, in_shape[1:]
    inits = {"W": rng.uniform(-.5, .5, (c, in_shape[0], 3, 3)).astype(np.float32), "b": np.zeros(c, np.float32),
             "Wf": rng.uniform(-.3, .3, (classes, c * int(np.prod(hw)))).astype(np.float32),
             "bf": np.zeros(classes, np.float32), "view": np.array([0, groups, -1]),
             "back": np.array([0, c] + list(hw)),
             "gamma": rng.uniform(.5, 1.5, (c, 1, 1)).astype(np.float32),
             "beta": rng.uniform(-.5, .5, (c, 1, 1)).astype(np.float32),
             "s": (np.ones(groups) if unit else rng.uniform(.5, 1.5, groups)).astype(np.float32),
             "z": np.zeros(groups, np.float32), "sc": rng.uniform(.5, 1.5, c).astype(np.float32),
             "bc": rng.uniform(-.5, .5, c).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], name="/c1/Conv", pads=[1, 1, 1, 1])]
    if direct:
        nodes.append(helper.make_node("InstanceNormalization", ["c", "sc", "bc"], ["n"], name="/in/InstanceNormalization"))
    else:
        nodes += [helper.make_node("Reshape", ["c", "view"], ["v"], name="/gn/Reshape"),
                  helper.make_node("InstanceNormalization", ["v", "s", "z"], ["w"], name="/gn/InstanceNormalization",
                                   epsilon=1e-3),
                  helper.make_node("Reshape", ["w", "back"], ["r"], name="/gn/Reshape_1")]
        nodes += optional_affine("r", ((mul, "Mul", "gamma"), (add, "Add", "beta")), "/gn")
    nodes += [helper.make_node("Relu", ["n"], ["a"], name="/relu"),
              helper.make_node("Flatten", ["a"], ["f"], name="/flatten", axis=1),
              helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="/fc/Gemm", transB=1)]
    return onnx_model(nodes, inits, ["N"] + list(in_shape), opset=opset)


@pytest.mark.parametrize("kw,groups", [(dict(), 2), (dict(mul=False), 2), (dict(add=False), 2),
                                       (dict(mul=False, add=False), 2), (dict(groups=1), 1), (dict(groups=4), 4),
                                       (dict(direct=True), 4), (dict(direct=True, opset=22), 4),
                                       (dict(opset=22), 2)])
def test_groupnorm_decompositions_and_instancenormalization_import(kw, groups):
    """The decomposition with or without its Mul and Add, one group, and InstanceNormalization
    itself become one GroupNorm; equal to onnxruntime in float, close to it in integers."""
    m = _gn_onnx(**kw)
    graph = load_graph_bytes(m.SerializeToString(), source="gn.onnx")
    assert [n.op for n in graph.nodes][:3] == ["Conv", "GroupNorm", "Relu"]
    gn = graph.nodes[1]
    assert gn.attrs["groups"] == groups and np.shape(gn.params["scale"]) == np.shape(gn.params["B"]) == (4,)
    if not kw.get("mul", True):
        assert np.all(gn.params["scale"] == 1)
    if not kw.get("add", True):
        assert np.all(gn.params["B"] == 0)
    x = np.random.default_rng(1).normal(0, 3, (16, 2, 4, 4))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = calibrated(graph, 16, 0, scale=3.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


def test_an_instancenormalization_of_another_view_is_normalised_as_written():
    """A scale that is not ones keeps the InstanceNormalization unfused: a GroupNorm over the
    reshaped [N, G, C/G·P] tensor with its own scale, the Mul and Add folded elsewhere or kept
    (here: into the Gemm after them); still onnxruntime's function."""
    m = _gn_onnx(unit=False, mul=False, add=False)
    graph = load_graph_bytes(m.SerializeToString(), source="gn.onnx")
    gn = next(n for n in graph.nodes if n.op == "GroupNorm")
    assert gn.attrs["groups"] == 2 and gn.params["scale"].shape == (2,)
    x = np.random.default_rng(1).normal(0, 3, (16, 2, 4, 4))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_what_the_datapath_cannot_honour_is_refused_by_name():
    """A scale computed from the data, the batch off axis 0, no positions: refused naming the node."""
    inits = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
    data_scale = onnx_model([helper.make_node("ReduceMax", ["x"], ["m"], name="/max", axes=[2], keepdims=0),
                             helper.make_node("InstanceNormalization", ["x", "m", "b"], ["y"], name="/in/by_data")],
                            inits, ["N", 4, 6])
    with pytest.raises(EdgeDFAError, match=r"gn.onnx.*/in/by_data.*scale \(input 1\) must be a constant"):
        load_graph_bytes(data_scale.SerializeToString(), source="gn.onnx")
    moved = onnx_model([helper.make_node("Transpose", ["x"], ["t"], name="/t", perm=[1, 0, 2]),
                        helper.make_node("InstanceNormalization", ["t", "s", "b"], ["y"], name="/in/moved")],
                       inits, ["N", 4, 6])
    with pytest.raises(EdgeDFAError, match=r"/in/moved.*with the batch on axis 1"):
        load_graph_bytes(moved.SerializeToString(), source="gn.onnx")
    flat = onnx_model([helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="/in/flat")],
                      {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, ["N", 4])
    with pytest.raises(EdgeDFAError, match=r"/in/flat.*InstanceNormalization needs a \[N, C, positions...\] input"):
        load_graph_bytes(flat.SerializeToString(), source="gn.onnx")


def test_the_float_export_writes_instancenormalization_and_imports_back(tmp_path):
    """G = C: one InstanceNormalization; G < C: PyTorch's decomposition; both import back to the
    same GroupNorms and, through the metadata, to the exact integer model."""
    m = calibrated(gn_cnn(2), 8, 2, scale=1.5)
    proto = build_proto(m, "float")[0]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("InstanceNormalization") == 2 and ops.count("Reshape") >= 2
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    assert [(n.attrs["groups"], np.shape(n.params["scale"])) for n in graph.nodes if n.op == "GroupNorm"] == [
        (2, (4,)), (4, (4,))]
    qdq, report = build_proto(m, "qdq")
    assert "float InstanceNormalization does not" in report
    x = np.random.default_rng(3).normal(0, 1.5, (16, 2, 4, 4))
    ref = m.run(x)  # int8 Q/DQ around the decomposition's Reshape: onnxruntime's QDQ propagation failed on it
    assert np.abs(ort_run(qdq, x) - ref).max() <= 0.1 * np.abs(ref).max()
    path = tmp_path / "gn.onnx"
    path.write_bytes(proto.SerializeToString())
    assert np.array_equal(load_onnx(str(path)).run(x), m.run(x))


@pytest.mark.parametrize("name,groups", [("groupnorm_ts", [2, 3]), ("groupnorm_dynamo", [2, 3]),
                                         ("instancenorm_ts", [4]), ("instancenorm_dynamo", [4])])
def test_pytorch_fixtures_import_train_and_export(name, groups):
    """Both exporters (opset 20): nn.GroupNorm(2, 4) in a CNN and nn.GroupNorm(3, 6) after a
    Linear, nn.InstanceNorm1d(4, affine=True) after a Conv1d; the import equals onnxruntime in
    float, a BP step is bit-exact with hdl_models, the int export bit-exact in onnxruntime, the
    float export within float tolerance."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [n.attrs["groups"] for n in model.graph.nodes if n.op == "GroupNorm"] == groups
    assert all(np.any(n.params["scale"] != 1) for n in model.graph.nodes if n.op == "GroupNorm")
    check_pytorch_fixture(path, model)


def test_cli_trains_resumes_and_exports_a_groupnorm_model(tmp_path, capsys):
    """`edgedfa train` on a GroupNorm CNN for 2 epochs equals 1 epoch and a resume bit for bit
    (γ, β, their Adam moments and exponents included); γ moved; the int export equals the
    trained model on the test set in onnxruntime; `emulate` is bit-exact and costs the norm unit."""
    src = tmp_path / "gn.onnx"
    src.write_bytes(_gn_onnx(in_shape=(1, 8, 8), classes=10).SerializeToString())
    check_norm_trains_resumes_and_exports(capsys, tmp_path, src, "GroupNorm", (1, 8, 8))
