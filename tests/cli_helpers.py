"""Shared helpers of the command-line tests: run `edgedfa` in-process, small data files."""

import hashlib
import os

import numpy as np

from edgedfa import cli
from edgedfa.data import digits


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``edgedfa *argv``."""
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_npz(path, n_train=300, n_test=100, **over):
    """A small slice of the digits as an .npz (``over`` replaces or, with None, drops arrays)."""
    d = digits()
    arrays = {"x_train": d.x_train[:n_train], "y_train": d.y_train[:n_train], "x_test": d.x_test[:n_test],
              "y_test": d.y_test[:n_test]}
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def tree_digest(path) -> dict:
    """name -> sha256 of every file below ``path`` (mode included): to show nothing changed."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mode)
    return out


def same_state(a, b) -> list:
    """Names of the integer state arrays (model and trainer) that differ between two checkpoints."""
    from edgedfa.checkpoint import read_checkpoint

    x, y = read_checkpoint(str(a))["arrays"], read_checkpoint(str(b))["arrays"]
    return sorted(k for k in set(x) | set(y) if k not in x or k not in y or not np.array_equal(x[k], y[k]))


def check_resume_equals_whole(capsys, tmp_path, base) -> None:
    """``edgedfa train *base`` for 2 epochs into tmp_path/whole equals 1 epoch into tmp_path/part
    and a resume to 2, bit for bit."""
    assert run(capsys, "train", *base, "--epochs", 2, "--out", tmp_path / "whole")[0] == 0
    assert run(capsys, "train", *base, "--epochs", 1, "--out", tmp_path / "part")[0] == 0
    assert run(capsys, "train", "--resume", tmp_path / "part", "--epochs", 2, "--quiet")[0] == 0
    assert same_state(tmp_path / "whole", tmp_path / "part") == []


def check_norm_trains_resumes_and_exports(capsys, tmp_path, src, op: str, shape) -> None:
    """The model at ``src`` with a trained norm ``op`` (γ named ``scale``), sdfa on digits-std:
    2 epochs equal 1 and a resume bit for bit; γ moved; the int export equals the trained model
    on the test set (reshaped to ``shape``) in onnxruntime; one step through hdl_models is
    bit-exact and costs the norm unit in two phases at least."""
    import onnx
    from test_onnx_export import ort_run

    from edgedfa import load_checkpoint, load_onnx
    from edgedfa.cosim import emulate
    from edgedfa.data import digits_std
    from hdl_models.hwconfig import HwConfig

    check_resume_equals_whole(capsys, tmp_path, ["--model", src, "--dataset", "digits-std", "--algo", "sdfa",
                                                 "--quiet"])
    model = load_checkpoint(str(tmp_path / "whole"))
    index, norm = next((i, layer) for i, layer in enumerate(model.layers) if layer.op == op)
    start = load_onnx(str(src)).layers[index].params["scale"].value()
    assert np.any(norm.params["scale"].value() != start)
    code, out, _ = run(capsys, "export", tmp_path / "whole", "--format", "int", "-o", tmp_path / "int.onnx")
    assert code == 0 and "int: bit-exact" in out
    x, y = digits_std().x_test, digits_std().y_test
    assert np.array_equal(ort_run(onnx.load(str(tmp_path / "int.onnx")), x.reshape((-1,) + tuple(shape))),
                          model.run(x))
    r = emulate(model, x[:32], y[:32], 1, HwConfig(rows=4, cols=4))
    assert r["bit_exact"], r["first_mismatch"]
    phases = {entry["phase"]: entry["cycles"] for entry in r["layers"] if entry["layer"] == norm.name}
    assert len(phases) >= 2 and all(c > 0 for c in phases.values()), phases
