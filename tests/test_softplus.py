"""Softplus (and Mish, x tanh(softplus(x))): the §9.10 table and its arithmetic written out in
integers, the output format that never saturates, the error bounds, training bit-exact with
hdl_models under every algorithm, the int export bit-exact in onnxruntime, the float reference
and BP gradients, every form both PyTorch exporters write; what cannot be honoured refused by
name."""

from __future__ import annotations

import math
import os
import zlib
from functools import partial

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from model_helpers import calibrated
from onnx_helpers import model as onnx_model
from onnx_helpers import ort_run as ort_run_model
from table_activation_checks import TableActivationChecks, check_step_and_int_export, cnn_graph, mlp_graph

from edgedfa import load_onnx, lut
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat
from edgedfa.float_ref import run_float
from edgedfa.graph import Node
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.onnx.export import build_proto
from hdl_models import activation_unit

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


# -- the table (§9.10) ------------------------------------------------------------------------
def test_table_is_rounded_log1p_exp_with_no_near_ties():
    """S[k] is the nearest code of log(1 + exp(-k/64))·2^17, no entry within 1e-4 of a rounding
    tie, the check values of docs/datapath.md; hdl_models' own ROM holds the same words."""
    exact = [math.log1p(math.exp(-k / 64)) * 2 ** 17 for k in range(1025)]
    assert list(lut.SOFTPLUS_TABLE) == [math.floor(v + 0.5) for v in exact]
    assert min(abs(v - math.floor(v) - 0.5) for v in exact) > 1e-4
    t = lut.SOFTPLUS_TABLE
    assert t[0] == 90852 and t[1024] == 0 and np.all(np.diff(t) <= 0) and np.diff(t).min() == -1020
    assert int(np.argmax(t == 0)) == 799
    assert (int(t[:1024].sum()), zlib.crc32(t[:1024].astype("<u4").tobytes())) == (6_944_834, 0xF1F034D3)
    assert np.array_equal(activation_unit.SOFTPLUS_ROM, t)


@pytest.mark.parametrize("width", range(4, 17))
def test_the_output_format_never_saturates(width):
    """ap_fixed<W, max(I, 1) + 1> in both implementations; every input code of ap_fixed<W, I>
    rounds into it without touching the rail (the same codes as into a 48-bit format)."""
    for int_bits in range(-4, 11):
        in_fmt = FixedFormat(width, int_bits)
        out = lut.softplus_format(in_fmt)
        assert out == FixedFormat(width, max(int_bits, 1) + 1) == activation_unit.softplus_out_format(in_fmt)
        q = np.arange(in_fmt.min_code, in_fmt.max_code + 1)
        wide = FixedFormat.with_frac(48, out.frac_bits)
        y = lut.softplus_codes(q, in_fmt, out, "AP_RND")
        assert np.array_equal(y, lut.softplus_codes(q, in_fmt, wide, "AP_RND")), (in_fmt, out)
        assert y.min() >= 0


def _shift_round_half_up(v: int, s: int) -> int:
    return v << -s if s <= 0 else (v + (1 << (s - 1))) >> s


def _read(rom, m: int, f_addr: int) -> int:
    """§9.2 steps 2-4: the address in ap_ufixed<19,3> (AP_RND, AP_SAT), the interpolated word."""
    u = min(_shift_round_half_up(m, f_addr - 16), (1 << 19) - 1)
    k, r = u >> 9, u & 511
    return (rom(k) << 9) + (rom(k + 1) - rom(k)) * r


def _softplus_word(k: int) -> int:
    return math.floor(math.log1p(math.exp(-k / 64)) * 2 ** 17 + 0.5)


def _tanh_word(k: int) -> int:
    return 1 << 17 if k == 1024 else math.floor(math.tanh(k / 128) * 2 ** 17 + 0.5)


def spec_softplus(q: int, f_in: int, w_out: int, i_out: int) -> int:
    """§9.10 written out with Python integers from the text alone (AP_RND = add half, floor)."""
    f_out, f = w_out - i_out, max(f_in, 26)
    v = _read(_softplus_word, abs(q), f_in + 1)  # log(1 + exp(-|x|)) at |x|/2, 26 fraction bits
    wide = (max(q, 0) << (f - f_in)) + (v << (f - 26))
    return min((1 << (w_out - 1)) - 1, max(-(1 << (w_out - 1)), _shift_round_half_up(wide, f - f_out)))


def spec_softplus_deriv(q: int, f_in: int, w_out: int) -> int:
    """sigmoid(x) by §9.3 at the input's address into ap_ufixed<W,1> (AP_RND, AP_SAT)."""
    y = _read(_tanh_word, abs(q), f_in + 1)
    w = (1 << 26) - y if q < 0 else (1 << 26) + y
    return min((1 << w_out) - 1, _shift_round_half_up(w, 27 - (w_out - 1)))


