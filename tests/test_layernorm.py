"""LayerNorm (PyTorch's nn.LayerNorm, ONNX LayerNormalization-17; datapath §8.8): BatchNorm's
integer normalisation with per-sample statistics over the trailing axes, γ and β per feature.
Its statistics equal BatchNorm's on the same groups; training bit-exact with hdl_models under
every algorithm at any width; close to the float reference, the float/QDQ exports close to it;
BP gradients of every weight, γ and β against central differences; both PyTorch exporters'
fixtures; what cannot be honoured refused by name, the int export among it (not yet)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import calibrated
from onnx import helper
from onnx_helpers import model as onnx_model
from onnx_helpers import ort_run as ort_run_model
from table_activation_checks import (ALGOS, KINDS, TableActivationChecks, check_bit_exact, check_int_export_every_rounding,
                                     check_step_and_int_export, cnn_graph, mlp_graph)
from test_onnx_export import ort_run
from test_hard_sigmoid import WEIGHTS, check_bp_gradients

from edgedfa import load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.float_ref import run_float
from edgedfa.graph import Node
from edgedfa.layers import LayerSpec
from edgedfa.layers.batchnorm import BatchNorm
from edgedfa.layers.layernorm import LayerNorm
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.export import build_proto

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
CNN_SHAPES = {1: (3, 4, 4), 2: (3, 2, 2)}  # cnn_graph's activations' per-sample shapes


def _ln(shapes, axis):
    """An act for mlp_graph/cnn_graph: LayerNorm over the trailing axes from ``axis``, then ReLU."""
    def act(x, i):
        norm = shapes[i][len(shapes[i]) + axis:]
        r = np.random.default_rng(10 + i)
        return [Node(f"ln{i}", "LayerNorm", [x], [f"n{i}"], {"epsilon": 1e-5, "axis": axis},
                     {"scale": r.uniform(0.5, 1.5, norm), "B": r.uniform(-.3, .3, norm)}),
                Node(f"relu{i}", "Relu", [f"n{i}"], [f"a{i}"], {}, {})], f"a{i}"
    return act


def ln_mlp(seed):
    return mlp_graph("ln_mlp", [_ln({1: (6,), 2: (6,)}, -1)] * 2, seed)


def ln_cnn(seed):
    """Over (C, H, W) after the first conv, over (H, W) after the second: multi-axis rows."""
    return cnn_graph("ln_cnn", [_ln(CNN_SHAPES, -3), _ln(CNN_SHAPES, -2)], seed)


GRAPHS = {"mlp": (ln_mlp, (5,)), "cnn": (ln_cnn, (2, 4, 4))}


class TestLayerNormLayers(TableActivationChecks):
    GRAPHS = GRAPHS

    @pytest.mark.parametrize("kind", KINDS)
    def test_bp_gradients_match_the_float_adjoint(self, kind):
        """Central differences of the float reference against the engine's BP at 16 bits, for
        W of every Dense/Conv and γ, β of every LayerNorm: unlike BatchNorm's (running
        statistics in inference), LayerNorm's float reference is its training forward, so its
        whole adjoint is checked."""
        make, shape = self.GRAPHS[kind]
        checked = check_bp_gradients(make(3), shape, {**WEIGHTS, "LayerNorm": ("scale", "B")})
        assert [c for c in checked if c[0].startswith("ln")] == [(f"ln{i}", k) for i in (1, 2) for k in ("scale", "B")]


# -- the statistics are BatchNorm's on the same groups ---------------------------------------
@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), d=st.integers(1, 40), rows=st.integers(1, 6))
def test_rows_are_normalised_as_batchnorm_normalises_channels(seed, bits, d, rows):
    """x̂ of a LayerNorm over D features equals x̂ of a BatchNorm whose channels are the rows
    (batch 1, D positions), and the exact mean and Q agree: §8.8 is §8.7 on other groups."""
    rng = np.random.default_rng(seed)
    num = Numerics.from_bits(bits)
    ln = LayerNorm(Node("ln", "LayerNorm", ["x"], ["y"], {"epsilon": 1e-5, "axis": -1},
                        {"scale": np.ones(d), "B": np.zeros(d)}), LayerSpec(1, num, 0, [(d,)]))
    bn = BatchNorm(Node("bn", "BatchNorm", ["x"], ["y"], {"epsilon": 1e-5, "momentum": 0.9},
                        {k: np.full(rows, v) for k, v in (("scale", 1.), ("B", 0.), ("mean", 0.), ("var", 1.))}),
                   LayerSpec(1, num, 0, [(rows, d)]))
    fmt = FixedFormat(bits, 3)
    x = QTensor(rng.integers(fmt.min_code, fmt.max_code + 1, (rows, d)), fmt)
    s_ln, s_bn = ln.statistics(x), bn.batch_statistics(QTensor(x.codes[None], fmt))
    assert (s_ln["mu"], s_ln["q"], s_ln["gains"]) == (s_bn["mu"], s_bn["q"], s_bn["gains"])
    assert np.array_equal(ln.normalise(x, s_ln)[0], bn.normalise(QTensor(x.codes[None], fmt), s_bn)[0][0])
    mean = x.codes.mean(axis=1)
    assert np.all(np.abs(np.array(s_ln["mu"]) * 2.0 ** -8 - mean) <= 2.0 ** -8)
    assert s_ln["q"] == [d * int((r * r).sum()) - int(r.sum()) ** 2 for r in x.codes]


def test_a_row_of_equal_values_normalises_to_beta():
    """Q = 0: x̂ = 0 (the gain is finite through ε), the output is β."""
    from edgedfa.graph import Graph
    g = Graph("one", "x", (2, 6), "f", [
        Node("ln", "LayerNorm", ["x"], ["y"], {"epsilon": 1e-5, "axis": -1},
             {"scale": np.full(6, 1.5), "B": np.linspace(-.5, .5, 6)}),
        Node("flat", "Flatten", ["y"], ["f"], {"axis": 1}, {})], {})
    m = calibrated(g, 12, 0)
    x = np.random.default_rng(0).normal(0, 1, (4, 2, 6))
    x[:, 1] = 0.75
    y = m.run(x).reshape(4, 2, 6)
    assert np.abs(y[:, 1] - np.linspace(-.5, .5, 6)).max() <= 2 * m.layers[0].out_fmt.lsb
    assert np.abs(y - run_float(m.to_graph(), x).reshape(4, 2, 6)).max() < 0.02


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_int_export_of_constant_rows_and_any_epsilon(eps, bits):
    """Rows with Q = 0 (with ε = 0: a zero gain, x̂ = 0), wide and narrow rows, every rounding
    of §2 but stochastic: the int export equals the engine in onnxruntime."""
    from edgedfa.graph import Graph
    rng = np.random.default_rng(bits)
    nodes = [Node("ln1", "LayerNorm", ["x"], ["n"], {"epsilon": eps, "axis": -1},
                  {"scale": rng.uniform(-1.5, 1.5, 7), "B": rng.uniform(-.3, .3, 7)}),
             Node("flat", "Flatten", ["n"], ["f"], {"axis": 1}, {}),
             Node("out", "Dense", ["f"], ["y"], {}, {"W": rng.uniform(-.5, .5, (3, 21)), "B": np.zeros(3)})]
    x = rng.normal(0, 2, (32, 3, 7)).astype(np.float32).astype(np.float64)
    x[:4, 1] = 0.5
    x[4:8] = 0.0
    x[8, 2] = np.linspace(-100, 100, 7)  # saturated codes
    check_int_export_every_rounding(Graph("rows", "x", (3, 7), "y", nodes, {}), bits, x)


@pytest.mark.parametrize("algo", ALGOS)
def test_sequence_rows_train_bit_exact(algo):
    """[N, T, F] with LayerNorm over F: a row per sample and position, bit-exact with hdl_models."""
    from edgedfa.graph import Graph
    rng = np.random.default_rng(0)
    nodes = [Node("d1", "Dense", ["x"], ["h"], {}, {"W": rng.uniform(-1, 1, (6, 4)), "B": np.zeros(6)}),
             Node("ln", "LayerNorm", ["h"], ["n"], {"epsilon": 1e-5, "axis": -1},
                  {"scale": rng.uniform(.5, 1.5, 6), "B": rng.uniform(-.3, .3, 6)}),
             Node("flat", "Flatten", ["n"], ["f"], {"axis": 1}, {}),
             Node("out", "Dense", ["f"], ["y"], {}, {"W": rng.uniform(-.5, .5, (3, 18)), "B": np.zeros(3)})]
    m = calibrated(Graph("seq", "x", (3, 4), "y", nodes, {}), 8, 0, scale=1.5)
    check_bit_exact(m, (3, 4), algo, seed=1, n=12, scale=1.5, min_checked=16)


# -- import -----------------------------------------------------------------------------------
def _ln_onnx(shape=(3, 8), axis=-1, bias=True, norm=None, extra_outputs=0, opset=17):
    rng = np.random.default_rng(0)
    norm = norm if norm is not None else tuple(shape[len(shape) + (axis if axis < 0 else axis - len(shape) - 1):])
    inits = {"W1": rng.uniform(-.5, .5, (shape[-1], shape[-1])).astype(np.float32),
             "g": rng.uniform(.5, 1.5, norm).astype(np.float32)}
    ins = ["h", "g"]
    if bias:
        inits["b"] = rng.uniform(-.5, .5, norm).astype(np.float32)
        ins.append("b")
    outs = ["a"] + [f"stat{i}" for i in range(extra_outputs)]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("LayerNormalization", ins, outs, name="/ln/LayerNormalization", axis=axis,
                              epsilon=1e-3),
             helper.make_node("Relu", ["a"], ["r"], name="/relu"),
             helper.make_node("Flatten", ["r"], ["y"], name="/flatten", axis=1)]
    if extra_outputs:
        nodes.append(helper.make_node("Add", ["y", "stat0"], ["z"], name="/reads_mean"))
    m = onnx_model(nodes, inits, ["N"] + list(shape), opset=opset)
    if extra_outputs:
        m.graph.output[0].name = "z"
    return m


@pytest.mark.parametrize("shape,axis,bias", [((8,), -1, True), ((3, 8), -1, False), ((3, 8), 2, True),
                                             ((3, 8), -2, True), ((3, 8), 1, True)])
def test_layernormalization_imports_and_follows_onnxruntime(shape, axis, bias):
    m = _ln_onnx(shape, axis, bias)
    graph = load_graph_bytes(m.SerializeToString(), source="ln.onnx")
    assert [n.op for n in graph.nodes][:3] == ["Dense", "LayerNorm", "Relu"]
    ln = graph.nodes[1]
    rank = len(shape) + 1
    assert ln.attrs == {"epsilon": pytest.approx(1e-3), "axis": axis - rank if axis >= 0 else axis}
    x = np.random.default_rng(1).normal(0, 3, (16,) + shape)
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = calibrated(graph, 16, 0, scale=3.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


@pytest.mark.parametrize("kw,match", [
    (dict(shape=(3, 8), axis=0, norm=(1, 3, 8)), r"/ln/LayerNormalization.*axis 0 of a rank-3 input is not supported"),
    (dict(shape=(8,), axis=-2, norm=(1, 8)), r"/ln/LayerNormalization.*axis -2 of a rank-2 input"),
    (dict(shape=(3, 8), axis=-1, norm=(5,)), r"/ln/LayerNormalization.*scale of shape \[5\] does not broadcast"),
    (dict(shape=(8,), extra_outputs=1), r"/ln/LayerNormalization.*Mean/InvStdDev outputs")])
def test_what_the_datapath_cannot_honour_is_refused_by_name(kw, match):
    with pytest.raises(EdgeDFAError, match=match):
        load_graph_bytes(_ln_onnx(**kw).SerializeToString(), source="ln.onnx")


def test_the_float_export_writes_layernormalization_and_imports_back(tmp_path):
    m = calibrated(ln_cnn(2), 8, 2)
    proto = build_proto(m, "float")[0]
    lns = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    assert [[a.i for a in n.attribute if a.name == "axis"] for n in lns] == [[-3], [-2]]
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    assert [(n.op, n.attrs["axis"], np.shape(n.params["scale"])) for n in graph.nodes if n.op == "LayerNorm"] == [
        ("LayerNorm", -3, (3, 4, 4)), ("LayerNorm", -2, (2, 2))]
    assert "float LayerNormalization does not" in build_proto(m, "qdq")[1]
    x = np.random.default_rng(3).normal(0, 1.5, (16, 2, 4, 4))
    path = os.path.join(tmp_path, "ln.onnx")
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    back = load_onnx(path)
    assert np.array_equal(back.run(x), m.run(x))  # the metadata rebuilds the exact integer model


@pytest.mark.parametrize("name", ["layernorm_ts", "layernorm_dynamo"])
def test_pytorch_layernorm_fixtures_import_train_and_export(name):
    """Both exporters (opset 20): nn.LayerNorm over [N, T, F]'s F, over (T, F), over a Linear's
    features; the import equals onnxruntime in float, a BP step is bit-exact with hdl_models,
    the int export bit-exact in onnxruntime, the float export within float tolerance."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [(n.attrs["axis"], np.shape(n.params["scale"])) for n in model.graph.nodes if n.op == "LayerNorm"] == [
        (-1, (8,)), (-2, (3, 8)), (-1, (6,))]
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 2, (8, 3, 4)), rng.integers(0, 3, 8)
    import onnxruntime as ort
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x.astype(np.float32).astype(np.float64), y)
    exported = build_proto(model, "float")[0]
    sess = ort.InferenceSession(exported.SerializeToString())
    out = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert np.abs(out - run_float(model.to_graph(), x)).max() <= 1e-5 * max(1.0, np.abs(out).max())


