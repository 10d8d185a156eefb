"""ELU, SELU (and CELU of alpha 1) as one Elu layer: the §9.9 expm1 table and its arithmetic
written out in integers, the error bounds, training bit-exact with hdl_models under every
algorithm, the int export bit-exact in onnxruntime, the float reference and BP gradients, the
PyTorch exports of both exporters; what cannot be honoured refused by name."""

from __future__ import annotations

import math
import os
import zlib
from functools import partial

import numpy as np
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
SELU = (1.67326319217681884765625, 1.05070102214813232421875)  # ONNX's (alpha, gamma)


# -- the table (§9.9) -------------------------------------------------------------------------
def test_table_is_rounded_one_minus_exp_with_no_near_ties():
    """D[k] is the nearest code of (1 - exp(-k/64))·2^17, no entry within 1e-4 of a rounding
    tie, the check values of docs/datapath.md, hdl_models' own ROM holds the same words."""
    exact = [(1 - math.exp(-k / 64)) * 2 ** 17 for k in range(1025)]
    assert list(lut.EXPM1_TABLE) == [math.floor(v + 0.5) for v in exact]
    assert min(abs(v - math.floor(v) - 0.5) for v in exact) > 1e-4
    t = lut.EXPM1_TABLE
    assert t[1024] == 1 << 17 and np.all(np.diff(t) >= 0) and np.diff(t).max() == 2032
    assert int(np.argmax(t == 1 << 17)) == 799
    assert (int(t[:1024].sum()), zlib.crc32(t[:1024].astype("<u4").tobytes())) == (125_763_443, 0xCE9C22BE)
    assert np.array_equal(activation_unit.EXPM1_ROM, t)


def test_coefficients_and_formats():
    """gamma, gamma·alpha as 16-fraction-bit codes; the output format gains the integer bits
    max(gamma, gamma·alpha) needs (none for ELU, one for SELU), in both implementations."""
    assert lut.elu_coefficients(1.0) == (65536, 65536)
    assert lut.elu_coefficients(*SELU) == (68859, 115219)
    assert activation_unit.elu_coefficients(*SELU) == (68859, 115219)
    for coefs, extra in (((65536, 65536), 0), ((68859, 115219), 1), ((65536, 0), 0), ((65536, 131073), 2)):
        for fmt in ("ap_fixed<8,3>", "ap_fixed<12,-1>"):
            f = FixedFormat.parse(fmt)
            assert lut.elu_format(f, *coefs) == FixedFormat(f.width, f.int_bits + extra)
            assert activation_unit.elu_out_format(f, *coefs) == FixedFormat(f.width, f.int_bits + extra)


def _shift_round_half_up(v: int, s: int) -> int:
    return v << -s if s <= 0 else (v + (1 << (s - 1))) >> s


def spec_elu(q: int, f_in: int, w_out: int, i_out: int, c_pos: int, c_neg: int) -> int:
    """§9.9 written out with Python integers from the text alone (AP_RND = add half, floor)."""
    f_out = w_out - i_out
    lo, hi = -(1 << (w_out - 1)), (1 << (w_out - 1)) - 1
    if q > 0:
        return min(hi, max(lo, _shift_round_half_up(q * c_pos, f_in + 16 - f_out)))
    u = min(_shift_round_half_up(-q, f_in + 1 - 16), (1 << 19) - 1)  # |x|/2 in ap_ufixed<19,3>
    k, r = u >> 9, u & 511
    D = [math.floor((1 - math.exp(-i / 64)) * 2 ** 17 + 0.5) for i in (k, k + 1)]
    v = (D[0] << 9) + (D[1] - D[0]) * r
    return min(hi, max(lo, _shift_round_half_up(-v * c_neg, 26 + 16 - f_out)))


def spec_elu_deriv(y: int, f_out: int, c_pos: int, c_neg: int) -> tuple:
    f = max(f_out, 16)
    y <<= f - f_out
    return (c_pos << (f - 16) if y > 0 else max(0, y + (c_neg << (f - 16)))), f


@settings(max_examples=300)
@given(q=st.integers(-2**20, 2**20), f_in=st.integers(-2, 24), w_out=st.integers(4, 16),
       coefs=st.sampled_from([(65536, 65536), (68859, 115219), (65536, 32768), (40000, 200000)]))
