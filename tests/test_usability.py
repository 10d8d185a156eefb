"""The small things users expect: --version, what metrics.json records, warnings that say once
when a flag does not apply, progress lines, `info` on exports and architectures, clear
errors for odd inputs, the README's Python, and edgedfa.fit."""

import io
import json
import os
import re
import tracemalloc

import numpy as np
import pytest

import edgedfa
from cli_helpers import run, write_npz
from edgedfa import progress
from edgedfa.data import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    data = write_npz(base / "d.npz", n_train=128, n_test=32)
    out = base / "r"
    assert edgedfa.cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    return out, data


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"edgedfa {edgedfa.__version__}"


def test_metrics_record_version_command_start_and_data(trained):
    out, data = trained
    m = json.loads((out / "metrics.json").read_text())
    assert m["version"] == edgedfa.__version__
    assert m["command"] == f"edgedfa train --data {data} --epochs 1 --quiet --out {out}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", m["start_time"])
    assert m["data"]["x_train"] == [128, 64] and m["data"]["classes"] == 10 and len(m["data"]["sha256"]) == 64
    assert m["settings"]["train"]["epochs"] == 1


@pytest.mark.parametrize("argv, warning", [
    (["--algo", "bp", "--feedback-kind", "dense"], "--feedback-kind does not apply to --algo bp"),
    (["--algo", "bp", "--feedback-values", "binary"], "--feedback-values does not apply to --algo bp"),
    (["--dataset", "shifted-digits"], "--dataset shifted-digits does not apply: --data"),
])
def test_a_flag_that_does_not_apply_is_warned_once(tmp_path, capsys, argv, warning):
    data = write_npz(tmp_path / "d.npz", n_train=64, n_test=16)
    code, _, err = run(capsys, "train", "--data", data, "--epochs", 1, "--quiet", "--out", tmp_path / "r", *argv)
    assert code == 0, err
    assert err.count(warning) == 1 and err.startswith("edgedfa: warning: ")


def test_labels_with_gaps_are_warned_and_a_model_still_trains(tmp_path, capsys):
    d = digits()
    data = write_npz(tmp_path / "d.npz", y_train=d.y_train[:300] + 250, y_test=d.y_test[:100] + 250)
    code, _, err = run(capsys, "train", "--data", data, "--epochs", 1, "--quiet", "--out", tmp_path / "r")
    assert code == 0
    assert err.count("labels are not 0..C-1 without gaps: 10 distinct labels, largest 259") == 1
    assert "260 outputs, 250 of them for labels that never occur" in err