def test_cli_trains_a_layernorm_model_and_exports_it(tmp_path, capsys):
    """`edgedfa train` on a LayerNorm MLP, then `export` in every format; the int file equals
    the trained model on the test set in onnxruntime."""
    from edgedfa.cli import main
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.2, .2, (64, 16)).astype(np.float32), "b1": np.zeros(16, np.float32),
             "g": np.ones(16, np.float32), "b": np.zeros(16, np.float32),
             "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="/fc1/MatMul"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="/fc1/Add"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="/ln/LayerNormalization"),
             helper.make_node("Relu", ["n"], ["a"], name="/relu"),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    src = tmp_path / "ln.onnx"
    src.write_bytes(onnx_model(nodes, inits, ["N", 64], opset=17).SerializeToString())
    run = tmp_path / "run"
    assert main(["train", "--model", str(src), "--dataset", "digits-std", "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 0
    for fmt in ("float", "qdq", "int"):
        assert main(["export", str(run), "--format", fmt, "-o", str(tmp_path / f"{fmt}.onnx")]) == 0
    assert "int: bit-exact" in capsys.readouterr().out
    from edgedfa import load_checkpoint
    from edgedfa.data import digits_std
    model, x = load_checkpoint(str(run)), digits_std().x_test
    proto = onnx.load(str(tmp_path / "int.onnx"))
    assert np.array_equal(ort_run(proto, x), model.run(x))


def _int_graph(build, n_in: int = 1):
    """An onnxruntime session of int64 tensors [N, 1] in, the ops ``build(ops, inputs)`` emits out."""
    import onnxruntime as ort
    from onnx import TensorProto

    from edgedfa.onnx.export_graph import Builder
    from edgedfa.onnx.export_int import OPSET, IntOps
    b = Builder({f"v{i}" for i in range(n_in)})
    outs = build(IntOps(b), [f"v{i}" for i in range(n_in)])
    outs = [b.node("Identity", [o], f"out{i}", [f"out{i}"]) for i, o in enumerate(outs)]
    g = b.graph("g", [helper.make_tensor_value_info(f"v{i}", TensorProto.INT64, ["N", 1]) for i in range(n_in)],
                [helper.make_tensor_value_info(o, TensorProto.INT64, ["N", 1]) for o in outs])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_int_exports_rsqrt_is_the_engines_on_every_segment_and_tie():
    """The graph's leading-one count, ROM read and interpolation (datapath §8.7's rsqrt) equal
    the engine's on 0, both ends of every power of two to 2^61 and every value with u = v
    (2^16 to 2^18: every ROM segment and position, and so the ties of the output rounding)."""
    from edgedfa.layers.batchnorm import rsqrt
    from edgedfa.onnx.export_int import _rsqrt
    sess = _int_graph(lambda o, v: _rsqrt(o, v[0], "r"))
    v = sorted({0, 1, 2, 3} | {(1 << e) + d for e in range(2, 62) for d in (-1, 0, 1)}
               | set(range(1 << 16, 1 << 18)) | set(range(3 << 40, (3 << 40) + 4096)))
    t, f = sess.run(None, {"v0": np.array(v, dtype=np.int64).reshape(-1, 1)})
    assert [(int(a), int(b)) for a, b in zip(t.reshape(-1), f.reshape(-1))] == [rsqrt(x, 0) for x in v]


@settings(max_examples=200)
@given(shift=st.integers(0, 62), x=st.integers(-2**61, 2**61),
       rounding=st.sampled_from(["AP_RND", "AP_RND_CONV", "AP_TRN", "AP_TRN_ZERO", "AP_RND_ZERO", "AP_RND_INF",
                                 "AP_RND_MIN_INF"]))
def test_a_computed_shift_rounds_as_a_constant_one(shift, x, rounding):
    """round_right with the shift a tensor of the graph (LayerNorm's per-row k) equals
    fixed.round_shift for every rounding of §2 but stochastic."""
    from edgedfa.fixed import round_shift
    x = x >> min(shift, 61) << min(shift, 61) | (x & 7) if shift > 3 and x % 3 == 0 else x  # ties and near-ties
    sess = _int_graph(lambda o, v: [o.round_right(v[0], v[1], rounding, "r")], 2)
    got = sess.run(None, {"v0": np.array([[x]], dtype=np.int64), "v1": np.array([[shift]], dtype=np.int64)})[0]
    assert int(got[0, 0]) == int(round_shift(np.array([x], dtype=np.int64), shift, rounding)[0])
