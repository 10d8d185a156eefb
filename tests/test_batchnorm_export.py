"""BatchNorm in the three exports: ``int`` bit-exact with the engine's inference in onnxruntime
(every deterministic rounding and overflow mode, PyTorch fixtures of both exporters), ``float``
with the trained parameters and running statistics (and its exact re-import), ``qdq``."""

from __future__ import annotations

import math
import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import edgedfa
from edgedfa.api import make_trainer
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.onnx.export import build_proto, export_model
from edgedfa.train import TrainConfig
from test_onnx_export import build_model, numerics, ort_run, sample_inputs

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


@st.composite
def bn_graphs(draw):
    """Conv (1-d/2-d) or Dense, then BatchNorm, an activation, a Dense head; statistics far from
    the data's, so inference normalises with running statistics that differ from the batch's."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    kind = draw(st.sampled_from(("conv1d", "conv2d", "dense")))
    c = draw(st.integers(1, 4))
    shape = {"conv1d": (2, 6), "conv2d": (2, 4, 5), "dense": (7,)}[kind]
    if kind == "dense":
        first = Node("lin", "Dense", ["input"], ["h"], {}, {"W": rng.uniform(-1, 1, (c, 7))})
    else:
        k = [3] * (len(shape) - 1)
        first = Node("conv", "Conv", ["input"], ["h"], {"kernel_shape": k, "pads": [1] * 2 * len(k)},
                     {"W": rng.uniform(-.6, .6, (c, 2) + tuple(k)), "B": rng.uniform(-.2, .2, c)})
    bn = Node("bn", "BatchNorm", ["h"], ["n"], {"epsilon": draw(st.sampled_from([1e-5, 1e-3])), "momentum": 0.9},
              {"scale": rng.uniform(-1.5, 1.5, c), "B": rng.uniform(-1, 1, c), "mean": rng.uniform(-1, 1, c),
               "var": rng.uniform(0.05, 3, c)})
    act = Node("act", draw(st.sampled_from(("Relu", "Tanh"))), ["n"], ["a"])
    flat = Node("flat", "Flatten", ["a"], ["f"], {"axis": 1})
    n = c * math.prod(shape[1:]) if kind != "dense" else c
    head = Node("head", "Dense", ["f"], ["logits"], {}, {"W": rng.uniform(-1, 1, (3, n)), "B": np.zeros(3)})
    return Graph("bn", "input", shape, "logits", [first, bn, act, flat, head])


@settings(max_examples=40)
@given(graph=bn_graphs(), num=numerics(), seed=st.integers(0, 2 ** 16), steps=st.integers(0, 2))
def test_int_export_equals_engine_inference(graph, num, seed, steps):
    rng = np.random.default_rng(seed)
    model = build_model(graph, num, rng)
    if steps:  # trained a little: the running statistics and formats moved
        trainer = make_trainer(model, TrainConfig(algo="bp", batch_size=16, lr_shift=4))
        x = sample_inputs(model, rng, 16)
        for s in range(steps):
            trainer.step(model.quantize_input(x), rng.integers(0, 3, 16), s, trainer.cfg.shift_at(0))
    proto, report = build_proto(model, "int")
    assert report.startswith("int: bit-exact")
    x = sample_inputs(model, rng)
    assert np.array_equal(ort_run(proto, x), model.run(x))


def test_pytorch_fixtures_export_bit_exact_and_float_follows_the_reference():
    rng = np.random.default_rng(5)
    for name in ("bn_cnn2d_ts.onnx", "bn_cnn2d_dynamo.onnx", "bn_cnn1d_training_ts.onnx"):
        for bits in (8, 12):
            model = edgedfa.load_onnx(os.path.join(FIXTURES, name), numerics=Numerics.from_bits(bits))
            model.calibrate(rng.standard_normal((64,) + model.input_shape).astype(np.float32).astype(np.float64))
            x = sample_inputs(model, rng, 48)
            assert np.array_equal(ort_run(build_proto(model, "int")[0], x), model.run(x)), (name, bits)
            y = ort_run(build_proto(model, "float")[0], x)
            ref = run_float(model.to_graph(), x)
            assert np.abs(y - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), name
            qdq, report = build_proto(model, "qdq")
            assert "BatchNorm" not in report or "rsqrt table" in report
            assert ort_run(qdq, x).shape == ref.shape


def test_float_export_keeps_the_trained_batchnorm_and_reimports_exactly(tmp_path):
    model = edgedfa.load_onnx(os.path.join(FIXTURES, "bn_cnn2d_ts.onnx"), numerics=Numerics.from_bits(8))
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 1, (64,) + model.input_shape)
    model.calibrate(x)
    trainer = make_trainer(model, TrainConfig(algo="bp", batch_size=32))
    for s in range(3):
        trainer.step(model.quantize_input(x[:32]), rng.integers(0, 3, 32), s, trainer.cfg.shift_at(0))
    path = tmp_path / "m.onnx"
    export_model(model, "float", str(path))
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    layers = [layer for layer in model.layers if layer.op == "BatchNorm"]
    assert len(bns) == len(layers) == 2
    for node, layer in zip(bns, layers):
        for key, name in zip(("scale", "B", "mean", "var"), node.input[1:]):
            np.testing.assert_allclose(inits[name], layer.params[key].value(), rtol=2 ** -23)
    back = edgedfa.load_onnx(str(path))
    for layer, again in zip(model.layers, back.layers):
        for key, t in layer.params.items():
            assert again.params[key].fmt == t.fmt and np.array_equal(again.params[key].codes, t.codes), (layer.name, key)
    np.testing.assert_array_equal(back.run(x), model.run(x))
