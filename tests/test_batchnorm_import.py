"""BatchNorm from PyTorch exports (both exporters, training mode), the fold option against the
import that folded every BatchNorm, credit plans of a conv-BN-relu-pool network, resume."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edgedfa
from cli_helpers import run, same_state
from edgedfa.api import build_model, make_trainer
from edgedfa.credit import make_plan
from edgedfa.numerics import Numerics
from edgedfa.onnx import load_graph, load_graph_bytes
from edgedfa.train import TrainConfig

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")
BN_FIXTURES = ["bn_cnn2d_ts.onnx", "bn_cnn2d_dynamo.onnx", "bn_cnn1d_ts.onnx", "bn_cnn1d_dynamo.onnx",
               "bn_cnn1d_training_ts.onnx"]


def fixture(name):
    return os.path.join(FIXTURES, name)


def inputs(graph, n=24, seed=0):
    return np.random.default_rng(seed).normal(0.2, 1.0, (n,) + tuple(graph.input_shape))


@pytest.mark.parametrize("name", BN_FIXTURES)
def test_pytorch_batchnorm_is_kept_with_its_parameters(name):
    m = onnx.load(fixture(name))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    onnx_bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    g = load_graph(fixture(name))
    bns = [n for n in g.nodes if n.op == "BatchNorm"]
    assert len(bns) == len(onnx_bns) >= 1
    for node, ref in zip(bns, onnx_bns):
        for key, i in (("scale", 1), ("B", 2), ("mean", 3), ("var", 4)):
            np.testing.assert_array_equal(node.params[key], inits[ref.input[i]])
        assert node.attrs["momentum"] == pytest.approx(0.8 if "bn_cnn2d" in name and node is bns[1] else 0.9)


# --------------------------------------------------------------------------- the fold option

def folded_onnx(path) -> bytes:
    """The file with each BatchNormalization folded into the Conv/Gemm before it as edgedfa's
    importer did before BatchNorm trained: float64 W·s and B·s + t rounded to float32."""
    m = onnx.load(path)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        gam, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        s = gam / np.sqrt(var + eps)
        host = producer[bn.input[0]]
        w = numpy_helper.to_array(inits[host.input[1]]).astype(np.float64)
        if host.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in host.attribute}
            w = attrs.get("alpha", 1.0) * (w if attrs.get("transB", 0) else w.T)
            del host.attribute[:]
            host.attribute.append(helper.make_attribute("transB", 1))
        b = numpy_helper.to_array(inits[host.input[2]]).astype(np.float64) if len(host.input) > 2 else 0.0
        w = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        g.initializer.extend([numpy_helper.from_array(w, host.name + "_W_bn"),
                              numpy_helper.from_array((b * s + beta - mean * s).astype(np.float32),
                                                      host.name + "_B_bn")])
        host.input[:] = [host.input[0], host.name + "_W_bn", host.name + "_B_bn"]
        host.output[0] = bn.output[0]
        g.node.remove(bn)
    return m.SerializeToString()


def same_graph(a, b):
    assert [(n.name, n.op, n.inputs, n.outputs) for n in a.nodes] == [(n.name, n.op, n.inputs, n.outputs)
                                                                       for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes):
        assert sorted(na.params) == sorted(nb.params)
        for k in na.params:
            np.testing.assert_array_equal(na.params[k], nb.params[k])


@pytest.mark.parametrize("name", ["bn_cnn2d_ts.onnx", "bn_cnn1d_ts.onnx"])
def test_fold_option_reproduces_the_folded_import_and_its_training(name):
    fold = Numerics.from_bits(8).with_overrides({"batchnorm": "fold"})
    ref = load_graph_bytes(folded_onnx(fixture(name)), source="folded")
    model_a = build_model(load_graph(fixture(name)), fold, 0)
    model_b = build_model(ref, fold, 0)
    same_graph(model_a.graph, ref)
    x = inputs(ref, 64)
    y = np.random.default_rng(1).integers(0, 3, 64)
    for model in (model_a, model_b):
        model.calibrate(x[:32])
        trainer = make_trainer(model, TrainConfig(algo="bp", batch_size=32))
        for step in range(3):
            trainer.step(model.quantize_input(x[step % 2 * 32:][:32]), y[step % 2 * 32:][:32], step,
                         trainer.cfg.shift_at(0))
    assert model_a.state_arrays().keys() == model_b.state_arrays().keys()
    for key, arr in model_a.state_arrays().items():
        np.testing.assert_array_equal(arr, model_b.state_arrays()[key], err_msg=key)


def test_one_batchnorm_folded_by_its_layer_table_and_the_checkpoint_reads_back(tmp_path):
    g = load_graph(fixture("bn_cnn2d_ts.onnx"))
    bns = [n.name for n in g.nodes if n.op == "BatchNorm"]
    table = {bns[1]: {"batchnorm": "fold", "weight_bits": 10}}
    model = build_model(g, Numerics.from_bits(8), 0, table)
    assert [n.name for n in model.graph.nodes if n.op == "BatchNorm"] == bns[:1]
    assert model.graph.meta["folded_batchnorm"] == {bns[1]: "/net/net.5/Gemm"}
    model.calibrate(inputs(g))
    trainer = make_trainer(model, TrainConfig(algo="bp"))
    from edgedfa.api import save_run

    progress = {"epoch": 1, "step": 0, "batch": 0, "samples": 0, "seconds": 0.0, "history": []}
    save_run(str(tmp_path), model, trainer, trainer.cfg, progress, {"test_accuracy": None})
    back = edgedfa.load_checkpoint(str(tmp_path / "checkpoint.npz"))
    x = inputs(g, 8, seed=5)
    np.testing.assert_array_equal(back.run(x), model.run(x))


def test_training_mode_export_trains_like_the_inference_one():
    a, b = load_graph(fixture("bn_cnn1d_training_ts.onnx")), load_graph(fixture("bn_cnn1d_ts.onnx"))
    for na, nb in zip(a.nodes, b.nodes):
        assert na.op == nb.op and sorted(na.params) == sorted(nb.params)


# --------------------------------------------------------------------------- credit plans

def test_batchnorm_joins_the_module_of_the_layer_before_it():
    g = load_graph(fixture("bn_cnn2d_ts.onnx"))
    names = [n.name for n in g.nodes]
    conv_block, head = names[:4], names[4:]  # conv-bn-relu-pool | flatten-gemm-bn-relu-gemm
    for algo in ("dfa", "sdfa"):
        mods = [m.nodes for m in make_plan(g, algo).modules]
        assert mods == [conv_block, head[:4], head[4:]], algo
    for algo in ("modular", "hybrid"):
        plan = make_plan(g, algo)
        assert plan.modules[0].nodes == conv_block
        assert all(not set(m.nodes) & set(conv_block) for m in plan.modules[1:])
    assert [m.source for m in make_plan(g, "hybrid").modules] == ["dfa", "output"]
    assert make_plan(g, "bp").modules[0].nodes == names


@pytest.mark.parametrize("algo", ["bp", "dfa", "sdfa", "modular", "hybrid"])
def test_every_plan_trains_the_batchnorms(algo):
    g = load_graph(fixture("bn_cnn2d_ts.onnx"))
    model = build_model(g, Numerics.from_bits(8), 0)
    x = inputs(g, 64)
    y = np.random.default_rng(2).integers(0, 3, 64)
    model.calibrate(x)
    trainer = make_trainer(model, TrainConfig(algo=algo, batch_size=32, lr_shift=5))  # steps above an LSB of γ
    bn = [layer for layer in model.layers if layer.op == "BatchNorm"]
    start = [{k: v.codes.copy() for k, v in layer.params.items()} for layer in bn]
    for step in range(4):
        trainer.step(model.quantize_input(x[step % 2 * 32:][:32]), y[step % 2 * 32:][:32], step, trainer.cfg.shift_at(0))
    for layer, before in zip(bn, start):
        for key in ("scale", "mean", "var"):
            assert (layer.params[key].codes != before[key]).any(), (algo, layer.name, key)


# --------------------------------------------------------------------------- a run

def test_a_resumed_batchnorm_run_ends_on_the_same_bits(tmp_path, capsys):
    g = load_graph(fixture("bn_cnn2d_ts.onnx"))
    rng = np.random.default_rng(4)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.normal(0, 1, (100, 64)), y_train=rng.integers(0, 3, 100),
             x_test=rng.normal(0, 1, (30, 64)), y_test=rng.integers(0, 3, 30))
    common = ["--model", fixture("bn_cnn2d_ts.onnx"), "--data", data, "--algo", "hybrid", "--quiet"]
    code, _, err = run(capsys, "train", *common, "--epochs", 2, "--out", tmp_path / "whole")
    assert code == 0, err
    code, _, err = run(capsys, "train", *common, "--epochs", 1, "--out", tmp_path / "part")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--resume", tmp_path / "part", "--epochs", 2, "--quiet")
    assert code == 0, err
    assert same_state(tmp_path / "whole" / "checkpoint.npz", tmp_path / "part" / "checkpoint.npz") == []
    assert g.input_shape == (1, 8, 8)
