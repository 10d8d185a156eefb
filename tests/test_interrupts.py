"""Interrupts lose at most the current batch: the state after the last finished batch is saved
(checkpoint, metrics, model.onnx), the exit status is 130, and resuming gives the weights of
an uninterrupted run, wherever the interrupt fell."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import run, same_state, write_npz
from edgedfa import session


class StopAfter:
    """should_stop() that says yes once ``n`` batches are done (it is asked once before the first
    batch, then after every batch)."""

    def __init__(self, n):
        self.n, self.calls = n, -1

    def __call__(self):
        self.calls += 1
        return self.calls >= self.n


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", n_train=200, n_test=50)  # 160 to train: 5 batches


@pytest.fixture(scope="module")
def momentum(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "m.toml"
    cfg.write_text("[numerics]\nmomentum_shift = 3\n")  # a layer state (velocity) to carry over
    return cfg


def _flags(data, momentum, arch):
    return {"model": {"arch": arch}, "data": {"path": str(data), "holdout": 0.2},
            "train": {"epochs": 3, "algo": "dfa"}}, str(momentum)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, momentum):
    outs = {}
    for arch in ("mlp", "cnn"):
        doc, cfg = _flags(data, momentum, arch)
        out = tmp_path_factory.mktemp("ref") / arch
        assert session.train(session.Request(doc, cfg, str(out), quiet=True)).status == "done"
        outs[arch] = out
    return outs


@pytest.mark.parametrize("arch, stop_at", [("mlp", 1), ("mlp", 3), ("mlp", 5), ("mlp", 6), ("mlp", 14),
                                           ("cnn", 2), ("cnn", 10)])
def test_a_run_interrupted_anywhere_resumes_to_the_same_bits(tmp_path, capsys, data, momentum, reference,
                                                             arch, stop_at):
    doc, cfg = _flags(data, momentum, arch)
    out = tmp_path / "r"
    outcome = session.train(session.Request(doc, cfg, str(out), quiet=True, should_stop=StopAfter(stop_at)))
    assert outcome.status == "interrupted"
    it = outcome.metrics["interrupted"]
    assert it["batches"] == 5 and it["step"] == stop_at and it["batch"] == stop_at % 5
    assert {"checkpoint.npz", "metrics.json", "model.onnx", "config.toml"} <= set(os.listdir(out))
    code, _, err = run(capsys, "train", "--resume", out, "--quiet")
    assert code == 0, err
    assert same_state(reference[arch] / "checkpoint.npz", out / "checkpoint.npz") == []
    assert same_state(reference[arch] / "best.npz", out / "best.npz") == []
    ref, got = (json.loads((d / "metrics.json").read_text()) for d in (reference[arch], out))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]] == strip
    assert got["steps"] == ref["steps"] and got["saturation"] == ref["saturation"]


def test_describe_an_interrupt_names_the_files_and_the_resume_command(tmp_path, data, momentum):
    doc, cfg = _flags(data, momentum, "mlp")
    out = tmp_path / "r"
    outcome = session.train(session.Request(doc, cfg, str(out), quiet=True, should_stop=StopAfter(2)))
    lines = session.describe_outcome(outcome)
    assert lines[0].startswith("interrupted at epoch 1, batch 2 of 5 (step 2): saved ")
    assert os.path.join(str(out), "model.onnx") in lines[0] and lines[1] == f"resume with: edgedfa train --resume {out}"


def test_a_stop_before_training_leaves_nothing(tmp_path, data):
    out = tmp_path / "r"
    with pytest.raises(session.Interrupted):
        session.train(session.Request({"data": {"path": str(data)}}, out=str(out), quiet=True,
                                      should_stop=lambda: True))
    assert not out.exists()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc; elsewhere the wall clock)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return time.monotonic()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_batch_and_exits_130(tmp_path, data, sig):
    """A real process: the signal arrives in the middle of epoch 2 (batch size 1: 200 steps an epoch)."""
    out, ref = tmp_path / "r", tmp_path / "ref"
    schedule = tmp_path / "s.toml"  # one schedule for the 50-epoch run stopped early and the short reference
    schedule.write_text("[train]\nlr_decay_epochs = []\n")
    common = [sys.executable, "-m", "edgedfa.cli", "train", "--data", str(data), "--batch-size", "1", "--quiet",
              "--config", str(schedule)]
    proc = subprocess.Popen(common + ["--epochs", "50", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # epoch 1 is saved; let the process work into epoch 2 by its own CPU time, not the clock's:
    # on a loaded machine 0.3 s of waiting could pass before it ran a batch of epoch 2, and the
    # signal then stopped it at the epoch boundary (batch 0)
    start = _cpu_seconds(proc.pid)
    while _cpu_seconds(proc.pid) < start + 0.1 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "stopping after this batch" in err and f"resume with: edgedfa train --resume {out}" in err
    assert "Traceback" not in err
    it = json.loads((out / "metrics.json").read_text())["interrupted"]
    assert (out / "model.onnx").exists() and it["batch"] > 0
    total = str(it["epoch"])  # finish the interrupted epoch, as a run of that many epochs would
    assert subprocess.run(common[:3] + ["train", "--resume", str(out), "--epochs", total, "--quiet"]).returncode == 0
    assert subprocess.run(common + ["--epochs", total, "--out", str(ref)]).returncode == 0
    assert same_state(ref / "checkpoint.npz", out / "checkpoint.npz") == []


def test_the_console_script_loads_nothing_slow_before_main():
    """The `edgedfa` script imports edgedfa.cli and calls main(): no numpy, numba or onnx is
    loaded before main's Ctrl-C handler is in place (a SIGINT during numpy's import printed a
    traceback instead of "edgedfa: interrupted")."""
    code = "import sys, edgedfa.cli; print(sorted(m for m in ('numpy', 'numba', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_interrupt_while_a_command_loads_exits_130_without_a_traceback(monkeypatch, capsys):
    from edgedfa import cli

    def slow_import(argv):
        raise KeyboardInterrupt  # as a Ctrl-C during the command's first (numpy) import raises it

    monkeypatch.setattr(cli, "_run", slow_import)
    assert cli.main(["train"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "edgedfa: interrupted"
