"""GELU (x·Phi(x), PyTorch's nn.GELU in both forms) as a NormalCdf layer and a Mul: the §9.8
tables, every ONNX form the exporters write imported, trained by every algorithm bit-exactly
with hdl_models, exported bit-exactly (int), close to the float reference, BP gradients against
central differences; what is not GELU refused by name."""

from __future__ import annotations

from functools import partial

import math
import os
import zlib

import numpy as np
import onnx
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
from edgedfa.float_ref import run_float
from edgedfa.graph import Node
from edgedfa.model import IntModel
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph, load_graph_bytes
from edgedfa.onnx.export import build_proto
from hdl_models import activation_unit

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


# -- the tables (§9.8) ------------------------------------------------------------------------
def test_tables_are_rounded_erf_and_density_with_no_near_ties():
    """Entry k is the nearest code of erf(k/128/√2)·2^17 (density: phi(k/128)·2^19), no entry
    within 1e-5 of a rounding tie (float64 erf/exp of any libm rebuilds them), the check values
    of docs/datapath.md, and hdl_models' own ROMs hold the same words."""
    for table, func, frac in ((lut.ERF_TABLE, lambda v: math.erf(v / math.sqrt(2)), 17),
                              (lut.PDF_TABLE, lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi), 19)):
        exact = [func(k / 128) * 2 ** frac for k in range(1025)]
        assert list(table) == [math.floor(v + 0.5) for v in exact]
        assert min(abs(v - math.floor(v) - 0.5) for v in exact) > 1e-5
        assert table.max() < 1 << 18  # 18-bit unsigned words
    assert lut.ERF_TABLE[1024] == 1 << 17 and np.all(np.diff(lut.ERF_TABLE) >= 0)
    assert lut.PDF_TABLE[1024] == 0 and np.all(np.diff(lut.PDF_TABLE) <= 0)
    checks = [(int(t[:1024].sum()), zlib.crc32(t[:1024].astype("<u4").tobytes())) for t in (lut.ERF_TABLE, lut.PDF_TABLE)]
    assert checks == [(120_765_842, 0x383702E2), (33_659_013, 0x245D0C7A)]
    assert np.array_equal(activation_unit.ERF_ROM, lut.ERF_TABLE)
    assert np.array_equal(activation_unit.PDF_ROM, lut.PDF_TABLE)


def spec_normal_cdf(q: int, f_in: int, w_out: int, deriv=False) -> int:
    """§9.8 written out with Python integers from the text alone (AP_RND = add half, floor)."""
    shift = f_in - 16
    mag = abs(q)
    u = min((mag << -shift) if shift <= 0 else (mag + (1 << (shift - 1))) >> shift, (1 << 19) - 1)
    k, r = u >> 9, u & 511
    if deriv:
        P = [math.floor(math.exp(-(i / 128) ** 2 / 2) / math.sqrt(2 * math.pi) * 2 ** 19 + 0.5) for i in range(1025)]
        y = (P[k] << 9) + (P[k + 1] - P[k]) * r  # 28 fraction bits -> W + 1
        s = 28 - (w_out + 1)
        return min((1 << w_out) - 1, (y + (1 << (s - 1))) >> s)
    G = [math.floor(math.erf(i / 128 / math.sqrt(2)) * 2 ** 17 + 0.5) for i in range(1025)]
    y = (G[k] << 9) + (G[k + 1] - G[k]) * r
    w = (1 << 26) + (y if q >= 0 else -y)
    s = 27 - (w_out - 1)
    return min((1 << (w_out - 1)) - 1, (w + (1 << (s - 1))) >> s)


@settings(max_examples=200)
@given(q=st.integers(-2**20, 2**20), f_in=st.integers(-2, 24), w_out=st.integers(4, 16))
def test_normal_cdf_and_its_derivative_follow_the_spec(q, f_in, w_out):
    in_fmt, out_fmt = f"ap_fixed<40,{40 - f_in}>", f"ap_fixed<{w_out},1>"
    assert int(lut.normal_cdf_codes(np.array([q]), in_fmt, out_fmt)[0]) == spec_normal_cdf(q, f_in, w_out)
    assert int(lut.dnormal_cdf_codes(np.array([q]), in_fmt, out_fmt)[0]) == spec_normal_cdf(q, f_in, w_out, True)


