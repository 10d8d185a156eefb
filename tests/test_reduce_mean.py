"""ReduceMean, ReduceMax and ReduceSum over any non-batch axes: over a sequence's time axis
(``y.mean(dim=1)`` after a batch-first recurrent layer, ``y.mean(dim=0)`` after a seq-first one,
``torch.max(y, dim=1)[0]``, ``y.sum(dim=1)``), over channels, over some spatial axes. The importer
writes them as a GlobalAveragePool (a sum: one scaled by a power of two, the rest of the count
a constant scale folded into the Dense or Conv next to it) or a whole-window MaxPool of the reduced axes moved last and merged (Transpose,
Reshape): they match onnxruntime, train bit-exactly with hdl_models under every algorithm, and
the int export is bit-exact in onnxruntime."""

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx_helpers import check, model, ort_run, rand
from table_activation_checks import check_step_and_int_export
from test_onnx_export import _check_int_exact

from edgedfa.api import load_onnx
from edgedfa.cosim import emulate
from edgedfa.errors import EdgeDFAError
from edgedfa.float_ref import run_float
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph_bytes
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig
from model_helpers import calibrated

N, T, FEAT, H = 3, 5, 2, 4
ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def ops(g):
    return [n.op for n in g.nodes]


REDUCTIONS = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "MaxPool", "ReduceSum": "GlobalAveragePool"}


def _reduce(axes, keepdims, opset, x="x", out="y", op="ReduceMean"):
    """A reduction as each opset writes it: axes an attribute before 18 (ReduceSum: before 13),
    an input from then on."""
    if opset >= (13 if op == "ReduceSum" else 18):
        if axes is None:
            return [helper.make_node(op, [x], [out], keepdims=keepdims)], {}
        return [helper.make_node(op, [x, out + "_axes"], [out], keepdims=keepdims)], \
            {out + "_axes": np.array(axes, np.int64)}
    return [helper.make_node(op, [x], [out], axes=axes, keepdims=keepdims)], {}


FORMS = [((4, 6), [1]), ((4, 6), [-2]), ((4, 6), [2]), ((4, 6), [1, 2]),
         ((3, 4, 5), [1]), ((3, 4, 5), [2]), ((3, 4, 5), [1, 3]), ((3, 4, 5), [-1, 1]), ((3, 4, 5), [2, 3])]


