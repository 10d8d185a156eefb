"""The CLI path of the export: train, then export; onnxruntime reproduces `edgedfa eval`'s logits."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgedfa
from edgedfa.cli import main
from edgedfa.data import BUILTIN
from edgedfa.float_ref import run_float


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})[0]


@pytest.fixture(scope="module")
def digits():
    ds = BUILTIN["digits"]()
    assert np.array_equal(ds.x_test.astype(np.float32), ds.x_test)  # float32 inputs: the exact case
    return ds


@pytest.mark.parametrize("arch_name", ["cnn", "mlp"])
def test_train_then_int_export_equals_eval_bit_for_bit(tmp_path, capsys, digits, arch_name):
    run = tmp_path / "run"
    assert main(["train", "--arch", arch_name, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "int.onnx"
    assert main(["export", str(run / "checkpoint.npz"), "--format", "int", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int: bit-exact" in printed
    model = edgedfa.load_checkpoint(str(run))
    x = digits.x_test.reshape((-1,) + model.input_shape)
    y = _ort(out, x)
    assert np.array_equal(y, model.run(x))
    eval_json = tmp_path / "eval.json"
    assert main(["eval", str(run), "--json", str(eval_json)]) == 0
    accuracy = json.loads(eval_json.read_text())["test_accuracy"]
    assert (y.argmax(axis=1) == digits.y_test).mean() == accuracy
    onnx.checker.check_model(onnx.load(str(out)))
    float_file = run / "model.onnx"  # written by every `edgedfa train`
    graph = model.to_graph()
    assert np.abs(_ort(float_file, x) - run_float(graph, x)).max() <= 1e-5 * np.abs(run_float(graph, x)).max()


def test_gru_checkpoint_exports_every_format(tmp_path, capsys, digits):
    run = tmp_path / "run"
    assert main(["train", "--arch", "gru", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    model = edgedfa.load_checkpoint(str(run))
    x = digits.x_test.reshape((-1,) + model.input_shape)
    for fmt in ("float", "qdq", "int"):
        out = tmp_path / f"{fmt}.onnx"
        assert main(["export", str(run), "--format", fmt, "-o", str(out)]) == 0
        y = _ort(out, x)
        if fmt == "float":
            ref = run_float(model.to_graph(), x)
            assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
        elif fmt == "int":
            assert "int: bit-exact" in capsys.readouterr().out
            assert np.array_equal(y, model.run(x))
