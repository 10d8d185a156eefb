"""Attention as PyTorch writes it around its MatMuls: timm's one qkv projection split into
heads by ``permute(2, 0, 3, 1, 4).unbind(0)`` (the batch moved to axis 1 and brought back by a
Split or Slices), and ``q * scale`` on one slice of that projection, folded into only q's rows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from model_helpers import emulates_bit_exact
from onnx import helper
from onnx_helpers import model as onnx_model
from test_onnx_export import ort_run

from edgedfa import load_onnx
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph
from edgedfa.onnx.export import build_proto

FIXTURES = "tests/fixtures/onnx"


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_timm_attention_imports_batch_first_and_trains_bit_exact(exporter):
    """TorchScript writes Split + Squeeze, dynamo Slices + Squeeze on the permuted qkv: both
    become Gathers of the batch-first projection; the scale lands on q's rows only; the model
    calibrates, trains bit-exact with hdl_models and exports int bit-exact."""
    path = f"{FIXTURES}/timm_attention_{exporter}.onnx"
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MatMul") == 2 and ops.count("Gather") == 3 and "ConstAffine" not in ops
    qkv = next(n for n in graph.nodes if n.op == "Dense" and n.params["W"].shape[0] == 12)
    src = onnx.load(path)
    w0 = next(onnx.numpy_helper.to_array(t) for t in src.graph.initializer if tuple(t.dims) in ((12, 4), (4, 12)))
    w0 = w0 if w0.shape == (12, 4) else w0.T
    ratio = qkv.params["W"] / w0
    assert np.allclose(ratio[:4], 2 ** -0.5) and np.allclose(ratio[4:], 1.0)  # q's rows only
    x = np.random.default_rng(3).normal(0, 1, (12, 5, 4))
    assert np.abs(run_float(graph, x) - ort_run(src, x)).max() < 1e-5
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    model.calibrate(x)
    emulates_bit_exact(model, x, np.arange(12) % 3, "bp")
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), model.run(x))


def _qkv_onnx(path, opset=17, slices=True, overlap=False, scale_k=False):
    """x [N, 5, 4] -> one Linear(4, 12) -> Reshape [N, 5, 3, 4] -> Transpose (2, 0, 1, 3) (the
    batch on axis 1) -> three parts along axis 0 (Slices, or one Split) -> Squeeze ->
    (q * 0.5) @ k^T -> Flatten."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(0, .5, (4, 12)).astype(np.float32), "shape": np.array([0, 5, 3, 4], np.int64),
             "half": np.float32(0.5), "ax0": np.array([0], np.int64), "flat": np.array([0, 25], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/qkv"),
             helper.make_node("Reshape", ["h", "shape"], ["h4"], name="/split_heads"),
             helper.make_node("Transpose", ["h4"], ["t"], name="/permute", perm=[2, 0, 1, 3])]
    parts = ["q1", "k1", "v1"]
    if slices:
        bounds = [(0, 1), (0, 1) if overlap else (1, 2), (2, 3)]
        for i, (lo, hi) in enumerate(bounds):
            inits[f"lo{i}"], inits[f"hi{i}"] = np.array([lo], np.int64), np.array([hi], np.int64)
            nodes.append(helper.make_node("Slice", ["t", f"lo{i}", f"hi{i}", "ax0"], [parts[i]], name=f"/slice{i}"))
    else:
        nodes.append(helper.make_node("Split", ["t"], parts, name="/split", axis=0, num_outputs=3))
    nodes += [helper.make_node("Squeeze", [p, "ax0"], [p[0]], name=f"/squeeze_{p[0]}") for p in parts]
    scaled = "k" if scale_k else "q"
    nodes += [helper.make_node("Mul", [scaled, "half"], ["s_in"], name="/scale"),
              helper.make_node("Transpose", ["q" if scale_k else "k"], ["other_t"], name="/kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["s_in", "other_t"] if not scale_k else ["other_t", "s_in"], ["s"], name="/scores")]
    if scale_k:  # (k * 0.5)^T is what q @ needs: transpose the scaled one instead
        nodes[-2] = helper.make_node("Transpose", ["s_in"], ["other_t2"], name="/kt", perm=[0, 2, 1])
        nodes[-1] = helper.make_node("MatMul", ["q", "other_t2"], ["s"], name="/scores")
    nodes += [helper.make_node("Reshape", ["s", "flat"], ["y"], name="/flatten")]
    onnx.save(onnx_model(nodes, inits, ["N", 5, 4], opset=opset if slices else 18), path)


@pytest.mark.parametrize("slices,scale_k", [(True, False), (False, False), (True, True)])
def test_parts_of_a_batch_second_tensor_become_gathers_and_take_their_scale(tmp_path, slices, scale_k):
    path = str(tmp_path / "qkv.onnx")
    _qkv_onnx(path, slices=slices, scale_k=scale_k)
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("Gather") in (2, 3) and "ConstAffine" not in ops  # v, read by nothing, may be dropped
    dense = next(n for n in graph.nodes if n.op == "Dense")
    ratio = dense.params["W"] / np.random.default_rng(0).normal(0, .5, (4, 12)).astype(np.float32).T
    part = 1 if scale_k else 0
    scaled_rows = np.arange(12).reshape(3, 4)[part]  # [N, 5, 3, 4]: the part is the third axis
    assert np.allclose(ratio[scaled_rows], 0.5) and np.allclose(np.delete(ratio, scaled_rows, axis=0), 1.0)
    x = np.random.default_rng(1).normal(0, 1, (6, 5, 4))
    assert np.abs(run_float(graph, x) - ort_run(onnx.load(path), x)).max() < 1e-5


def test_a_scale_on_overlapping_parts_is_refused_by_name(tmp_path):
    """q and k both sliced 0:1 (one place read twice): scaling q's rows would scale k's too."""
    path = str(tmp_path / "qkv.onnx")
    _qkv_onnx(path, overlap=True)
    with pytest.raises(EdgeDFAError, match="/scale.*cannot be folded"):
        load_graph(path)


def test_a_split_of_the_batch_is_refused_by_name(tmp_path):
    """A Split along the axis that holds the batch after the Transpose is no Gather."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(0, .5, (4, 12)).astype(np.float32), "shape": np.array([0, 5, 3, 4], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/qkv"),
             helper.make_node("Reshape", ["h", "shape"], ["h4"], name="/split_heads"),
             helper.make_node("Transpose", ["h4"], ["t"], name="/permute", perm=[2, 0, 1, 3]),
             helper.make_node("Split", ["t"], ["a", "b"], name="/split", axis=1, num_outputs=2),
             helper.make_node("Add", ["a", "b"], ["y"], name="/add")]
    path = str(tmp_path / "bad.onnx")
    onnx.save(onnx_model(nodes, inits, [4, 5, 4], opset=18), path)
    with pytest.raises(EdgeDFAError, match="/split"):
        load_graph(path)


@pytest.mark.parametrize("batch_entry", [-1, 3])
def test_a_transpose_on_the_batch_merged_with_the_heads_becomes_one_transpose(tmp_path, batch_entry):
    """dynamo's k.transpose(-2, -1) inside scaled_dot_product_attention: Reshape [N, 2, 5, 2] to
    [-1, 5, 2], Transpose (0, 2, 1), Reshape back to [N, 2, 2, 5]: one Transpose (0, 1, 3, 2)."""
    rng = np.random.default_rng(0)
    inits = {"Wq": rng.normal(0, .5, (4, 4)).astype(np.float32), "Wk": rng.normal(0, .5, (4, 4)).astype(np.float32),
             "heads": np.array([0, 5, 2, 2], np.int64), "merged": np.array([-1, 5, 2], np.int64),
             "back": np.array([batch_entry, 2, 2, 5], np.int64), "flat": np.array([0, 50], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q0"], name="/q"),
             helper.make_node("MatMul", ["x", "Wk"], ["k0"], name="/k")]
    for p in "qk":
        nodes += [helper.make_node("Reshape", [f"{p}0", "heads"], [f"{p}1"], name=f"/{p}_heads"),
                  helper.make_node("Transpose", [f"{p}1"], [f"{p}2"], name=f"/{p}_t", perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Reshape", ["k2", "merged"], ["km"], name="/k_merge"),
              helper.make_node("Transpose", ["km"], ["kmt"], name="/k_swap", perm=[0, 2, 1]),
              helper.make_node("Reshape", ["kmt", "back"], ["kt"], name="/k_split"),
              helper.make_node("MatMul", ["q2", "kt"], ["s"], name="/scores"),
              helper.make_node("Reshape", ["s", "flat"], ["y"], name="/flatten")]
    path = str(tmp_path / "sdpa.onnx")
    onnx.save(onnx_model(nodes, inits, ["N" if batch_entry < 0 else batch_entry, 5, 4]), path)
    graph = load_graph(path)
    swaps = [n for n in graph.nodes if n.op == "Transpose" and n.attrs["perm"] == [0, 1, 3, 2]]
    assert len(swaps) == 1 and [n.op for n in graph.nodes].count("MatMul") == 1
    x = rng.normal(0, 1, (3, 5, 4))  # a fixed-batch export (3) writes its batch size back
    assert np.abs(run_float(graph, x) - ort_run(onnx.load(path), x)).max() < 1e-5


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
@pytest.mark.parametrize("algo", ["bp", "sdfa"])
def test_scaled_dot_product_attention_imports_trains_and_exports(exporter, algo):
    """F.scaled_dot_product_attention with its softmax: TorchScript writes the scale as two Muls
    by sqrt(scale) and the Softmax; dynamo also transposes k on the batch merged with the heads.
    Both import to two MatMuls and a Softmax over the keys (no scale left), match onnxruntime,
    train bit-exact with hdl_models and export int bit-exact."""
    path = f"{FIXTURES}/sdpa_attention_{exporter}.onnx"
    graph = load_graph(path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("MatMul") == 2 and ops.count("Softmax") == 1 and "ConstAffine" not in ops
    src = onnx.load(path)
    x = np.random.default_rng(5).normal(0, 1, (12, 5, 4))
    assert np.abs(run_float(graph, x) - ort_run(src, x)).max() < 1e-5
    model = load_onnx(path, numerics=Numerics.from_bits(8))
    model.calibrate(x)
    emulates_bit_exact(model, x, np.arange(12) % 3, algo)
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), model.run(x))


def test_the_batch_merged_with_the_heads_is_refused_with_advice(tmp_path):
    """nn.MultiheadAttention's [T, N·h, d] (a Transpose to [T, N, E], a Reshape folding the heads into
    the batch): refused naming the Reshape, the merged shape and what imports instead."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(0, .5, (4, 4)).astype(np.float32), "merge": np.array([5, -1, 2], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/proj"),
             helper.make_node("Transpose", ["h"], ["t"], name="/seq_first", perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t", "merge"], ["m"], name="/heads_into_batch"),
             helper.make_node("Transpose", ["m"], ["y"], name="/back", perm=[1, 0, 2])]
    path = str(tmp_path / "mha.onnx")
    onnx.save(onnx_model(nodes, inits, ["N", 5, 4]), path)
    with pytest.raises(EdgeDFAError, match=r"/heads_into_batch.*merge the batch with another axis.*"
                                           r"F\.scaled_dot_product_attention"):
        load_graph(path)