def test_normal_cdf_error_bounds():
    """Before the output rounding within the analytic bounds of §9.8, after it within
    lut.error_bound; the derivative within its core bound plus half its LSB."""
    assert lut.max_error("normal_cdf", n=1 << 20) <= lut.NORMAL_CDF_CORE_BOUND
    assert lut.max_error("normal_pdf", n=1 << 20) <= lut.PDF_CORE_BOUND
    for w in (6, 8, 12, 16):
        out = f"ap_fixed<{w},1>"
        assert lut.max_error("normal_cdf", out, n=1 << 18) <= lut.error_bound("normal_cdf", out)
        lsb_d = lut.dnormal_cdf_format(out).lsb
        assert lut.max_error("normal_pdf", out, n=1 << 18) <= lut.PDF_CORE_BOUND + lsb_d / 2


# -- graphs -----------------------------------------------------------------------------------
def _gelu(approximate):
    def act(x, i):
        return [Node(f"cdf{i}", "NormalCdf", [x], [f"p{i}"], {"approximate": approximate}, {}),
                Node(f"gelu{i}", "Mul", [x, f"p{i}"], [f"a{i}"], {}, {})], f"a{i}"
    return act


gelu_mlp = partial(mlp_graph, "gelu_mlp", [_gelu("none"), _gelu("tanh")])  # the second GELU in the tanh form
gelu_cnn = partial(cnn_graph, "gelu_cnn", [_gelu("none")] * 2)


GRAPHS = {"mlp": (gelu_mlp, (5,)), "cnn": (gelu_cnn, (2, 4, 4))}


_model = partial(calibrated, scale=1.5)  # this file's calibration spread


# -- bit-exact with hdl_models and onnxruntime, the float reference, BP gradients ------------
class TestGeluLayers(TableActivationChecks):
    GRAPHS = GRAPHS


def test_the_float_export_imports_back_to_the_same_graph(tmp_path):
    """Phi alone, in either form, is what the float export writes and what the importer fuses."""
    model = _model(gelu_mlp(2), 8, 2)
    path = str(tmp_path / "float.onnx")
    onnx.save(build_proto(model, "float")[0], path)
    nodes = load_graph(path).nodes
    assert [(n.op, n.attrs.get("approximate")) for n in nodes] == [
        (n.op, n.attrs.get("approximate")) for n in model.graph.nodes]


# -- import -----------------------------------------------------------------------------------
def _k(v):
    return np.float32(v).reshape(())


def _forms():
    """ONNX nodes computing a = GELU(h) (or Phi(h) alone), as each exporter writes them."""
    n = helper.make_node
    erf = [n("Div", ["h", "sqrt2"], ["d"], name="/act/Div"), n("Erf", ["d"], ["e"], name="/act/Erf"),
           n("Add", ["e", "one"], ["u"], name="/act/Add")]
    cube_ts = [n("Mul", ["h", "h"], ["sq"], name="/act/Mul"), n("Mul", ["h", "sq"], ["cube"], name="/act/Mul_1")]
    cube_dynamo = [n("Pow", ["h", "three"], ["cube"], name="/act/Pow")]
    tanh = [n("Mul", ["cubic", "cube"], ["c3"], name="/act/Mul_2"), n("Add", ["h", "c3"], ["p"], name="/act/Add"),
            n("Mul", ["scale", "p"], ["q"], name="/act/Mul_3"), n("Tanh", ["q"], ["e"], name="/act/Tanh"),
            n("Add", ["one", "e"], ["u"], name="/act/Add_1")]
    ts_tail = [n("Mul", ["h", "u"], ["m"], name="/act/Mul_4"), n("Mul", ["m", "half"], ["a"], name="/act/Mul_5")]
    dynamo_tail = [n("Mul", ["half", "u"], ["g"], name="/act/Mul_4"), n("Mul", ["h", "g"], ["a"], name="/act/Mul_5")]
    return {  # name -> (nodes, opset, canonical ops, approximate)
        "gelu_20": ([n("Gelu", ["h"], ["a"], name="/act/Gelu")], 20, ["NormalCdf", "Mul"], "none"),
        "gelu_20_tanh": ([n("Gelu", ["h"], ["a"], name="/act/Gelu", approximate="tanh")], 20, ["NormalCdf", "Mul"], "tanh"),
        "erf_ts": (erf + ts_tail, 17, ["NormalCdf", "Mul"], "none"),
        "erf_dynamo": (erf + dynamo_tail, 18, ["NormalCdf", "Mul"], "none"),
        "erf_half_first": (erf + [n("Mul", ["h", "half"], ["hh"], name="/act/Mul_4"),
                                  n("Mul", ["hh", "u"], ["a"], name="/act/Mul_5")], 13, ["NormalCdf", "Mul"], "none"),
        "erf_div_two": ([n("Mul", ["h", "rsqrt2"], ["d"], name="/act/Mul"), *erf[1:],
                         n("Mul", ["u", "h"], ["m"], name="/act/Mul_4"), n("Div", ["m", "two"], ["a"], name="/act/Div_1")],
                        17, ["NormalCdf", "Mul"], "none"),
        "tanh_ts": (cube_ts + tanh + ts_tail, 17, ["NormalCdf", "Mul"], "tanh"),
        "tanh_dynamo": (cube_dynamo + tanh + dynamo_tail, 18, ["NormalCdf", "Mul"], "tanh"),
        "phi_alone": (erf + [n("Mul", ["u", "half"], ["a"], name="/act/Mul_4")], 17, ["NormalCdf"], "none"),
    }


