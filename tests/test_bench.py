"""``edgedfa bench``: a quick run writes a well-formed JSON report and markdown tables
(speeds are not checked here: the bench reports them), and bad options are one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from edgedfa.bench import run as bench
from edgedfa.bench import torch_ref
from edgedfa.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = (str(out / "bench.json"), str(out / "bench.md"))
    rc = main(["bench", "--quick", "--json", paths[0], "--markdown", paths[1]])
    with open(paths[0]) as fh:
        report = json.load(fh)
    with open(paths[1]) as fh:
        text = fh.read()
    return rc, report, text


def tables(text: str) -> list:
    """Markdown tables as lists of rows of cells."""
    out, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            out.append(current)
            current = []
    return out


def test_quick_run_writes_every_section(quick):
    rc, report, _ = quick
    assert rc == 0
    assert [r["workload"] for r in report["training"]] == list(bench.Options.quick_run().workloads)
    for row in report["training"]:
        for algo in ("bp", "sdfa"):
            e = row["engine"][algo]
            assert e["samples_per_second"] > 0 and len(e["repeats_samples_per_second"]) == 2
            assert e["step_peak_alloc_bytes"] > 0
        assert row["emulate"]["bit_exact"] is True and row["emulate"]["seconds_per_step"] > 0
        if "error" in row["torch"]:
            assert row["torch"]["error"] == "not installed"
        else:
            assert row["torch"]["threads"] in (1, 2) and set(row["torch"]["per_threads"]) == {"1", "2"}
            assert all(row["engine"][a]["ratio_to_torch"] > 0 for a in ("bp", "sdfa"))
    assert [tuple(r["shape"]) for r in report["gemm"]] == [(1024, 1024, 1024), (32, 784, 256), (128, 256, 256)]
    assert all(r["bit_exact"] and r["gemm"] > 0 and r["onnxruntime"] > 0 for r in report["gemm"])
    (cold,) = report["cold_start"]
    assert "error" not in cold and cold["cold_seconds"] >= cold["compile_seconds"] >= 0
    assert report["machine"]["cores"] >= 1 and report["peak_rss_bytes"] > 0
    import edgedfa  # the report names the code it measured: the package imported here

    assert report["machine"]["edgedfa_path"] == os.path.dirname(os.path.abspath(edgedfa.__file__))


def test_markdown_tables_are_well_formed(quick):
    _, report, text = quick
    found = tables(text)
    assert len(found) == 4  # training, GEMM, emulator, cold start
    for table in found:
        head, rule, *rows = table
        assert set("".join(rule)) == {"-"} and len(rule) == len(head)
        assert rows and all(len(r) == len(head) for r in rows)
    train = found[0]
    assert train[0][1:3] == ["edgedfa int8 `bp`", "edgedfa int8 `sdfa`"]
    assert len(train) == 2 + len(report["training"])
    assert report["command"] in text


def test_without_pytorch_the_engine_columns_still_print(monkeypatch, tmp_path):
    monkeypatch.setattr(torch_ref, "version", lambda: None)
    report = bench.run(bench.options(workloads=["digits-mlp"], algos=["sdfa"], sections=["train"], quick=True))
    (row,) = report["training"]
    assert row["torch"] == {"error": "not installed"} and row["engine"]["sdfa"]["samples_per_second"] > 0
    text = bench.write(report, str(tmp_path / "b.json"), None)
    assert "not installed" in text and "| digits" in text
    assert json.loads((tmp_path / "b.json").read_text())["training"][0]["torch"]["error"] == "not installed"


def test_list_names_the_workloads(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("mlp-b32", "cnn-b64", "gru-b64", "digits-lstm"))


@pytest.mark.parametrize("argv, message", [
    (["bench", "--workloads", "resnet"], "unknown workload(s) ['resnet']"),
    (["bench", "--only", "speed"], "unknown section(s) ['speed']"),
    (["bench", "--repeats", "0"], "must be positive"),
    (["bench", "--algos", "sgd"], "invalid choice"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main(argv + ["--json", str(tmp_path / "x.json"), "--markdown", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgedfa: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_the_int8_route_compared_on_and_off():
    opts = bench.options(workloads=["digits-mlp"], algos=["bp"], sections=["train"], quick=True, torch=False,
                         compare_route=True)
    report = bench.run(opts)
    e = report["training"][0]["engine"]["bp"]
    assert e["without_int8_route"]["samples_per_second"] > 0 and e["without_int8_route"]["speedup"] > 0
    heads = [t[0] for t in tables(bench.write(report, None, None))]
    assert ["workload", "`bp` with / without (speed-up)"] in heads