def test_an_empty_test_split_trains_and_says_so(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz", x_test=np.zeros((0, 64)), y_test=np.zeros(0, dtype=int))
    code, out, err = run(capsys, "train", "--data", data, "--epochs", 1, "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    assert "test accuracy n/a (no test samples)" in out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test_accuracy"] is None


@pytest.mark.parametrize("content", [os.urandom(512), b"PK\x03\x04" + os.urandom(200), b""])
def test_random_bytes_are_no_checkpoint(tmp_path, capsys, content):
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(content)
    for argv in (["eval", bad], ["export", bad, "--format", "int", "-o", tmp_path / "x.onnx"], ["info", bad],
                 ["train", "--resume", tmp_path]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "not a readable checkpoint" in err and "pickle" not in err, err


def test_a_pickled_array_is_never_loaded(tmp_path, capsys):
    bad = tmp_path / "d.npz"
    np.savez(bad, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros((1, 64)),
             y_test=np.zeros(1))
    code, _, err = run(capsys, "train", "--data", bad, "--quiet", "--out", tmp_path / "r")
    assert code == 2 and "holds Python objects, which are never loaded" in err and "allow_pickle" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-5"])
def test_emulate_clock_must_be_a_finite_positive_number(trained, capsys, value):
    out, data = trained
    code, _, err = run(capsys, "emulate", out, "--data", data, "--clock-mhz", value)
    assert code == 2 and f"--clock-mhz {float(value)}: expected a number in 0.001..1000000" in err, err


def test_emulate_memory_does_not_grow_with_steps(trained):
    from edgedfa.cosim import emulate

    out, data = trained
    ds = edgedfa.data.load_npz(str(data))
    peaks = []
    for steps in (2, 12):
        tracemalloc.start()
        report = emulate(str(out / "checkpoint.npz"), ds.x_train, ds.y_train, steps, {"rows": 4, "cols": 4})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report["bit_exact"] is True and report["steps"] == steps
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_the_datapath_units_keep_nothing_per_step(trained):
    """What a long emulate holds must not grow with the steps it has run: no unit's list,
    dict or set grows from step 1 to step 3 (the MAC array kept a record of every GEMM it
    ran, read by nothing)."""
    from edgedfa.cosim.driver import CoSim
    from edgedfa.cosim.run import _load
    from hdl_models.hwconfig import hw_config

    out, data = trained
    ds = edgedfa.data.load_npz(str(data))
    model, cfg, modules, _, _ = _load(str(out / "checkpoint.npz"), None, None)
    sim = CoSim(model, cfg, modules, hw_config({"rows": 4, "cols": 4}))

    def held():
        units = {"accelerator": sim.ctl.acc, **vars(sim.ctl.acc)}
        return {(u, k): len(v) for u, unit in units.items() for k, v in getattr(unit, "__dict__", {}).items()
                if isinstance(v, (list, dict, set))}

    sizes = []
    for step in range(3):
        sim.hdl_step(ds.x_train[8 * step:8 * step + 8], ds.y_train[8 * step:8 * step + 8], step, cfg.shift_at(0))
        sizes.append(held())
    assert sizes[0] and sizes[0] == sizes[2], {k: (v, sizes[2][k]) for k, v in sizes[0].items() if v != sizes[2][k]}


def test_progress_lines_show_rate_and_time_left(trained, monkeypatch, capsys):
    out, data = trained

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for argv in (["eval", str(out), "--data", str(data)], ["emulate", str(out), "--data", str(data), "--steps", "2"],
                 ["train", "--data", str(data), "--epochs", "1", "--out", str(out.parent / "p")]):
        tty = Tty()
        monkeypatch.setattr("sys.stderr", tty)
        assert edgedfa.cli.main(argv) == 0
        text = tty.getvalue()
        assert re.search(r"[\d,]+ (samples|steps)/s, ETA \d+s", text), (argv, text)
    capsys.readouterr()


def test_progress_on_a_pipe_prints_now_and_then(monkeypatch):
    stream = io.StringIO()
    p = progress.Progress(stream=stream)
    p.update("early")
    monkeypatch.setattr(p, "last", p.last - progress.PIPE_INTERVAL)
    p.update("late")
    p.update("final", final=True)
    assert stream.getvalue() == "late\nfinal\n"
    assert progress.clock(3725) == "1h02m05s" and progress.clock(65) == "1m05s" and progress.clock(None) == "?"


@pytest.mark.parametrize("fmt", ["int", "qdq", "float"])
def test_info_describes_edgedfas_own_exports(trained, tmp_path, capsys, fmt):
    out, _ = trained
    path = tmp_path / f"{fmt}.onnx"
    assert run(capsys, "export", out, "--format", fmt, "-o", path)[0] == 0
    code, text, err = run(capsys, "info", path)
    assert code == 0 and err == ""
    assert f"edgedfa {edgedfa.__version__} export, format {fmt}" in text
    assert "dense1" in text and "W ap_fixed<8," in text.replace("'W': '", "W ")


@pytest.mark.parametrize("arch, shape", [("cnn", "[N, 1, 8, 8]"), ("gru", "[N, 8, 8]"), ("mlp", "[N, 64]")])
def test_info_previews_a_built_in_architecture(capsys, arch, shape):
    code, text, err = run(capsys, "info", "--arch", arch)
    assert code == 0 and err == ""
    assert shape in text and re.search(r"parameters: [\d,]+", text) and "integer formats at --bits 8" in text
    code, text, _ = run(capsys, "info", "--arch", arch, "--bits", "4")
    assert "ap_fixed<4," in text


def test_the_readme_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for code in blocks:
        code = code.replace('epochs=5', 'epochs=1').replace('"--epochs", "5"', '"--epochs", "1"')
        exec(compile(code, "README.md", "exec"), {})


def test_holdout_keeps_the_best_epoch_by_validation_accuracy(tmp_path, capsys):
    from cli_helpers import same_state

    data = write_npz(tmp_path / "d.npz")  # 300 training samples: 225 to train on, 75 held out
    out, short = tmp_path / "r", tmp_path / "short"
    common = ["train", "--data", data, "--holdout", "0.25", "--algo", "dfa", "--quiet"]
    code, stdout, err = run(capsys, *common, "--epochs", 4, "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    vals = [h["val_accuracy"] for h in m["history"]]
    best = vals.index(max(vals)) + 1
    assert m["best_epoch"] == best and m["best_val_accuracy"] == max(vals)
    assert m["best_test_accuracy"] == m["history"][best - 1]["test_accuracy"]
    assert f"best epoch {best} by validation accuracy" in stdout
    assert m["steps"] == 4 * 8  # 225 samples in batches of 32: the held-out ones never train
    assert run(capsys, *common, "--epochs", best, "--out", short)[0] == 0
    assert same_state(short / "checkpoint.npz", out / "best.npz") == []
