"""The command line: contract flags and outputs, bad input as one line and status 2, resume."""

import json
import os
import platform

import numpy as np
import pytest

from cli_helpers import run, write_npz
from edgedfa.checkpoint import load_checkpoint
from edgedfa.data import digits


def test_train_writes_contract_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--epochs", 2, "--quiet", "--out", out, "--seed", 3)
    assert code == 0, err
    assert "test accuracy" in stdout and err == ""
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "history", "samples_per_second", "algo", "seed", "formats",
                "saturation"):
        assert key in m
    assert 0 <= m["test_accuracy"] <= 1 and m["algo"] == "sdfa" and m["seed"] == 3
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert all({"train_accuracy", "test_accuracy", "seconds"} <= set(h) for h in m["history"])
    code, stdout, _ = run(capsys, "eval", out / "checkpoint.npz", "--json", tmp_path / "e.json")
    assert code == 0
    assert json.loads((tmp_path / "e.json").read_text())["test_accuracy"] == pytest.approx(m["test_accuracy"])


@pytest.mark.parametrize("momentum", [False, True])
def test_resume_equals_uninterrupted(tmp_path, capsys, momentum):
    a, b = tmp_path / "a", tmp_path / "b"
    extra = []
    if momentum:
        (tmp_path / "m.toml").write_text("[numerics]\nmomentum_shift = 3\n")
        extra = ["--config", tmp_path / "m.toml"]
    assert run(capsys, "train", "--epochs", 3, "--quiet", "--out", a, "--algo", "dfa", *extra)[0] == 0
    assert run(capsys, "train", "--epochs", 1, "--quiet", "--out", b, "--algo", "dfa", *extra)[0] == 0
    assert run(capsys, "train", "--resume", b, "--epochs", 3, "--quiet")[0] == 0
    ma, mb = load_checkpoint(a), load_checkpoint(b)
    for k, v in ma.state_arrays().items():
        assert np.array_equal(v, mb.state_arrays()[k]), k
    assert json.loads((b / "metrics.json").read_text())["steps"] == json.loads((a / "metrics.json").read_text())["steps"]


def test_user_data_reshaped_to_model_input(tmp_path, capsys):
    d = digits()
    # train and test may even differ in shape: both are reshaped to the model input
    p = write_npz(tmp_path / "d.npz", x_train=d.x_train[:300].reshape(-1, 8, 8), x_test=d.x_test[:100])
    code, _, err = run(capsys, "train", "--data", p, "--arch", "cnn", "--epochs", 1, "--quiet", "--out", tmp_path / "r")
    assert code == 0, err


