"""``edgedfa report``: the files it writes and what they hold (curves counted from the data the
plots return and from the SVG), per-layer statistics read generically from the history, the
emulation plot, the sweep's Pareto front, and the summary without matplotlib."""

import json
import os
import shutil

import pytest

from edgedfa import cli
from edgedfa.errors import EdgeDFAError
from edgedfa.report import plots, write_report
from edgedfa.report.runs import FORMAT_STAT, changing, curves, layer_stats, load_run
from edgedfa.report.sweep_report import best_rows, configurations, mark_front
from edgedfa.sweep.results import RESULTS, append_row

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs; the first also emulated (its report beside the checkpoint)."""
    root = tmp_path_factory.mktemp("runs")
    for name, algo in (("bp8", "bp"), ("sdfa8", "sdfa")):
        assert cli.main(["train", "--epochs", "3", "--algo", algo, "--quiet", "--out", str(root / name)]) == 0
    assert cli.main(["emulate", str(root / "bp8"), "--json", str(root / "bp8" / "emulate.json")]) == 0
    return root


def with_history_stats(src, dst):
    """A copy of a run whose history also holds validation accuracy and nested per-layer statistics."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    for h in m["history"]:
        e = h["epoch"]
        h["val_accuracy"] = h["train_accuracy"] - 0.01
        h["tensors"] = {"dense1": {"W": {"exponent": -6 - e % 2, "clipped_fraction": 0.01 * e,
                                         "format": f"ap_fixed<8,{e}>"}},
                        "dense3": {"W": {"exponent": -5, "clipped_fraction": 0.0, "format": "ap_fixed<8,1>"}}}
        h["zero_fraction"] = {"dense1/W": 0.1, "dense3/W": 0.2 * e}
    (dst / "metrics.json").write_text(json.dumps(m))
    return dst


def test_curves_of_several_runs_share_one_chart(runs, tmp_path):
    out = tmp_path / "rep"
    result = write_report([str(runs / "bp8"), str(runs / "sdfa8")], str(out))
    c = result["curves"]
    assert (c["accuracy_curves"], c["loss_curves"]) == (4, 2)  # train + test per run; the train loss per run
    svg = (out / "curves.svg").read_text()
    assert svg.count('id="line2d_') >= 6 and "accuracy (%)" in svg and "epoch" in svg
    for f in ("curves.png", "bp8-saturation.png", "bp8-emulation.svg", "sdfa8-saturation.svg", "summary.md"):
        assert (out / f).stat().st_size > 0
    assert not (out / "sdfa8-emulation.png").exists()  # no emulation report in that run
    text = (out / "summary.md").read_text()
    for words in ("# Run report", "## bp8", "## sdfa8", "### Plan", "### Formats", "### Final figures", "ap_fixed<",
                  "cycles per step", "### config.toml",
                  "![accuracy and loss per epoch](curves.png)", "bit-exact"):
        assert words in text, words


def test_the_emulation_plot_has_a_bar_per_layer_and_phase(runs, tmp_path):
    result = write_report([str(runs / "bp8")], str(tmp_path / "rep"))
    emu = json.loads((runs / "bp8" / "emulate.json").read_text())
    info = result["runs"]["bp8"]["emulation"]
    assert info["layers"] == len({r["layer"] for r in emu["layers"]})
    assert info["bars"] == 3 * info["layers"] * info["phases"]


def test_per_layer_statistics_are_read_from_any_nested_history_table(runs, tmp_path):
    run = load_run(str(with_history_stats(runs / "bp8", tmp_path / "stats")))
    stats = layer_stats(run)
    mine = {"exponent", "clipped_fraction", f"{FORMAT_STAT} (tensors)", "zero_fraction"}
    assert mine <= set(stats)  # beside whatever statistics the engine records itself
    assert set(stats["exponent"]) == {"dense1/W", "dense3/W"}
    assert stats[f"{FORMAT_STAT} (tensors)"]["dense1/W/format"] == ([1, 2, 3], [1, 2, 3])
    assert stats["zero_fraction"]["dense3/W"][1] == pytest.approx([0.2, 0.4, 0.6])
    kept, constant = changing(stats)
    assert set(kept["exponent"]) == {"dense1/W"} and constant["exponent"] == 1  # dense3/W stays at -5
    assert "dense1/W" not in kept["zero_fraction"] and set(kept["zero_fraction"]) == {"dense3/W"}
    splits = {(c.kind, c.split) for c in curves(run)}
    assert ("accuracy", "validation") in splits and ("accuracy", "test") in splits
    result = write_report([run.path], str(tmp_path / "rep"))
    layers = result["runs"]["stats"]["layers"]
    assert (layers["panels"], layers["lines"]) == (len(kept), sum(len(v) for v in kept.values()))
    assert result["curves"]["accuracy_curves"] == 3
    assert "Constant over the run, not drawn:" in (tmp_path / "rep" / "summary.md").read_text()