@pytest.mark.parametrize("shape,axes", FORMS)
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", sorted(REDUCTIONS))
def test_reductions_over_non_batch_axes_match_onnxruntime(shape, axes, keepdims, opset, op):
    """Each reduction, then Flatten and a Gemm (which takes a sum's count)."""
    nodes, inits = _reduce(axes, keepdims, opset, out="r", op=op)
    rank = len(shape) + 1
    norm = {a % rank for a in axes}
    width = int(np.prod([d for i, d in enumerate(shape, start=1) if i not in norm]))
    nodes += [helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    inits.update(W=rand(3, width, seed=5), B=rand(3, seed=6))
    g = check(model(nodes, inits, ["N", *shape], opset=opset), rand(N, *shape, seed=len(axes)))
    assert REDUCTIONS[op] in ops(g) and ops(g)[-1] == "Dense"


@pytest.mark.parametrize("shape", [(3, 8), (2, 4, 5)])
def test_global_max_pool_is_one_whole_window(shape):
    nodes = [helper.make_node("GlobalMaxPool", ["x"], ["y"])]
    g = check(model(nodes, {}, ["N", *shape]), rand(N, *shape, seed=3))
    assert ops(g) == ["MaxPool"] and g.nodes[0].attrs["kernel_shape"] == list(shape[1:])


@pytest.mark.parametrize("length, k", [(7, 3), (8, 3), (12, 4), (5, 2)])
def test_a_sum_is_a_mean_times_a_power_of_two_and_the_rest_folds(length, k):
    """x.sum over the spatial axes, read by nothing but the output's Flatten: a GlobalAveragePool
    scaled by 2^k, k = round(log2 n) (the Conv keeps its weights for n a power of two), the rest
    n / 2^k going back through the pooling into the Conv's weights."""
    nodes = [helper.make_node("Conv", ["x", "K", "KB"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             *_reduce([2], 1, 13, "r", "s", "ReduceSum")[0], helper.make_node("Flatten", ["s"], ["y"])]
    inits = {"K": rand(4, 2, 3, seed=1), "KB": rand(4, seed=2), "s_axes": np.array([2], np.int64)}
    g = check(model(nodes, inits, ["N", 2, length], opset=13), rand(N, 2, length, seed=3))
    assert ops(g) == ["Conv", "Relu", "GlobalAveragePool", "Flatten"]
    assert g.nodes[2].attrs["scale_log2"] == k
    assert np.allclose(g.nodes[0].params["W"], length / 2**k * rand(4, 2, 3, seed=1))


def test_a_sum_over_a_power_of_two_needs_no_neighbour():
    """tanh(x).sum(dim=2) + x-free head: n = 16 is all exponent, nothing to fold (refused before)."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), *_reduce([2], 0, 13, "t", "s", "ReduceSum")[0],
             helper.make_node("Sigmoid", ["s"], ["y"])]
    g = check(model(nodes, {"s_axes": np.array([2], np.int64)}, ["N", 3, 16], opset=13), rand(N, 3, 16, seed=4))
    assert "GlobalAveragePool" in ops(g) and not any(n.params for n in g.nodes)


@pytest.mark.parametrize("factor, k", [(4.0, 2), (2.0, 1), (3.0, 0), (0.5, 0)])
def test_a_power_of_two_after_a_mean_is_the_pools_exponent(factor, k):
    """relu(conv(x)).mean(2) * 4: the 4 raises the pool's scale_log2 (the Conv keeps its weights);
    3 or 1/2 is no such exponent (scale_log2 >= 1 only) and folds back into the Conv."""
    nodes = [helper.make_node("Conv", ["x", "K", "KB"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             *_reduce([2], 1, 13, "r", "m", "ReduceMean")[0], helper.make_node("Mul", ["m", "f"], ["s"]),
             helper.make_node("Flatten", ["s"], ["y"])]
    inits = {"K": rand(4, 2, 3, seed=1), "KB": rand(4, seed=2), "m_axes": np.array([2], np.int64),
             "f": np.array(factor, np.float32)}
    g = check(model(nodes, inits, ["N", 2, 6], opset=13), rand(N, 2, 6, seed=3))
    assert ops(g) == ["Conv", "Relu", "GlobalAveragePool", "Flatten"]
    assert g.nodes[2].attrs.get("scale_log2", 0) == k
    assert np.allclose(g.nodes[0].params["W"], (1.0 if k else factor) * rand(4, 2, 3, seed=1))


@pytest.mark.parametrize("name", ["reduce_sum_time_ts.onnx", "reduce_sum_time_dynamo.onnx"])
def test_a_sum_reads_back_from_its_float_export_as_the_same_model(name, tmp_path):
    """The float export writes a summing pool as GlobalAveragePool and Mul(2^k); read back, that Mul
    is the pool's exponent again (it was folded into the Dense after it as well, scaling it twice)."""
    from edgedfa.onnx.export import build_proto

    path = os.path.join(os.path.dirname(__file__), "fixtures", "onnx", name)
    m = load_onnx(path, numerics=Numerics.from_bits(16))
    x = np.random.default_rng(0).normal(0, 1, (16, 8, 6))
    m.calibrate(x)
    out = tmp_path / "f.onnx"
    out.write_bytes(build_proto(m, "float")[0].SerializeToString())
    back = load_onnx(str(out))
    assert [n.attrs.get("scale_log2") for n in back.graph.nodes if n.op == "GlobalAveragePool"] == [3]
    assert np.array_equal(back.run(x), m.run(x))


def test_empty_axes_with_noop_is_the_identity():
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], noop_with_empty_axes=1),
             helper.make_node("Relu", ["m"], ["y"])]
    g = check(model(nodes, {}, ["N", 4, 3], opset=18), rand(N, 4, 3))
    assert "GlobalAveragePool" not in ops(g)


@pytest.mark.parametrize("axes", [[0], [0, 1], None])
@pytest.mark.parametrize("op", sorted(REDUCTIONS))
def test_a_reduction_over_the_batch_is_refused_by_name(axes, op):
    nodes, inits = _reduce(axes, 0, 18, op=op)
    nodes[0].name = "meanpool"
    with pytest.raises(EdgeDFAError, match=f"meanpool.*{op} over axes.*would reduce over the batch"):
        load_graph_bytes(model(nodes, inits, ["N", 4, 3], opset=18).SerializeToString())


def _gru_weights(seed=1):
    return {"W": rand(1, 3 * H, FEAT, seed=seed, scale=0.5), "R": rand(1, 3 * H, H, seed=seed + 1, scale=0.5),
            "B": rand(1, 6 * H, seed=seed + 2, scale=0.5)}


