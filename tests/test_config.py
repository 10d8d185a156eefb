"""Configuration: strict checks (one clear line per bad value), docs/config.md generated from the
declarations, --print-config, and a run's config.toml that trains the same run again."""

import json
import os
import tomllib
from dataclasses import fields, make_dataclass

import pytest

from cli_helpers import run, same_state, write_npz
from edgedfa import config, configdoc, schema
from edgedfa.errors import EdgeDFAError

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "config.md")


@pytest.mark.parametrize("text, message", [
    ("[train]\nbatch_size = true\n", "[train]: batch_size = true: expected an integer in 1..1048576"),
    ("[numerics]\nbits = \"eight\"\n", "[numerics]: bits = 'eight': expected an integer in 2..24"),
    ("[train]\nlr_decay_epochs = \"5\"\n", "lr_decay_epochs = '5': expected a strictly increasing list"),
    ("[train]\nlr_decay_epochs = [-5, 1000]\n", "lr_decay_epochs = [-5, 1000]"),
    ("[train]\nlr_decay_epochs = [10, 5]\n", "strictly increasing"),
    ("[numerics]\nmomentum_shift = -1\n", "momentum_shift = -1: expected an integer in 1..16, or \"none\""),
    ("[numerics]\nerr_bits = 1\n", "err_bits = 1: expected an integer in 2..24"),
    ("[numerics]\nweight_bits = 12.0\n", "weight_bits = 12.0"),
    ("[numerics]\nbits = 20\nacc_bits = 32\n", "weight_bits + act_bits = 20 + 20 = 40 bits exceed acc_bits = 32"),
    ("[numerics]\nact_rounding = 3\n", "act_rounding = 3: expected one of AP_TRN"),
    ("[numerics]\nact_rounding = \"STOCHASTIC\"\n", "act_rounding = 'STOCHASTIC': expected one of AP_TRN, "),
    ("[numerics]\nerr_rounding = \"stochastic\"\n", "err_rounding = 'stochastic': expected one of AP_TRN, "),
    ("[layers.dense1]\nerr_rounding = \"STOCHASTIC\"\n", "err_rounding = 'STOCHASTIC': expected one of"),
    ("[hardware]\nfrobnicate = 1\n", "[hardware]: unknown key 'frobnicate'"),
    ("[hardware]\nclock_mhz = inf\n", "clock_mhz = inf"),
    ("[train]\nseed = -1\n", "seed = -1"),
    ("[data]\nholdout = 1.0\n", "holdout = 1.0"),
    ("[model]\narch = \"cnn\"\nonnx = \"x.onnx\"\n", "arch and onnx exclude each other"),
    ("[layers]\ndense1 = 3\n", "one table per layer name"),
    ("[layers.dense1]\nbackward_groups = true\n", "[layers.dense1]: backward_groups = true"),
    ("[[modules]]\nnodes = [\"dense1\"]\nsource = 3\n", "source = 3"),
    ("[nonsense]\n", "unknown section(s) ['nonsense']"),
    ("x = = 1\n", "not valid TOML"),
])
def test_bad_config_values_are_one_clear_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--config", cfg, "--epochs", 1, "--quiet", "--out", out)
    assert code == 2 and err.startswith("edgedfa: error: ") and err.count("\n") == 1, err
    assert message in err and "internal error" not in err
    assert not out.exists()


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"\xff\xfe[train]\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--quiet")
    assert code == 2 and "not UTF-8 text" in err


@pytest.mark.parametrize("argv, message", [
    (["--bits", "1"], "--bits 1: expected an integer in 2..24"),
    (["--bits", "25"], "--bits 25: expected an integer in 2..24"),
    (["--lr-shift", "31"], "--lr-shift 31: expected an integer in 0..30"),
    (["--seed", "-3"], "--seed -3: expected an integer in 0..4294967295"),
    (["--feedback-sparsity", "0"], "--feedback-sparsity 0"),
])
def test_widths_and_shifts_are_checked_one_way(capsys, argv, message):
    code, _, err = run(capsys, "train", *argv, "--quiet", "--out", "/nonexistent/never")
    assert code == 2 and message in err, err


