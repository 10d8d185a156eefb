"""MatMul of two activations (attention's q @ k^T and a @ v, bilinear pooling): imported from
both PyTorch exporters, trained by every algorithm bit-exactly with hdl_models, through the
accumulator as a Dense's products are, exported bit-exactly (int), close to the float
reference, refused by name where its operands do not line up."""

from __future__ import annotations

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
from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.kernels import gemm
from edgedfa.layers.matmul import batched_gemm
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph
from edgedfa.onnx.export import build_proto

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def attention(seed, t=4, f=3, d=4, heads=1, n_classes=3):
    """Linear attention over ``t`` tokens: q, k, v Dense; s = q @ k^T; o = s @ v; Flatten;
    Dense. With ``heads`` > 1 the projections are split [N, h, t, d/h] by Reshape/Transpose."""
    rng = np.random.default_rng(seed)
    dense = lambda name, i, o, n_o, n_i: Node(name, "Dense", [i], [o], {}, {  # noqa: E731
        "W": rng.uniform(-1, 1, (n_o, n_i)) * np.sqrt(3 / n_i), "B": rng.uniform(-.2, .2, n_o)})
    nodes = [dense("q", "input", "q0", d, f), dense("k", "input", "k0", d, f), dense("v", "input", "v0", d, f)]
    if heads > 1:
        for name in ("q", "k", "v"):
            nodes += [Node(f"{name}_split", "Reshape", [f"{name}0"], [f"{name}4"], {"shape": [0, t, heads, d // heads]}, {}),
                      Node(f"{name}_heads", "Transpose", [f"{name}4"], [f"{name}1"], {"perm": [0, 2, 1, 3]}, {})]
        kt_perm = [0, 1, 3, 2]
    else:
        nodes += [Node(f"{n}_id", "Reshape", [f"{n}0"], [f"{n}1"], {"shape": [0, t, d]}, {}) for n in "qkv"]
        kt_perm = [0, 2, 1]
    nodes += [Node("kt", "Transpose", ["k1"], ["kt"], {"perm": kt_perm}, {}),
              Node("scores", "MatMul", ["q1", "kt"], ["s"], {}, {}),
              Node("mix", "MatMul", ["s", "v1"], ["o"], {}, {}),
              Node("flat", "Flatten", ["o"], ["of"], {"axis": 1}, {}),
              dense("out", "of", "y", n_classes, t * d)]
    return Graph("attn", "input", (t, f), "y", nodes, {})


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("heads", [1, 2])
def test_attention_trains_bit_exact_with_the_datapath_model(algo, heads):
    """Both products forward, both operands' errors through the MAC array and every update agree
    with hdl_models, integer for integer, over two steps."""
    model = calibrated(attention(3, heads=heads), 8, 3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (12, 4, 3)), rng.integers(0, 3, 12)
    r = emulates_bit_exact(model, x, y, algo)
    assert r["checked"] >= 16


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(6, 14), algo=st.sampled_from(ALGOS),
       scaling=st.sampled_from(["adaptive", "static"]), acc_bits=st.sampled_from([12, 16, 32]),
       overflow=st.sampled_from(["AP_SAT", "AP_WRAP"]))
def test_matmul_bit_exact_with_the_datapath_model_any_width(seed, bits, algo, scaling, acc_bits, overflow):
    """Also with accumulators narrow enough to saturate or wrap (the per-k replay)."""
    model = calibrated(attention(seed, heads=1 + seed % 2), bits, seed, scaling=scaling, acc_bits=max(acc_bits, 2 * bits),
                       acc_overflow=overflow)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 2, (8, 4, 3)), rng.integers(0, 3, 8)
    emulates_bit_exact(model, x, y, algo)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 9), acc_bits=st.integers(8, 20),
       overflow=st.sampled_from(["AP_SAT", "AP_WRAP", "AP_SAT_SYM"]), top=st.sampled_from([3, 127, 2047]))