def gru_mean(layout_first: bool, opset: int = 17, seed: int = 1):
    """A GRU over [N, T, FEAT] as PyTorch exports it, its outputs averaged over time, then a
    Gemm: ``y.mean(dim=1)`` of a batch_first module, or ``y.mean(dim=0)`` of a seq-first one
    (the time axis before the batch in the ONNX graph)."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "W", "R", "B"], ["Y", "Yh"], hidden_size=H, name="gru")]
    inits = dict(_gru_weights(seed))
    if opset >= 13:
        inits["sq"] = np.array([1], np.int64)
        nodes.append(helper.make_node("Squeeze", ["Y", "sq"], ["Ys"]))
    else:
        nodes.append(helper.make_node("Squeeze", ["Y"], ["Ys"], axes=[1]))
    if layout_first:  # [T, N, H] -> [N, T, H], mean over axis 1
        nodes.append(helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]))
        mean, extra = _reduce([1], 0, opset, "Yb", "m")
    else:  # mean over axis 0 of [T, N, H]
        mean, extra = _reduce([0], 0, opset, "Ys", "m")
    nodes += mean + [helper.make_node("Gemm", ["m", "Wo", "bo"], ["y"], transB=1)]
    inits.update(extra, Wo=rand(3, H, seed=seed + 3), bo=rand(3, seed=seed + 4))
    return model(nodes, inits, ["N", T, FEAT], opset=opset)


@pytest.mark.parametrize("layout_first", [True, False])
@pytest.mark.parametrize("opset", [14, 17, 18])
def test_a_mean_over_time_after_a_gru_imports_batch_first(layout_first, opset):
    g = check(gru_mean(layout_first, opset), rand(N, T, FEAT, seed=2))
    assert ops(g)[0] == "GRU" and g.nodes[0].attrs["layout"] == 1
    assert "GlobalAveragePool" in ops(g) and ops(g)[-1] == "Dense"


def seq_mlp(seed, op="ReduceMean"):
    """Dense per step on [N, T, FEAT], Relu, a reduction over time, Dense to 3 classes."""
    reduce, extra = _reduce([1], 0, 13, "r", "m", op)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), *reduce, helper.make_node("Gemm", ["m", "W2", "b2"], ["y"], transB=1)]
    inits = {"W1": rand(FEAT, 6, seed=seed), "b1": rand(6, seed=seed + 1), "W2": rand(3, 6, seed=seed + 2),
             "b2": rand(3, seed=seed + 3), **extra}
    return load_graph_bytes(model(nodes, inits, ["N", T, FEAT], opset=13).SerializeToString())


GRAPHS = {"gru": lambda seed: load_graph_bytes(gru_mean(True, 17, seed).SerializeToString()), "mlp": seq_mlp,
          "mlp-max": lambda seed: seq_mlp(seed, "ReduceMax"), "mlp-sum": lambda seed: seq_mlp(seed, "ReduceSum")}


@pytest.mark.parametrize("kind", sorted(GRAPHS))
@pytest.mark.parametrize("algo", ALGOS)
def test_mean_over_time_trains_bit_exact_with_the_datapath_model(kind, algo):
    m = calibrated(GRAPHS[kind](3), 8, 3, scale=1.5)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1.5, (12, T, FEAT)), rng.integers(0, 3, 12)
    r = emulate(m, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=4, algo=algo))
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 10


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), kind=st.sampled_from(sorted(GRAPHS)))
def test_int_export_of_a_mean_over_time_equals_engine(seed, bits, kind):
    _check_int_exact(GRAPHS[kind](seed), Numerics.from_bits(bits), seed)


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


@pytest.mark.parametrize("name", [f"reduce_{k}_{e}" for k in ("max_time", "sum_time", "adaptive_max")
                                  for e in ("ts", "dynamo")])
def test_pytorch_reductions_import_train_and_export(name):
    """``torch.max(x, dim=2)[0]`` after a Conv1d, ``y.sum(dim=1)`` after a GRU, AdaptiveMaxPool2d(1)
    (a ReduceMax from dynamo), both exporters: equal to onnxruntime, a step of training bit-exact
    with hdl_models, the int export bit-exact."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    m = load_onnx(path, numerics=Numerics.from_bits(8))
    assert REDUCTIONS["ReduceSum" if "sum" in name else "ReduceMax"] in ops(m.graph)
    x = rand(8, *m.graph.input_shape, seed=9).astype(np.float64)
    ref = ort_run(onnx.load(path), x)
    assert np.abs(run_float(m.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(m, x, np.random.default_rng(1).integers(0, 3, 8))