def test_bits_24_trains_with_a_wide_enough_accumulator(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[numerics]\nbits = 24\nacc_bits = 48\n")
    data = write_npz(tmp_path / "d.npz", n_train=64, n_test=16)
    code, _, err = run(capsys, "train", "--config", cfg, "--data", data, "--epochs", 1, "--quiet", "--out", tmp_path / "r")
    assert code == 0, err


def test_every_setting_is_declared_with_a_meaning():
    for section in config.SECTIONS.values():
        for cls in section.classes + tuple(c for cs in section.subtables.values() for c in cs):
            for e in schema.entries(cls):
                assert e.spec.doc, f"{cls.__name__}.{e.name}"
            assert [e.name for e in schema.entries(cls)] == [f.name for f in fields(cls)]


def test_config_doc_is_generated_and_current():
    text = open(DOC, encoding="utf-8").read()
    assert text == configdoc.render(), "docs/config.md is stale: python -m edgedfa.configdoc > docs/config.md"
    for section in config.SECTIONS.values():
        for cls in section.classes:
            for e in schema.entries(cls):
                assert f"| `{e.name}` |" in text


def test_a_new_field_reaches_checks_and_docs():
    Extra = make_dataclass("Extra", [("gain", int, schema.setting(2, "a gain", lo=0, hi=7, flag="--gain"))])
    config.register_section(config.Section("extra", (Extra,), "An added section."))
    try:
        assert config.check_doc({"extra": {"gain": 3}}, "f.toml") == {"extra": {"gain": 3}}
        with pytest.raises(EdgeDFAError, match="gain = 9: expected an integer in 0..7"):
            config.check_doc({"extra": {"gain": 9}}, "f.toml")
        assert "| `gain` | integer | `2` | an integer in 0..7 | a gain | `--gain` | fixed |" in configdoc.render()
    finally:
        del config.SECTIONS["extra"]


def test_print_config_is_the_effective_toml_and_changes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--print-config", "--arch", "cnn", "--bits", "6", "--epochs", "3")
    assert code == 0 and err == ""
    assert os.listdir(tmp_path) == []
    doc = tomllib.loads(out)
    assert doc["model"]["arch"] == "cnn" and doc["numerics"]["weight_bits"] == 6 and doc["train"]["epochs"] == 3
    assert doc["numerics"]["scaling"] == "none"  # every default, written out: by width (static at 6 bits)
    assert set(doc) == {"model", "data", "numerics", "train", "hardware"}
    assert doc["hardware"]["rows"] == 16
    for name in ("numerics", "train"):
        cls = {"numerics": config.Numerics, "train": config.TrainConfig}[name]
        assert set(schema.names(cls)) <= set(doc[name])


@pytest.mark.parametrize("arch, extra", [("mlp", ["--holdout", "0.2", "--algo", "dfa"]),
                                         ("cnn", ["--algo", "hybrid", "--bits", "6"])])
def test_a_runs_config_toml_trains_it_again_bit_for_bit(tmp_path, capsys, arch, extra):
    data = write_npz(tmp_path / "d.npz", n_train=128, n_test=32)
    first, again = tmp_path / "first", tmp_path / "again"
    code, _, err = run(capsys, "train", "--arch", arch, "--data", data, "--epochs", 2, "--seed", 5, "--quiet",
                       "--out", first, *extra)
    assert code == 0, err
    code, _, err = run(capsys, "train", "--config", first / "config.toml", "--quiet", "--out", again)
    assert code == 0, err
    assert same_state(first / "checkpoint.npz", again / "checkpoint.npz") == []
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, again))
    assert [h["train_accuracy"] for h in a["history"]] == [h["train_accuracy"] for h in b["history"]]
    assert (first / "config.toml").read_text() == (again / "config.toml").read_text()


def test_toml_writer_round_trips_odd_names_and_values():
    doc = config.resolve_run({"layers": {"/rnn/GRU \"x\"": {"weight_bits": 6}}, "train": {"lr_decay_epochs": [3]}}).doc
    text = config.toml_dumps(doc)
    assert config.check_doc(tomllib.loads(text), "t") == config.check_doc(doc, "t")