@settings(max_examples=300)
@given(q=st.integers(-2**20, 2**20), f_in=st.integers(-2, 30), w_out=st.integers(4, 16))
def test_softplus_and_its_derivative_follow_the_spec(q, f_in, w_out):
    in_fmt = FixedFormat(24, 24 - f_in)
    out = lut.softplus_format(FixedFormat(w_out, w_out - f_in))
    y = int(lut.softplus_codes(np.array([q]), in_fmt, out)[0])
    assert y == spec_softplus(q, f_in, out.width, out.int_bits)
    assert int(activation_unit.softplus(np.array([q]), f_in, out, "AP_RND")[0]) == y
    d = int(lut.dsoftplus_codes(np.array([q]), in_fmt, out)[0])
    assert d == spec_softplus_deriv(q, f_in, out.width) and lut.dsoftplus_format(out) == FixedFormat(w_out, 1, False)
    hw_d, hw_fmt = activation_unit.softplus_deriv(np.array([q]), f_in, out)
    assert (int(hw_d[0]), hw_fmt) == (d, lut.dsoftplus_format(out))


def _reference(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def test_softplus_error_bounds():
    """Before the output rounding within lut.SOFTPLUS_CORE_BOUND (|x| up to 32), and not
    loosely; after it within that plus half an LSB (AP_RND); the derivative within sigmoid's
    core bound plus half the derivative's LSB of sigmoid(x)."""
    frac = 34
    codes = np.round(np.ldexp(np.linspace(-32, 32, 1 << 20), frac)).astype(np.int64)
    xv = np.ldexp(codes.astype(np.float64), -frac)
    core = lut.softplus_codes(codes, FixedFormat.with_frac(48, frac), FixedFormat.with_frac(48, 40)) * 2.0 ** -40
    core_err = np.abs(core - _reference(xv))
    assert core_err.max() <= lut.SOFTPLUS_CORE_BOUND and core_err.max() > lut.SOFTPLUS_CORE_BOUND / 4
    for w in (6, 8, 12, 16):
        in_fmt = FixedFormat(w + 30, 6)  # |x| < 32, F_in = w + 24
        out = lut.softplus_format(FixedFormat(w, 6))
        q = np.round(np.ldexp(np.linspace(-32, 31, 1 << 18), in_fmt.frac_bits)).astype(np.int64)
        xq = np.ldexp(q.astype(np.float64), -in_fmt.frac_bits)
        err = np.abs(lut.softplus_codes(q, in_fmt, out, "AP_RND") * out.lsb - _reference(xq))
        assert err.max() <= lut.SOFTPLUS_CORE_BOUND + out.lsb / 2
        dfmt = lut.dsoftplus_format(out)
        d = lut.dsoftplus_codes(q, in_fmt, out) * dfmt.lsb
        assert np.abs(d - 0.5 * (1 + np.tanh(xq / 2))).max() <= lut.SIGMOID_CORE_BOUND + dfmt.lsb / 2


# -- graphs -----------------------------------------------------------------------------------
def _softplus(x, i):
    return [Node(f"softplus{i}", "Softplus", [x], [f"a{i}"], {}, {})], f"a{i}"


def _mish(x, i):
    """x tanh(softplus(x)), the three layers both exporters' Mish import as."""
    return [Node(f"mish{i}/softplus", "Softplus", [x], [f"s{i}"], {}, {}),
            Node(f"mish{i}/tanh", "Tanh", [f"s{i}"], [f"t{i}"], {}, {}),
            Node(f"mish{i}", "Mul", [x, f"t{i}"], [f"a{i}"], {}, {})], f"a{i}"


softplus_mlp = partial(mlp_graph, "softplus_mlp", [_softplus, _mish])  # Dense -> Softplus -> Dense -> Mish -> Dense
softplus_cnn = partial(cnn_graph, "softplus_cnn", [_mish, _softplus])  # conv -> Mish -> MaxPool -> conv -> Softplus -> ...
GRAPHS = {"mlp": (softplus_mlp, (5,)), "cnn": (softplus_cnn, (2, 4, 4))}


# -- bit-exact with hdl_models and onnxruntime, the float reference, BP gradients ------------
class TestSoftplusLayers(TableActivationChecks):
    GRAPHS = GRAPHS


def test_the_float_export_writes_softplus_and_imports_back():
    model = calibrated(softplus_mlp(2), 8, 2, scale=1.5)
    proto = build_proto(model, "float")[0]
    assert [n.op_type for n in proto.graph.node if n.op_type in ("Softplus", "Tanh", "Mul")] == [
        "Softplus", "Softplus", "Tanh", "Mul"]
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    assert [n.op for n in graph.nodes] == [n.op for n in model.graph.nodes]


# -- import -----------------------------------------------------------------------------------
def _mlp_onnx(act_nodes, opset, inits=None):
    """MatMul -> act_nodes (reading "h", writing "a") -> MatMul."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.5, .5, (8, 16)).astype(np.float32),
             "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32), **(inits or {})}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"), *act_nodes,
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    return onnx_model(nodes, inits, ["N", 8], opset=opset)


def _dynamo_softplus(beta=1.0, threshold=20.0):
    """What torch 2.13's dynamo exporter writes for nn.Softplus(beta, threshold)."""
    scalars = {"threshold_cast": np.array(threshold, np.float32)}
    nodes, v = [], "h"
    if beta != 1.0:
        scalars["beta_cast"] = np.array(beta, np.float32)
        nodes, v = [helper.make_node("Mul", ["h", "beta_cast"], ["self_scaled"], name="n1")], "self_scaled"
    nodes.append(helper.make_node("Softplus", [v], ["tmp"], name="n2"))
    if beta != 1.0:
        nodes.append(helper.make_node("Div", ["tmp", "beta_cast"], ["softplus_2"], name="n3"))
    return nodes + [helper.make_node("Greater", [v, "threshold_cast"], ["tmp_1"], name="n4"),
                    helper.make_node("Where", ["tmp_1", "h", "softplus_2" if beta != 1.0 else "tmp"], ["a"],
                                     name="n5")], scalars


def _torchscript_softplus(beta):
    """What TorchScript writes for nn.Softplus(beta) (no threshold)."""
    scalars = {"b1": np.array(beta, np.float32), "b2": np.array(beta, np.float32)}
    return [helper.make_node("Mul", ["h", "b1"], ["m"], name="/act/Mul"),
            helper.make_node("Softplus", ["m"], ["s"], name="/act/Softplus"),
            helper.make_node("Div", ["s", "b2"], ["a"], name="/act/Div")], scalars


def _imports_as(m, ops, source):
    """Imported as ``ops``, equal to onnxruntime in float, close to it in integers at 16 bits."""
    graph = load_graph_bytes(m.SerializeToString(), source=source)
    assert [n.op for n in graph.nodes] == ops
    x = np.random.default_rng(1).normal(0, 3, (16, 8))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(calibrated(graph, 16, 0, scale=3.0).run(x) - ref).max() < 0.01 * np.abs(ref).max()


@pytest.mark.parametrize("opset", [13, 22])
def test_softplus_node_imports(opset):
    _imports_as(_mlp_onnx([helper.make_node("Softplus", ["h"], ["a"], name="/act/Softplus")], opset),
                ["Dense", "Softplus", "Dense"], "softplus.onnx")


@pytest.mark.parametrize("threshold", [20.0, 11.0])
def test_the_dynamo_threshold_select_fuses_into_one_softplus(threshold):
    """Where(x > threshold, x, Softplus(x)) is one Softplus where the select is below the
    table's error (log(1 + exp(-threshold)) <= SOFTPLUS_CORE_BOUND)."""
    nodes, scalars = _dynamo_softplus(threshold=threshold)
    _imports_as(_mlp_onnx(nodes, 20, scalars), ["Dense", "Softplus", "Dense"], "dynamo.onnx")


@pytest.mark.parametrize("opset", [18, 22])
def test_mish_node_imports_as_softplus_tanh_mul(opset):
    _imports_as(_mlp_onnx([helper.make_node("Mish", ["h"], ["a"], name="/act/Mish")], opset),
                ["Dense", "Softplus", "Tanh", "Mul", "Dense"], "mish.onnx")


@pytest.mark.parametrize("beta", [2.0, 0.5])
@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_another_beta_is_a_scale_folded_into_the_dense_layers_around_it(beta, exporter):
    """softplus(beta·x)/beta: the Mul and Div by beta fold into the Dense before and after
    (onnx/affine.py), dynamo's select fuses into the Softplus between them."""
    nodes, scalars = _torchscript_softplus(beta) if exporter == "ts" else _dynamo_softplus(beta=beta)
    _imports_as(_mlp_onnx(nodes, 20, scalars), ["Dense", "Softplus", "Dense"], f"beta_{exporter}.onnx")


@pytest.mark.parametrize("beta,threshold,gap", [(1.0, 5.0, "0.0067"), (0.5, 10.0, "4.5e-05")])
def test_a_threshold_the_table_cannot_hide_is_refused_by_name(beta, threshold, gap):
    nodes, scalars = _dynamo_softplus(beta=beta, threshold=threshold)
    match = (rf"'n2' \(Softplus\): threshold={threshold:g}: above it the exported Softplus is x, up to {gap} "
             r"from softplus\(x\).*a threshold of 10.87 or more is taken")
    with pytest.raises(EdgeDFAError, match=match):
        load_graph_bytes(_mlp_onnx(nodes, 20, scalars).SerializeToString(), source="softplus.onnx")


@pytest.mark.parametrize("name,ops", [
    ("softplus_ts", ["Softplus", "Softplus"]), ("softplus_dynamo", ["Softplus", "Softplus"]),
    ("mish_ts", ["Softplus", "Tanh", "Mul"] * 2), ("mish_dynamo", ["Softplus", "Tanh", "Mul"] * 2)])
def test_pytorch_fixtures_import_train_and_export(name, ops):
    """PyTorch's exports of an MLP with two nn.Softplus or two nn.Mish (both exporters, opset
    20: TorchScript's Softplus and its Softplus/Tanh/Mul, dynamo's threshold select and Mish-18):
    the import equals onnxruntime in float, a step of training is bit-exact with hdl_models, the
    int export bit-exact in onnxruntime."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [n.op for n in model.graph.nodes if n.op != "Dense"] == ops
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 3, (8, 6)), rng.integers(0, 3, 8)
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, y)