def test_elu_and_its_derivative_follow_the_spec(q, f_in, w_out, coefs):
    in_fmt = FixedFormat(40, 40 - f_in)
    out = lut.elu_format(FixedFormat(w_out, w_out - f_in), *coefs)
    y = int(lut.elu_codes(np.array([q]), in_fmt, out, *coefs)[0])
    assert y == spec_elu(q, f_in, out.width, out.int_bits, *coefs)
    d = int(lut.delu_codes(np.array([y]), out, *coefs)[0])
    assert (d, lut.delu_format(out).frac_bits) == spec_elu_deriv(y, out.frac_bits, *coefs)
    assert int(activation_unit.elu(np.array([q]), f_in, out, *coefs, "AP_RND")[0]) == y
    hw_d, hw_f = activation_unit.elu_deriv(np.array([y]), out, *coefs)
    assert (int(hw_d[0]), hw_f) == (d, lut.delu_format(out).frac_bits)


def _core(x_codes, frac, coefs):
    """The value before the output rounding, as a float (wide output format)."""
    wide = FixedFormat.with_frac(48, 42)
    return lut.elu_codes(x_codes, FixedFormat.with_frac(48, frac), wide, *coefs, "AP_RND") * 2.0 ** -42


def _reference(x, alpha, gamma):
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


@pytest.mark.parametrize("alpha,gamma", [(1.0, 1.0), SELU])
def test_elu_error_bounds(alpha, gamma):
    """Before the output rounding within lut.ELU_CORE_BOUND·gamma·alpha plus the coefficients'
    rounding (|x| up to 32); after it within that plus half an LSB (AP_RND) where nothing
    saturates; the derivative from the output within one output error plus the coefficient's."""
    coefs = lut.elu_coefficients(alpha, gamma)
    frac = 34
    x = np.linspace(-32, 4, 1 << 20)
    codes = np.round(np.ldexp(x, frac)).astype(np.int64)
    xv = np.ldexp(codes.astype(np.float64), -frac)
    coef_err = 2.0 ** -17 * np.maximum(np.abs(xv), 1.0)
    core_err = np.abs(_core(codes, frac, coefs) - _reference(xv, alpha, gamma))
    assert np.all(core_err <= lut.ELU_CORE_BOUND * gamma * alpha + coef_err)
    assert core_err[xv <= 0].max() > lut.ELU_CORE_BOUND * gamma * alpha / 4  # the bound is not loose
    for w in (6, 8, 12, 16):
        in_fmt = FixedFormat(w + 30, 6)  # |x| < 32, F_in = w + 24
        out = lut.elu_format(FixedFormat(w, 6), *coefs)
        q = np.round(np.ldexp(np.linspace(-32, 31, 1 << 18), in_fmt.frac_bits)).astype(np.int64)
        xq = np.ldexp(q.astype(np.float64), -in_fmt.frac_bits)
        y = lut.elu_codes(q, in_fmt, out, *coefs, "AP_RND")
        ref = _reference(xq, alpha, gamma)
        inside = ref < out.max_value
        err = np.abs(y * out.lsb - ref)[inside]
        bound = lut.ELU_CORE_BOUND * gamma * alpha + 2.0 ** -17 * np.maximum(np.abs(xq[inside]), 1.0) + out.lsb / 2
        assert np.all(err <= bound)
        d = lut.delu_codes(y, out, *coefs) * 2.0 ** -lut.delu_format(out).frac_bits
        d_ref = np.where(xq > 0, gamma, gamma * alpha * np.exp(np.minimum(xq, 0.0)))
        ok = (y != 0) & inside  # at y = 0 the derivative is the left one
        assert np.all(np.abs(d - d_ref)[ok] <= lut.ELU_CORE_BOUND * gamma * alpha + 2.0 ** -16 + out.lsb / 2)


# -- graphs -----------------------------------------------------------------------------------
def _elu(alpha, gamma, tag):
    return lambda x, i: ([Node(f"{tag}{i}", "Elu", [x], [f"a{i}"], {"alpha": alpha, "gamma": gamma}, {})], f"a{i}")


ACTS = [_elu(1.0, 1.0, "elu"), _elu(*SELU, "selu")]
elu_mlp = partial(mlp_graph, "elu_mlp", ACTS)  # Dense -> ELU -> Dense -> SELU -> Dense
elu_cnn = partial(cnn_graph, "elu_cnn", ACTS)  # conv -> ELU -> MaxPool -> conv -> SELU -> Flatten -> Dense


GRAPHS = {"mlp": (elu_mlp, (5,)), "cnn": (elu_cnn, (2, 4, 4))}
_model = partial(calibrated, scale=1.5)