@pytest.mark.parametrize("over,message", [
    ({"y_test": None}, "missing key(s) y_test"),
    ({"x_train": np.full((300, 64), np.nan)}, "NaN or infinite"),
    ({"y_train": np.full(300, 1.5)}, "integer class labels"),
    ({"y_train": np.full(300, -1)}, "label -1"),
    ({"y_train": np.zeros(10, dtype=int)}, "expected (300,)"),
    ({"x_test": np.zeros((100, 63))}, "have 64 values but x_test samples (63,) have 63"),
])
def test_bad_data_is_one_clear_line(tmp_path, capsys, over, message):
    p = write_npz(tmp_path / "bad.npz", **over)
    code, _, err = run(capsys, "train", "--data", p, "--epochs", 1, "--quiet", "--out", tmp_path / "r")
    assert code == 2
    assert err.startswith("edgedfa: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--arch", "nope"], "invalid choice"),
    (["train", "--bits", "1"], "--bits 1"),
    (["train", "--epochs", "x"], "invalid int"),
    (["eval", "/no/such/ckpt.npz"], "no such checkpoint"),
    (["info", "/no/such/file.onnx"], "file.onnx"),
    (["train", "--config", "/no/such.toml"], "no such config file"),
])
def test_bad_arguments(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("edgedfa: error: ") and message in err


def test_bad_config_keys(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[numerics]\nweight_bitz = 4\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", 1, "--out", tmp_path / "r")
    assert code == 2 and "weight_bitz" in err
    cfg.write_text("[layers.nosuch]\nweight_bits = 4\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", 1, "--out", tmp_path / "r2")
    assert code == 2 and "nosuch" in err
    cfg.write_text("[numerics]\nupdate_rounding = 'AP_NOPE'\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", 1, "--out", tmp_path / "r3")
    assert code == 2 and "AP_NOPE" in err


def test_config_sets_formats_and_modules(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[numerics]
bits = 8
[layers.dense3]
weight_bits = 12
[train]
lr_shift = 5
[[modules]]
nodes = ["dense1", "relu2"]
source = "dfa"
feedback = { kind = "sparse", k = 2, values = "binary" }
[[modules]]
nodes = ["dense3", "relu4", "dense5"]
""")
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", 1, "--quiet", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["formats"]["dense3"]["W"].startswith("ap_fixed<12,")
    assert m["plan"][0]["feedback"]["kind"] == "sparse" and m["plan"][0]["feedback"]["k"] == 2
    assert m["plan"][1]["source"] == "output"
    assert m["algo"] == "config"  # the plan came from [[modules]], not from --algo


def test_config_inside_dfa_trains_and_names_a_bad_error_source(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[[modules]]
name = "body"
nodes = ["conv1", "relu2", "maxpool3", "conv4", "relu5", "maxpool6"]
source = "bp"
inside = "dfa"
inside_feedback = { kind = "dilated", k = 3, values = "binary" }
[[modules]]
nodes = ["flatten7", "dense8"]
""")
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--arch", "cnn", "--config", cfg, "--epochs", 1, "--quiet", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert [(p["module"], p["error_from"]) for p in m["plan"]] == [
        ("body.0", "maxpool6_out"), ("body", None), ("m1", None)]
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[[modules]]
nodes = ["conv1", "relu2", "maxpool3"]
error_from = "relu9_out"
[[modules]]
nodes = ["conv4", "relu5", "maxpool6", "flatten7", "dense8"]
""")
    code, _, err = run(capsys, "train", "--arch", "cnn", "--config", bad, "--epochs", 1, "--quiet",
                       "--out", tmp_path / "r2")
    assert code == 2 and "relu9_out" in err and "Traceback" not in err


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "train", "--epochs", 1, "--quiet", "--out", out)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, _, err = run(capsys, "train", "--epochs", 1, "--quiet", "--out", out)
    assert code == 2 and "--resume" in err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    from edgedfa import checkpoint as train_mod

    path = tmp_path / "checkpoint.npz"
    train_mod.atomic_savez(str(path), a=np.arange(3))
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.np, "savez", boom)
    with pytest.raises(OSError):
        train_mod.atomic_savez(str(path), a=np.arange(4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_corrupt_checkpoint(tmp_path, capsys):
    p = tmp_path / "checkpoint.npz"
    p.write_bytes(b"not a zip")
    code, _, err = run(capsys, "eval", p)
    assert code == 2 and "not a readable checkpoint" in err


def test_labels_beyond_the_model_outputs():
    from edgedfa.data import check_labels
    from edgedfa.errors import EdgeDFAError

    d = digits()
    d.y_test = d.y_test.copy()
    d.y_test[0] = 12
    with pytest.raises(EdgeDFAError, match="y_test has label 12 but the model has 10 outputs"):
        check_labels(d, 10, "data")


def test_conv_layer_options_and_feedback_kind(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[layers.conv4]\nbackward = "group"\nbackward_groups = 4\n')
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--arch", "cnn", "--algo", "modular", "--feedback-kind", "dilated",
                       "--feedback-values", "binary", "--config", cfg, "--epochs", 1, "--quiet", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert [p["feedback"]["kind"] for p in m["plan"][:-1]] == ["dilated", "dilated"]
    model = load_checkpoint(out)
    assert model.layer("conv4").backward_mode == "group"


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "onnx")


def test_info_lists_layers_shapes_and_formats(capsys):
    code, out, err = run(capsys, "info", os.path.join(FIXTURES, "gru_dynamo.onnx"))
    assert code == 0, err
    assert "GRU" in out and "[N, 8, 6]" in out and "R ap_fixed<8," in out


def test_info_names_every_unsupported_op(tmp_path, capsys):
    import onnx
    import onnx.helper as h

    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])
    g = h.make_graph([h.make_node("Sin", ["x"], ["t"], name="sine_1"),
                      h.make_node("Softsign", ["t"], ["y"], name="soft_2")], "g", [x], [y])
    p = tmp_path / "bad.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(p))
    code, out, err = run(capsys, "info", p)
    assert code == 2 and err.startswith("edgedfa: error: ") and err.count("\n") == 1
    assert "sine_1" in err and "soft_2" in err and "! sine_1" in out


def test_checkpoint_of_an_imported_model_with_slashes_in_node_names(tmp_path, capsys):
    """TorchScript names nodes like '/rnn/GRU': checkpoints must round-trip them."""
    rng = np.random.default_rng(0)
    p = tmp_path / "g.npz"
    np.savez(p, x_train=rng.normal(size=(64, 48)), y_train=rng.integers(0, 4, 64),
             x_test=rng.normal(size=(16, 8, 6)), y_test=rng.integers(0, 4, 16))
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--model", os.path.join(FIXTURES, "gru_ts.onnx"), "--data", p,
                       "--algo", "hybrid", "--epochs", 1, "--quiet", "--out", out)
    assert code == 0, err
    model = load_checkpoint(out)
    assert any("/" in n.name for n in model.graph.nodes)
    assert run(capsys, "eval", out / "checkpoint.npz", "--data", p)[0] == 0
    code, _, err = run(capsys, "emulate", out / "checkpoint.npz", "--data", p, "--json", tmp_path / "e.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["bit_exact"] is True


def test_every_kernel_backend_is_a_choice_and_trains_the_same_bits(tmp_path, capsys):
    from edgedfa import cli, kernels

    assert sorted(cli.KERNEL_BACKENDS) == sorted(kernels.BACKENDS)
    write_npz(tmp_path / "d.npz", n_train=96, n_test=32)
    for backend in kernels.BACKENDS:
        code, _, err = run(capsys, "train", "--epochs", 1, "--quiet", "--data", tmp_path / "d.npz",
                           "--backend", backend, "--out", tmp_path / backend)
        assert code == 0, err
    ref = load_checkpoint(tmp_path / "reference").state_arrays()
    for backend in ("fast", "int8"):
        got = load_checkpoint(tmp_path / backend).state_arrays()
        assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref), backend


def test_every_command_holds_freed_memory(monkeypatch, capsys):
    """The CLI keeps freed memory before any command runs (numpy's large temporaries reused)."""
    from edgedfa import cli, memory

    calls = []
    monkeypatch.setattr(memory, "hold_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["--version"]) == 0
    assert calls == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_hold_freed_memory_applies_under_glibc():
    from edgedfa import memory

    assert memory.hold_freed_memory() is True


def test_info_shows_an_imported_models_input_stage(tmp_path, capsys):
    """A model that standardises its own input before a padded Conv: info on the ONNX file and
    on a checkpoint trained from it name the input stage."""
    model = os.path.join(FIXTURES, "input_stage_cnn_ts.onnx")
    code, out, err = run(capsys, "info", model)
    assert code == 0 and "input stage: x * scale[72] + offset[72]" in out, err
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.normal(size=(64, 72)), y_train=rng.integers(0, 3, 64),
             x_test=rng.normal(size=(16, 72)), y_test=rng.integers(0, 3, 16))
    code, _, err = run(capsys, "train", "--model", model, "--data", p, "--epochs", 1, "--quiet",
                       "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = run(capsys, "info", tmp_path / "r")
    assert code == 0 and "input stage: x * scale[72] + offset[72] before the input format" in out, err


def test_python_dash_m_edgedfa_is_the_command_line(tmp_path):
    """``python -m edgedfa`` runs the same command line as the ``edgedfa`` script (it failed:
    no ``__main__`` module); a bad option exits 2 with argparse's message, not a traceback."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok = subprocess.run([sys.executable, "-m", "edgedfa", "--version"], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip()
    bad = subprocess.run([sys.executable, "-m", "edgedfa", "train", "--no-such-option"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "no-such-option" in bad.stderr and "Traceback" not in bad.stderr