def test_batched_gemm_is_one_register_gemm_per_matrix(seed, k, acc_bits, overflow, top):
    """The batched shortcuts (exact, wrapped once) equal kernels.gemm's step-by-step register on
    every matrix, whichever overflow mode and however often the register clips."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(-top, top + 1, (2, 3, 5, k)), rng.integers(-top, top + 1, (2, 3, k, 4))
    got = batched_gemm(a, b, acc_bits, overflow)
    want = np.stack([gemm(x, y, acc_bits, overflow) for x, y in zip(a.reshape(-1, 5, k), b.reshape(-1, k, 4))])
    assert np.array_equal(got, want.reshape(2, 3, 5, 4))


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), heads=st.sampled_from([1, 2]))
def test_int_export_of_matmul_equals_engine(seed, bits, heads):
    _check_int_exact(attention(seed, heads=heads), Numerics.from_bits(bits), seed)


@pytest.mark.parametrize("overflow", ["AP_SAT", "AP_WRAP"])
def test_int_export_reproduces_a_clipping_accumulator(overflow):
    """A 16-bit register under 8-bit codes may clip over 4 terms (saturating: a Scan over k) or
    wrap (one wrap of the exact sum): onnxruntime still equals the engine bit for bit."""
    model = calibrated(attention(11), 8, 11, acc_bits=16, acc_overflow=overflow)
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact"), report
    x = np.random.default_rng(12).normal(0, 2, (16, 4, 3))
    assert np.array_equal(ort_run(proto, x), model.run(x))
    kinds = {n.op_type for n in proto.graph.node}
    assert ("Scan" in kinds) == (overflow == "AP_SAT")


def test_matmul_follows_the_float_reference_at_16_bits():
    model = calibrated(attention(5, heads=2), 16, 5)
    x = np.random.default_rng(6).normal(0, 1, (64, 4, 3))
    ref = run_float(model.to_graph(), x)
    assert np.abs(model.run(x) - ref).max() < 0.02 * np.abs(ref).max()
    y = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_matmul_error_is_the_transposed_products():
    """BP's errors of y = a @ b: da = dy @ b^T, db = a^T @ dy, exactly before narrowing."""
    model = calibrated(attention(9), 16, 9)
    layer = next(layer for layer in model.layers if layer.name == "scores")
    rng = np.random.default_rng(10)
    f = FixedFormat(16, 4)
    a, b = (QTensor(rng.integers(-50, 50, s), f) for s in ((3, 4, 4), (3, 4, 4)))
    dy = QTensor(rng.integers(-30, 30, (3, 4, 4)), FixedFormat(16, 2))
    da, db = layer.backward([a, b], dy, [True, True])[0]
    exact_a = np.matmul(dy.codes, np.swapaxes(b.codes, -1, -2)) * 2.0 ** -(dy.fmt.frac_bits + f.frac_bits)
    exact_b = np.matmul(np.swapaxes(a.codes, -1, -2), dy.codes) * 2.0 ** -(dy.fmt.frac_bits + f.frac_bits)
    for got, want in ((da, exact_a), (db, exact_b)):
        assert np.abs(got.codes * got.fmt.lsb - want).max() <= got.fmt.lsb


FIXTURES = "tests/fixtures/onnx"


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_pytorch_attention_imports_with_its_scale_in_the_q_projection(exporter):
    """Two-head attention without a softmax (``q @ k^T / sqrt(d)``, ``s @ v``): two canonical
    MatMuls, the 1/sqrt(d) folded into one projection's weights (no ConstAffine left), the
    float reference equal to onnxruntime on the original file, and the int export of the
    calibrated model equal to the engine."""
    path = f"{FIXTURES}/linear_attention_{exporter}.onnx"
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MatMul") == 2 and ops.count("Dense") == 4 and "ConstAffine" not in ops
    x = np.random.default_rng(1).normal(0, 1, (16, 5, 4))
    assert np.abs(run_float(graph, x) - ort_run(onnx.load(path), x)).max() < 1e-5
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    model.calibrate(x)
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), model.run(x))


def _mm_onnx(path, a_shape, b_shape, const_first=False, scale=None):
    """x [N, 5, 4] -> two Linear projections p, q -> p @ q^T (optionally times a constant)."""
    rng = np.random.default_rng(0)
    inits = {"Wp": rng.normal(0, .5, (4, 6)).astype(np.float32), "Wq": rng.normal(0, .5, (4, 6)).astype(np.float32),
             "perm_shape_a": np.array(a_shape, np.int64), "perm_shape_b": np.array(b_shape, np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "Wp"], ["p"], name="/p/MatMul"),
             helper.make_node("MatMul", ["x", "Wq"], ["q"], name="/q/MatMul"),
             helper.make_node("Reshape", ["p", "perm_shape_a"], ["pa"], name="/pa"),
             helper.make_node("Reshape", ["q", "perm_shape_b"], ["qb"], name="/qb")]
    if const_first:
        inits["C"] = rng.normal(0, 1, (5, 5)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["C", "pa"], ["y"], name="/mm"))
    elif scale is not None:
        inits["c"] = np.asarray(scale, np.float32)
        nodes += [helper.make_node("MatMul", ["pa", "qb"], ["s"], name="/mm"),
                  helper.make_node("Mul", ["s", "c"], ["y"], name="/scale")]
    else:
        nodes.append(helper.make_node("MatMul", ["pa", "qb"], ["y"], name="/mm"))
    onnx.save(onnx_model(nodes, inits, ["N", 5, 4]), path)


