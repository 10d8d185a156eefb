"""The model zoo's fast subset: PyTorch-initialised modules exported by both exporters,
trained from the ONNX files with defaults only (a few epochs, loose floors; the full zoo is
``tools/zoo.py``, its table in docs/benchmarks.md)."""

import json
import os

import numpy as np
import pytest

from cli_helpers import run
from edgedfa import data, load_onnx
from edgedfa.numerics import Numerics

ZOO = os.path.join(os.path.dirname(__file__), "fixtures", "zoo")

# (file stem, dataset, algo, epochs, floor): the floors sit well under what these few epochs
# reach (measured: 0.955, 0.733, 0.320) and well over chance (0.1, 0.167, 0.1)
FAST = [("mlp-digits-std", "digits-std", "sdfa", 3, 0.85),
        ("cnn1d-signal", "signal", "hybrid", 2, 0.5),
        ("gru-digits-seq", "digits-seq", "hybrid", 2, 0.2)]


@pytest.mark.parametrize("stem, dataset, algo, epochs, floor", FAST, ids=[f[0] for f in FAST])
def test_an_exported_module_trains_with_defaults(tmp_path, capsys, stem, dataset, algo, epochs, floor):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", os.path.join(ZOO, f"{stem}-s0-ts.onnx"), "--dataset", dataset,
                       "--algo", algo, "--epochs", epochs, "--quiet", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_accuracy"] >= floor, m["history"]
    at_rails = [v["fraction_at_limit"] for layer in m["saturation"].values() for v in layer.values()]
    assert max(at_rails) < 0.01  # adaptive exponents: nothing pinned at a rail


@pytest.mark.parametrize("stem", [f[0] for f in FAST])
def test_both_exporters_give_the_same_integer_model(stem):
    ts, dyn = (load_onnx(os.path.join(ZOO, f"{stem}-s0-{e}.onnx"), numerics=Numerics()) for e in ("ts", "dynamo"))
    assert ts.input_shape == dyn.input_shape and ts.n_classes == dyn.n_classes
    for model in (ts, dyn):
        assert {layer.op for layer in model.layers if layer.trainable} <= {"Dense", "Conv", "GRU"}
    codes = [sorted(np.concatenate([t.codes.ravel() for l in m.layers for t in l.params.values()])) for m in (ts, dyn)]
    assert np.array_equal(codes[0], codes[1])


def test_the_zoo_datasets_are_what_their_documentation_says():
    sig = data.signal()
    assert sig.x_train.shape == (3000, 128) and sig.x_test.shape == (1000, 128)
    assert np.bincount(sig.y_train).tolist() == [500] * 6 and np.bincount(sig.y_test).tolist() == [1000 // 6 + (i < 4) for i in range(6)]
    assert abs(sig.x_train.mean()) < 1e-9 and abs(sig.x_train.std() - 1) < 1e-9
    std = data.digits_std()
    assert np.allclose(std.x_train.mean(axis=0), 0) and std.x_train.shape == (1438, 64)
    seq = data.digits_seq()
    assert seq.x_train.shape == (1438, 64, 1) and abs(seq.x_train.std() - 1) < 1e-9
    assert np.array_equal(data.signal().x_train, sig.x_train)  # deterministic
