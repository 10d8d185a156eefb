"""The bench's PyTorch column is timed in a child process: ``torch`` never enters the bench's
own process, one child serves the whole run, and a child that fails, exits or hangs gives the
column a one-line reason while the engine's columns still print. A fake child (the real
protocol, ``torch_child.serve``, with sides that sleep instead of training) stands in for
PyTorch, so these run without it; the real child is checked too where PyTorch is installed.
No speed is checked here."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from edgedfa.bench import run as bench
from edgedfa.bench import torch_ref
from edgedfa.cli import main

FAKE_CHILD = """
import json, os, sys, time
from edgedfa.bench import timing, torch_child
from edgedfa.errors import EdgeDFAError

mode, log = sys.argv[1], sys.argv[2]

def build(graph, x, y, batch):
    with open(log, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "nodes": len(graph["nodes"]), "x": list(x.shape),
                             "dtype": str(x.dtype), "y": len(y), "batch": batch}) + "\\n")
    if mode == "refuse":
        raise EdgeDFAError("dense1: op Dense is not mirrored in PyTorch")
    if mode == "crash-on-load":
        sys.stderr.write("fake child: cannot load\\n")
        sys.stderr.flush()
        os._exit(3)

    def step(i):
        if mode == "crash-on-run":
            print("fake child: stray output")  # to stderr: were it a reply line, the message would differ
            sys.stderr.write("fake child: boom\\n")
            sys.stderr.flush()
            os._exit(4)
        time.sleep(60 if mode == "hang" else 0.001)

    return {f"torch-{t}": timing.Side(step) for t in (1, 2)}

torch_child.main(build, lambda: f"fake {os.getpid()}")
"""


@pytest.fixture
def fake_child(tmp_path, monkeypatch):
    """``use(mode)`` makes the bench start the fake child; ``loads()`` what it was given."""
    script, log = tmp_path / "fake_child.py", tmp_path / "loads.jsonl"
    script.write_text(FAKE_CHILD)
    monkeypatch.setattr(torch_ref, "version", lambda: "fake")

    def use(mode):
        monkeypatch.setattr(torch_ref, "COMMAND", (sys.executable, str(script), mode, str(log)))

    def loads():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return use, loads


def bench_run(workloads=("digits-mlp",)) -> dict:
    return bench.run(bench.options(workloads=list(workloads), algos=["sdfa"], sections=["train"], quick=True))


def assert_gone(pids) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_one_child_times_the_column_of_every_workload(fake_child):
    use, loads = fake_child
    use("ok")
    report = bench_run(("digits-mlp", "digits-gru"))
    assert "torch" not in sys.modules
    seen = loads()
    assert [s["nodes"] for s in seen] == [5, 3] and len({s["pid"] for s in seen}) == 1
    assert [s["dtype"] for s in seen] == ["float32", "float32"] and seen[1]["x"][1:] == [8, 8]
    for row, s in zip(report["training"], seen):
        t = row["torch"]
        assert t["version"] == f"fake {s['pid']}" and row["batch"] == s["batch"] and s["x"][0] == s["y"]
        assert t["threads"] in (1, 2) and set(t["per_threads"]) == {"1", "2"} and t["samples_per_second"] > 0
        assert len(t["repeats_samples_per_second"]) == 2 and row["engine"]["sdfa"]["ratio_to_torch"] > 0
    assert_gone({s["pid"] for s in seen})
    assert "PyTorch timed in a process of its own" in bench.write(report, None, None)


@pytest.mark.parametrize("mode, message", [
    ("crash-on-load", "PyTorch child exited with status 3: fake child: cannot load"),
    ("crash-on-run", "PyTorch child exited with status 4: fake child: boom"),
    ("hang", "PyTorch child gave no answer in 1 s (killed)"),
    ("refuse", "dense1: op Dense is not mirrored in PyTorch"),
])
def test_a_failing_child_is_a_one_line_reason(fake_child, monkeypatch, tmp_path, capsys, mode, message):
    use, loads = fake_child
    use(mode)
    monkeypatch.setattr(torch_ref, "TIMEOUT", 1.0)
    paths = [str(tmp_path / "b.json"), str(tmp_path / "b.md")]
    argv = ["bench", "--quick", "--only", "train", "--workloads", "digits-mlp", "digits-cnn", "--algos", "sdfa"]
    assert main(argv + ["--json", paths[0], "--markdown", paths[1]]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    rows = json.loads(open(paths[0]).read())["training"]
    for row in rows:  # every workload asks again: a new child after a failure
        assert row["torch"] == {"error": message} and row["engine"]["sdfa"]["samples_per_second"] > 0
    table = [line for line in out.splitlines() if line.startswith("| digits")]
    assert len(table) == 2 and all(f"| {message} |" in line for line in table)
    assert len(loads()) == 2
    assert_gone({s["pid"] for s in loads()})


def test_a_child_that_cannot_start_is_a_one_line_reason(monkeypatch):
    monkeypatch.setattr(torch_ref, "version", lambda: "fake")
    monkeypatch.setattr(torch_ref, "COMMAND", (os.path.join(os.sep, "nonexistent", "python"),))
    (row,) = bench_run()["training"]
    assert row["torch"]["error"].startswith("PyTorch child could not be started (")
    assert row["engine"]["sdfa"]["samples_per_second"] > 0


def test_no_temporary_files_are_left(fake_child, monkeypatch):
    use, _ = fake_child
    use("ok")
    made = []
    real = torch_ref.Child.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self._tmp.name)

    monkeypatch.setattr(torch_ref.Child, "__init__", spy)
    bench_run()
    assert len(made) == 1 and not os.path.exists(made[0])


def test_describe_is_plain_json_of_the_graph():
    from edgedfa.bench.workloads import WORKLOADS, dataset, graph

    w = WORKLOADS["cnn-b64"]
    d = torch_ref.describe(graph(w, dataset(w)))
    assert json.loads(json.dumps(d)) == d
    conv = d["nodes"][0]
    assert conv["op"] == "Conv" and conv["params"] == {"W": [32, 1, 3, 3], "B": [32]}
    assert conv["attrs"]["pads"] == [1, 1, 1, 1] and d["output_name"] == d["nodes"][-1]["outputs"][0]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed: the fake child above covers the protocol")
def test_the_real_child_keeps_torch_out_of_the_bench_process():
    if "torch" in sys.modules:
        pytest.skip("torch was imported before this test by something else")
    report = bench_run(("digits-mlp", "digits-gru"))
    assert "torch" not in sys.modules
    for row in report["training"]:
        t = row["torch"]
        assert "error" not in t, t
        assert t["samples_per_second"] > 0 and t["threads"] in (1, 2) and t["version"] == report["machine"]["torch"]
