"""Sweep specs: parsing, errors naming the key, planned trials and their fingerprints, the
random draws, and the results file (appended whole, a torn last line dropped)."""

import json
import textwrap

import pytest

from edgedfa.errors import EdgeDFAError
from edgedfa.sweep import results
from edgedfa.sweep.search import random_points
from edgedfa.sweep.spec import grid_points, load_spec, parse_spec, plan


def spec_file(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


GRID = """
    [sweep]
    seeds = 2
    [base.model]
    arch = "mlp"
    [base.train]
    epochs = 1
    [axes]
    "train.algo" = ["bp", "sdfa"]
    numerics.bits = [4, 8]
    """


def test_a_grid_crosses_axes_and_seeds_first_axis_slowest(tmp_path):
    spec = load_spec(spec_file(tmp_path, GRID))
    trials = plan(spec, grid_points(spec))
    assert [(t["point"]["train.algo"], t["point"]["numerics.bits"], t["seed"]) for t in trials] == [
        ("bp", 4, 0), ("bp", 4, 1), ("bp", 8, 0), ("bp", 8, 1),
        ("sdfa", 4, 0), ("sdfa", 4, 1), ("sdfa", 8, 0), ("sdfa", 8, 1)]
    t = trials[5]
    assert t["settings"] == {"model": {"arch": "mlp"}, "train": {"epochs": 1, "algo": "sdfa", "seed": 1},
                             "numerics": {"bits": 4}}
    assert t["label"] == "algo=sdfa bits=4" and t["files"] == {}
    assert len({t["fingerprint"] for t in trials}) == 8


def test_fingerprints_follow_what_decides_the_figures(tmp_path):
    spec = load_spec(spec_file(tmp_path, GRID))
    a = plan(spec, grid_points(spec))
    defaults = load_spec(spec_file(tmp_path, GRID.replace('arch = "mlp"', 'arch = "mlp"\n    [base.data]\n'
                                                         '    dataset = "digits"'), "d.toml"))
    assert [t["fingerprint"] for t in plan(defaults, grid_points(defaults))] == [t["fingerprint"] for t in a]
    again = plan(load_spec(spec_file(tmp_path, GRID.replace("numerics.bits", '"numerics.bits"'), "b.toml")),
                 grid_points(spec))
    assert [t["fingerprint"] for t in a] == [t["fingerprint"] for t in again]  # same settings, other file
    more_epochs = load_spec(spec_file(tmp_path, GRID.replace("epochs = 1", "epochs = 2"), "c.toml"))
    assert not {t["fingerprint"] for t in a} & {t["fingerprint"] for t in plan(more_epochs, grid_points(more_epochs))}


def test_named_tables_set_several_settings_together(tmp_path):
    spec = load_spec(spec_file(tmp_path, """
        [axes]
        "model.arch" = ["mlp", "cnn"]
        algorithm = [{ name = "bp", "train.algo" = "bp" },
                     { name = "sdfa k=4", train = { algo = "sdfa", feedback_sparsity = 4 } },
                     { "train.algo" = "hybrid" }]
        """))
    trials = plan(spec, grid_points(spec))
    assert [t["label"] for t in trials] == ["mlp bp", "mlp sdfa k=4", "mlp algo=hybrid",
                                            "cnn bp", "cnn sdfa k=4", "cnn algo=hybrid"]
    assert trials[4]["settings"] == {"model": {"arch": "cnn"}, "train": {"algo": "sdfa", "feedback_sparsity": 4,
                                                                        "seed": 0}}


def test_paths_are_relative_to_the_spec_and_hashed(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.npz").write_bytes(b"not really an npz")
    spec = load_spec(spec_file(tmp_path, '[base.data]\npath = "d/x.npz"\n'))
    (t,) = plan(spec, grid_points(spec))
    assert t["settings"]["data"]["path"] == str(tmp_path / "d" / "x.npz")
    assert len(t["files"]["data.path"]) == 64
    (tmp_path / "d" / "x.npz").write_bytes(b"other bytes")
    other = load_spec(spec_file(tmp_path, '[base.data]\npath = "d/x.npz"\n', "b.toml"))
    assert plan(other, grid_points(other))[0]["fingerprint"] != t["fingerprint"]  # the contents count


@pytest.mark.parametrize("text, words", [
    ("[sweeps]\n", "unknown section(s) ['sweeps']"),
    ("[base]\nepochs = 3\n", "[base]: unknown key(s) ['epochs']"),
    ("[base.train]\neppochs = 3\n", "[base] [train]: unknown key 'eppochs'"),
    ("[axes]\n\"train.algo\" = []\n", "[axes] train.algo: expected a non-empty list"),
    ("[axes]\n\"train.algo\" = [\"bp\", \"bp\"]\n", "must be distinct"),
    ("[axes]\nbits = [4, 8]\n", "'bits' is not a setting"),
    ("[axes]\n\"layers.weight_bits\" = [4, 8]\n", "'layers.weight_bits' is not a setting"),
    ("[axes]\n\"train.lr_shift\" = { low = 3, high = 6 }\n", "need method = \"random\" or \"optuna\""),
    ("[axes]\na = [{ \"train.algo\" = \"bp\" }]\nb = [{ \"train.algo\" = \"dfa\" }]\n",
     "'train.algo' is set by both 'a' and 'b'"),
    ("[sweep]\nmethod = \"optuna\"\ntrials = 4\n", "needs an objective"),
    ("[sweep]\nobjective = \"max accuracy\"\n", "'accuracy' is not a figure of a trial"),
    ("[sweep]\nconstraints = [\"weight_memory_bits < 9\"]\n", "expected \"FIELD <= NUMBER\""),
    ("[sweep]\nseeds = [1, 1]\n", "seeds must be"),
    ("[base.model]\narch = \"mlp\"\nonnx = \"m.onnx\"\n", "arch and onnx exclude each other"),
    ("[axes]\n\"train.epochs\" = [1, -1]\n", "[axes] train.epochs [train]: epochs = -1"),
    ("[axes]\n\"hardware.array\" = [\"8x8\", \"8by8\"]\n", "8by8"),
    ("[axes]\n\"numerics.weight_bitz\" = [4]\n", "unknown key 'weight_bitz'"),
    ("[axes]\n\"model.arch\" = [\"mlp\", \"resnet\"]\n", "resnet"),
])
def test_bad_specs_are_one_error_naming_the_key(tmp_path, text, words):
    path = spec_file(tmp_path, text)
    with pytest.raises(EdgeDFAError) as err:
        spec = load_spec(path)
        plan(spec, grid_points(spec))
    assert words in str(err.value) and path in str(err.value)


def test_random_draws_are_reproducible_and_in_range(tmp_path):
    spec = load_spec(spec_file(tmp_path, """
        [sweep]
        method = "random"
        trials = 12
        sampler_seed = 5
        [axes]
        "train.lr_shift" = { low = 3, high = 6 }
        "numerics.bits" = [4, 6, 8]
        "hardware.clock_mhz" = { low = 50.0, high = 400.0, log = true }
        """))
    pts = random_points(spec)
    assert pts == random_points(spec) and len(pts) == 12
    assert all(3 <= p["train.lr_shift"] <= 6 and isinstance(p["train.lr_shift"], int) for p in pts)
    assert all(50.0 <= p["hardware.clock_mhz"] <= 400.0 for p in pts)
    assert {p["numerics.bits"] for p in pts} == {4, 6, 8}
    spec.trials = 20
    assert random_points(spec)[:12] == pts  # more trials extend the same draws


def test_the_digest_ignores_only_the_trial_count():
    raw = {"sweep": {"method": "random", "trials": 4}, "axes": {"train.lr_shift": {"low": 3, "high": 5}}}
    a = parse_spec(raw)
    assert parse_spec({**raw, "sweep": {"method": "random", "trials": 9}}).digest == a.digest
    assert parse_spec({**raw, "sweep": {"method": "random", "trials": 4, "seeds": 2}}).digest != a.digest


# --------------------------------------------------------------------------- results file

def test_rows_append_whole_and_a_torn_last_line_is_dropped(tmp_path):
    path = str(tmp_path / results.RESULTS)
    for i in range(3):
        results.append_row(path, {"fingerprint": f"f{i}", "test_accuracy": i / 4})
    with open(path, "a") as fh:
        fh.write('{"fingerprint": "f3", "test_acc')  # a write cut short
    assert [r["fingerprint"] for r in results.read_rows(path)] == ["f0", "f1", "f2"]
    results.append_row(path, {"fingerprint": "f3"})
    assert [r["fingerprint"] for r in results.read_rows(path)] == ["f0", "f1", "f2", "f3"]


def test_a_damaged_row_inside_the_file_names_its_line(tmp_path):
    path = tmp_path / results.RESULTS
    path.write_text('{"fingerprint": "a"}\nnot json\n{"fingerprint": "b"}\n')
    with pytest.raises(EdgeDFAError, match=r"results.jsonl:2: not a JSON row"):
        results.read_rows(str(path))


def test_csv_has_axes_figures_and_the_configuration(tmp_path):
    rows = [{"fingerprint": "a", "label": "bits=4", "point": {"numerics.bits": 4}, "seed": 0, "test_accuracy": 0.5,
             "cycles_per_step": 10.0, "run_dir": "trials/a", "seconds": 1.0, "config": {"numerics": {"bits": 4}}}]
    results.write_csv(rows, str(tmp_path / "r.csv"))
    head, line = (tmp_path / "r.csv").read_text().splitlines()
    cols = head.split(",")
    assert cols[:4] == ["fingerprint", "label", "numerics.bits", "seed"]
    assert {"test_accuracy", "cycles_per_step", "run_dir", "config"} <= set(cols)
    assert "val_accuracy" not in cols  # no trial measured it
    assert json.loads(line.split(",", len(cols) - 1)[-1].strip('"').replace('""', '"')) == {"numerics": {"bits": 4}}