def test_without_matplotlib_the_summary_is_written_and_the_error_says_how_to_install(runs, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(plots, "available", lambda: False)
    out = tmp_path / "rep"
    code = cli.main(["report", str(runs / "bp8"), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and 'pip install "edgedfa[plot]"' in err
    assert (out / "summary.md").exists() and not list(out.glob("*.png"))


def test_bad_report_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in (["report", str(tmp_path / "nope"), "-o", str(tmp_path / "o")],
                 ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("edgedfa: error:") and "\n" not in err


# --------------------------------------------------------------------------- sweeps

def row(fp, algo, bits, seed, acc, cycles, mem):
    return {"fingerprint": fp, "label": f"algo={algo} bits={bits}", "point": {"train.algo": algo, "numerics.bits": bits},
            "seed": seed, "test_accuracy": acc, "cycles_per_step": cycles, "bytes_per_step": 2 * cycles,
            "weight_memory_bits": mem, "run_dir": f"trials/{fp}"}


ROWS = [row("a0", "bp", 8, 0, 0.96, 100, 800), row("a1", "bp", 8, 1, 0.94, 100, 800),
        row("b0", "bp", 4, 0, 0.80, 100, 400), row("c0", "sdfa", 8, 0, 0.90, 60, 800),
        row("d0", "sdfa", 4, 0, 0.70, 60, 400), row("e0", "dfa", 4, 0, 0.60, 80, 400)]


def test_the_pareto_front_and_the_best_configurations():
    configs = configurations(ROWS)
    by = {c["label"]: c for c in configs}
    assert by["algo=bp bits=8"]["test_accuracy"] == pytest.approx(0.95) and by["algo=bp bits=8"]["seeds"] == [0, 1]
    mark_front(configs, "cycles_per_step")
    assert {c["label"] for c in configs if c["front"]["cycles_per_step"]} == {"algo=bp bits=8", "algo=sdfa bits=8"}
    mark_front(configs, "weight_memory_bits")
    assert {c["label"] for c in configs if c["front"]["weight_memory_bits"]} == {"algo=bp bits=8", "algo=bp bits=4"}
    best = dict((w.split(",")[0], c["label"]) for w, c in best_rows(configs))
    assert best["highest test accuracy"] == "algo=bp bits=8"


def test_the_sweep_report_plots_every_configuration_and_labels_the_front(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for r in ROWS:
        append_row(str(sweep / RESULTS), r)
    (sweep / "spec.toml").write_text('[sweep]\nobjective = "max test_accuracy"\n'
                                     'constraints = ["weight_memory_bits <= 500"]\n')
    result = write_report([str(sweep)], str(tmp_path / "rep"))
    cyc = result["plots"]["cycles_per_step"]
    assert (cyc["points"], cyc["front"]) == (5, 2) and sorted(cyc["labels"]) == ["algo=bp bits=8", "algo=sdfa bits=8"]
    svg = (tmp_path / "rep" / "pareto-cycles.svg").read_text()
    assert "algo=sdfa bits=8" in svg and "Pareto front" in svg and "emulated cycles per training step" in svg
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "max test_accuracy subject to weight_memory_bits <= 500 | algo=bp bits=4" in text
    assert "6 trial(s) in 5 configuration(s)" in text and "![accuracy against emulated cycles" in text
    lines = (tmp_path / "rep" / "configurations.csv").read_text().splitlines()
    assert len(lines) == 6 and lines[0].startswith("label,train.algo,numerics.bits,seeds")