@pytest.mark.parametrize("a_shape,b_shape,const_first,scale,message", [
    ([0, 30], [0, 30], False, None, "rank >= 3"),
    ([0, 5, 6], [0, 1, 6, 5], False, None, "leading axes"),
    ([0, 5, 6], [0, 6, 5], True, None, "constant first operand"),
    ([0, 5, 6], [0, 6, 5], False, np.arange(25.0).reshape(5, 5) + 1, "cannot be folded"),
])
def test_matmul_of_data_refused_by_name(tmp_path, a_shape, b_shape, const_first, scale, message):
    path = str(tmp_path / "mm.onnx")
    _mm_onnx(path, a_shape, b_shape, const_first, scale)
    with pytest.raises(EdgeDFAError, match=message) as e:
        load_onnx(path)
    assert "/mm" in str(e.value) or "/scale" in str(e.value)


def test_a_scalar_scale_after_a_matmul_folds_into_an_operand(tmp_path):
    path = str(tmp_path / "mm.onnx")
    _mm_onnx(path, [0, 5, 6], [0, 6, 5], scale=0.25)
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MatMul") == 1 and ops.count("Dense") == 2 and "ConstAffine" not in ops
    x = np.random.default_rng(2).normal(0, 1, (8, 5, 4))
    assert np.abs(run_float(graph, x) - ort_run(onnx.load(path), x)).max() < 1e-5


def _digits_attention_onnx(path):
    """The digits' 8 rows as tokens: q, k, v projections (MatMul + Add), q @ k^T / 2, s @ v,
    mean over the tokens, a classifier: what a PyTorch export of that module writes."""
    rng = np.random.default_rng(5)
    u = lambda *s: rng.uniform(-1, 1, s).astype(np.float32) / np.sqrt(s[0])  # noqa: E731
    inits = {"shape": np.array([0, 8, 8], np.int64), "Wq": u(8, 8), "Bq": u(8), "Wk": u(8, 8), "Bk": u(8),
             "Wv": u(8, 8), "Bv": u(8), "half": np.float32(0.5), "Wo": u(8, 10), "Bo": u(10)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["t"], name="/rows")]
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["t", f"W{p}"], [f"{p}m"], name=f"/{p}/MatMul"),
                  helper.make_node("Add", [f"{p}m", f"B{p}"], [p], name=f"/{p}/Add")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="/kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["s0"], name="/scores"),
              helper.make_node("Mul", ["s0", "half"], ["s"], name="/scale"),
              helper.make_node("MatMul", ["s", "v"], ["o"], name="/mix"),
              helper.make_node("ReduceMean", ["o"], ["m"], name="/mean", axes=[1], keepdims=0),
              helper.make_node("MatMul", ["m", "Wo"], ["ym"], name="/fc/MatMul"),
              helper.make_node("Add", ["ym", "Bo"], ["y"], name="/fc/Add")]
    onnx.save(onnx_model(nodes, inits, ["N", 64]), path)


def test_attention_cli_train_resume_export_emulate(capsys, tmp_path):
    """edgedfa train on the digits (sdfa), a resume equal to an unbroken run bit for bit, the
    int export equal to the checkpoint on the test split, the checkpoint emulated bit-exact
    with array cycles charged to both MatMuls."""
    from cli_helpers import check_resume_equals_whole, run

    from edgedfa import load_checkpoint
    from edgedfa.cosim import emulate
    from edgedfa.data import digits_std
    from hdl_models.hwconfig import HwConfig

    src = tmp_path / "attn.onnx"
    _digits_attention_onnx(str(src))
    check_resume_equals_whole(capsys, tmp_path, ["--model", src, "--dataset", "digits-std", "--algo", "sdfa", "--quiet"])
    model = load_checkpoint(str(tmp_path / "whole"))
    code, out, _ = run(capsys, "export", tmp_path / "whole", "--format", "int", "-o", tmp_path / "int.onnx")
    assert code == 0 and "int: bit-exact" in out
    x, y = digits_std().x_test, digits_std().y_test
    assert np.array_equal(ort_run(onnx.load(str(tmp_path / "int.onnx")), x), model.run(x))
    r = emulate(model, x[:32], y[:32], 1, HwConfig(rows=4, cols=4))
    assert r["bit_exact"], r["first_mismatch"]
    mm = [layer.name for layer in model.layers if layer.op == "MatMul"]
    assert len(mm) == 2
    cycles = {(e["layer"], e["phase"]): e["cycles"] for e in r["layers"] if e["layer"] in mm}
    assert all(cycles.get((name, "forward"), 0) > 0 for name in mm), cycles