CONSTS = {"sqrt2": math.sqrt(2), "rsqrt2": 1 / math.sqrt(2), "one": 1.0, "half": 0.5, "two": 2.0, "three": 3.0,
          "cubic": 0.044715, "scale": math.sqrt(2 / math.pi)}


def _gelu_onnx(form):
    nodes, opset, _, _ = _forms()[form]
    rng = np.random.default_rng(0)
    inits = {"W1": rng.uniform(-.5, .5, (8, 16)).astype(np.float32), "W2": rng.uniform(-.3, .3, (16, 10)).astype(np.float32)}
    used = {i for node in nodes for i in node.input}
    inits.update({k: _k(v) for k, v in CONSTS.items() if k in used})
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"), *nodes,
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]
    return onnx_model(nodes, inits, ["N", 8], opset=opset)


@pytest.mark.parametrize("form", sorted(_forms()))
def test_every_exported_form_of_gelu_imports(form):
    """The Gelu node of opset 20 and the decompositions before it (erf or tanh, the 1/2 on
    either side of the product) become NormalCdf (and a Mul with the input), equal to
    onnxruntime in float and close to it in integers."""
    m = _gelu_onnx(form)
    _, _, ops, approximate = _forms()[form]
    graph = load_graph_bytes(m.SerializeToString(), source=f"{form}.onnx")
    assert [n.op for n in graph.nodes] == ["Dense"] + ops + ["Dense"]
    assert graph.nodes[1].attrs == {"approximate": approximate}
    x = np.random.default_rng(1).normal(0, 2, (16, 8))
    ref = ort_run_model(m, x)
    assert np.abs(run_float(graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    model = IntModel(graph, Numerics.from_bits(16), 0)
    model.calibrate(x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["gelu_ts", "gelu_dynamo", "gelu_decomposed_ts", "gelu_decomposed_dynamo"])
def test_pytorch_gelu_fixtures_import_train_and_export(name):
    """PyTorch's exports (both exporters, opset 20 and 17/18): the exact GELU after a Conv2d, the
    tanh form after a Linear; a step of training bit-exact with hdl_models, the int export
    bit-exact in onnxruntime."""
    model = load_onnx(os.path.join(FIXTURES, f"{name}.onnx"), numerics=Numerics.from_bits(8))
    assert [(n.op, n.attrs.get("approximate")) for n in model.graph.nodes if n.op in ("NormalCdf", "Mul")] == [
        ("NormalCdf", "none"), ("Mul", None), ("NormalCdf", "tanh"), ("Mul", None)]
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, (8, 1, 4, 4)), rng.integers(0, 3, 8)
    check_step_and_int_export(model, x, y)


def test_erf_outside_gelu_is_refused_by_name():
    """erf(x/1.5): no normal CDF; the message names the node and says where Erf is taken."""
    m = _gelu_onnx("erf_dynamo")
    next(t for t in m.graph.initializer if t.name == "sqrt2").CopyFrom(onnx.numpy_helper.from_array(_k(1.5), "sqrt2"))
    with pytest.raises(EdgeDFAError, match=r"'/act/Erf' \(Erf-13, only inside GELU"):
        load_graph_bytes(m.SerializeToString(), source="erf.onnx")


def test_an_unknown_gelu_form_is_refused_by_name():
    m = _gelu_onnx("gelu_20")
    del m.graph.node[1].attribute[:]
    m.graph.node[1].attribute.append(helper.make_attribute("approximate", "sigmoid"))
    with pytest.raises(EdgeDFAError, match=r"/act/Gelu.*approximate='sigmoid'.*'none' \(erf\) or 'tanh'"):
        load_graph_bytes(m.SerializeToString(), source="gelu.onnx")