# -- bit-exact with hdl_models and onnxruntime, the float reference, BP gradients ------------
class TestEluLayers(TableActivationChecks):
    GRAPHS = GRAPHS


def test_the_float_export_writes_elu_and_selu_and_imports_back():
    model = _model(elu_mlp(2), 8, 2)
    proto = build_proto(model, "float")[0]
    assert [n.op_type for n in proto.graph.node if n.op_type in ("Elu", "Selu")] == ["Elu", "Selu"]
    graph = load_graph_bytes(proto.SerializeToString(), source="float.onnx")
    assert [(n.op, n.attrs) for n in graph.nodes if n.op == "Elu"] == [
        ("Elu", {"alpha": 1.0, "gamma": 1.0}), ("Elu", {"alpha": np.float32(SELU[0]), "gamma": np.float32(SELU[1])})]


# -- import -----------------------------------------------------------------------------------
def _elu_onnx(op, opset, **attrs):
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.5, .5, (8, 16)).astype(np.float32), "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node(op, ["h"], ["a"], name=f"/act/{op}", **attrs),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    return onnx_model(nodes, inits, ["N", 8], opset=opset)


@pytest.mark.parametrize("op,opset,attrs,expect", [
    ("Elu", 6, {}, (1.0, 1.0)), ("Elu", 13, {"alpha": 0.5}, (0.5, 1.0)), ("Elu", 22, {"alpha": 1.5}, (1.5, 1.0)),
    ("Selu", 6, {}, SELU), ("Selu", 22, {"alpha": 1.25, "gamma": 2.5}, (1.25, 2.5)),
    ("Celu", 12, {}, (1.0, 1.0)), ("Celu", 20, {"alpha": 1.0}, (1.0, 1.0))])
def test_elu_selu_celu_import_with_their_attributes(op, opset, attrs, expect):
    """Each node becomes one Elu with (alpha, gamma) from the node (ONNX's defaults when absent),
    equal to onnxruntime in float and close to it in integers at 16 bits."""
    m = _elu_onnx(op, opset, **attrs)
    graph = load_graph_bytes(m.SerializeToString(), source=f"{op}.onnx")
    assert [n.op for n in graph.nodes] == ["Dense", "Elu", "Dense"]
    assert (graph.nodes[1].attrs["alpha"], graph.nodes[1].attrs["gamma"]) == pytest.approx(expect, rel=1e-7)
    x = np.random.default_rng(1).normal(0, 3, (16, 8))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = calibrated(graph, 16, 0, scale=3.0)
    assert np.abs(model.run(x) - ref).max() < 0.01 * np.abs(ref).max()


@pytest.mark.parametrize("op,opset,attrs,match", [
    ("Celu", 12, {"alpha": 2.0}, r"/act/Celu.*alpha=2.0: Celu is taken with alpha = 1 only"),
    ("Elu", 13, {"alpha": -0.5}, r"/act/Elu.*alpha=-0.5, gamma=1.0: Elu takes alpha >= 0"),
    ("Selu", 13, {"gamma": 20.0}, r"/act/Selu.*gamma=20.0.*below 16"),
    ("Selu", 13, {"alpha": 10.0, "gamma": 2.0}, r"/act/Selu.*gamma\*alpha below 16")])
def test_what_the_datapath_cannot_honour_is_refused_by_name(op, opset, attrs, match):
    with pytest.raises(EdgeDFAError, match=match):
        load_graph_bytes(_elu_onnx(op, opset, **attrs).SerializeToString(), source="elu.onnx")


@pytest.mark.parametrize("name", ["elu_ts", "elu_dynamo"])
def test_pytorch_elu_fixtures_import_train_and_export(name):
    """PyTorch's exports (both exporters, opset 20: Elu, Selu, Celu nodes): ELU after a Conv2d,
    SELU and CELU after Linears; the import equals onnxruntime in float, a step of training is
    bit-exact with hdl_models, the int export bit-exact in onnxruntime."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    assert [(n.op, n.attrs) for n in model.graph.nodes if n.op == "Elu"] == [
        ("Elu", {"alpha": 1.0, "gamma": 1.0}), ("Elu", {"alpha": np.float32(SELU[0]), "gamma": np.float32(SELU[1])}),
        ("Elu", {"alpha": 1.0, "gamma": 1.0})]
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 3, (8, 1, 4, 4)), rng.integers(0, 3, 8)
    import onnxruntime as ort
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, y)
