"""Resume is honest: other data or settings are refused by name, the epoch budget and the
learning-rate schedule may change (recorded in the history), --epochs is the total, and a
resume with nothing to do changes no file."""

import json

import numpy as np
import pytest

from cli_helpers import run, same_state, tree_digest, write_npz


@pytest.fixture
def trained(tmp_path, capsys):
    data = write_npz(tmp_path / "small.npz")
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--data", data, "--epochs", 2, "--quiet", "--out", out)
    assert code == 0, err
    return out, data


def test_resume_with_other_data_is_refused_and_names_the_difference(tmp_path, capsys, trained):
    out, _ = trained
    rng = np.random.default_rng(0)
    other = tmp_path / "three.npz"
    np.savez(other, x_train=rng.normal(size=(90, 64)), y_train=rng.integers(0, 3, 90),
             x_test=rng.normal(size=(30, 64)), y_test=rng.integers(0, 3, 30))
    before = tree_digest(out)
    code, _, err = run(capsys, "train", "--resume", out, "--data", other, "--epochs", 3, "--quiet")
    assert code == 2 and "the data differ" in err and "x_train (90, 64) (the run's: (300, 64))" in err
    assert "classes 3 (the run's: 10)" in err
    shifted = write_npz(tmp_path / "shifted.npz", x_train=np.full((300, 64), 0.25))
    code, _, err = run(capsys, "train", "--resume", out, "--data", shifted, "--epochs", 3, "--quiet")
    assert code == 2 and "the values differ" in err
    assert tree_digest(out) == before


@pytest.mark.parametrize("flag, value, key", [
    ("--feedback-values", "binary", "train.feedback_values"),
    ("--algo", "bp", "train.algo"),
    ("--bits", "6", "numerics.bits"),
    ("--holdout", "0.2", "data.holdout"),
    ("--batch-size", "16", "train.batch_size"),
    ("--arch", "cnn", "model.arch"),
])
def test_resume_refuses_a_fixed_setting_by_name(capsys, trained, flag, value, key):
    out, _ = trained
    before = tree_digest(out)
    code, _, err = run(capsys, "train", "--resume", out, flag, value, "--epochs", 3, "--quiet")
    assert code == 2 and key in err and "Start a new run" in err, err
    assert tree_digest(out) == before


def test_resume_refuses_a_config_file_with_other_settings(tmp_path, capsys, trained):
    out, _ = trained
    cfg = tmp_path / "c.toml"
    cfg.write_text("[numerics]\nupdate_rounding = 'AP_RND'\n")
    code, _, err = run(capsys, "train", "--resume", out, "--config", cfg, "--epochs", 3, "--quiet")
    assert code == 2 and "numerics.update_rounding = 'AP_RND' (the run's: 'STOCHASTIC')" in err


def test_the_learning_rate_may_change_and_the_history_says_so(capsys, trained):
    out, _ = trained
    code, _, err = run(capsys, "train", "--resume", out, "--epochs", 3, "--lr-shift", 6, "--quiet")
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr_shift"] == 6 and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][2]["settings_changed"] == {"train.epochs": [2, 3], "train.lr_shift": [None, 6]}
    assert "settings_changed" not in m["history"][1]
    assert m["settings_changes"][0]["epoch"] == 2
    assert "lr_shift = 6" in (out / "config.toml").read_text()


def test_epochs_is_the_total_and_nothing_to_do_changes_nothing(capsys, trained):
    out, data = trained
    before = tree_digest(out)
    code, stdout, _ = run(capsys, "train", "--resume", out, "--quiet")
    assert code == 0 and "nothing to do" in stdout and "no file changed" in stdout
    code, stdout, _ = run(capsys, "train", "--resume", out, "--epochs", 2, "--quiet")
    assert code == 0 and "already trained 2 of 2 epochs" in stdout
    code, _, err = run(capsys, "train", "--resume", out, "--epochs", 1, "--quiet")
    assert code == 2 and "already trained 2 epoch(s)" in err and "--epochs is the total" in err
    assert tree_digest(out) == before
    code, _, err = run(capsys, "train", "--resume", out, "--epochs", 4, "--quiet")
    assert code == 0, err
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 4


def test_resume_equals_uninterrupted_with_holdout_and_the_best_checkpoint(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    a, b = tmp_path / "a", tmp_path / "b"
    schedule = tmp_path / "s.toml"
    schedule.write_text("[train]\nlr_decay_epochs = [3]\n")  # the 4-epoch run's, also in its first part
    common = ["--data", data, "--holdout", "0.25", "--quiet", "--algo", "dfa", "--config", schedule]
    assert run(capsys, "train", "--epochs", 4, "--out", a, *common)[0] == 0
    assert run(capsys, "train", "--epochs", 2, "--out", b, *common)[0] == 0
    assert run(capsys, "train", "--resume", b, "--epochs", 4, "--quiet")[0] == 0
    assert same_state(a / "checkpoint.npz", b / "checkpoint.npz") == []
    assert same_state(a / "best.npz", b / "best.npz") == []
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert [h["val_accuracy"] for h in ma["history"]] == [h["val_accuracy"] for h in mb["history"]]
    assert ma["best_epoch"] == mb["best_epoch"]


def test_resume_into_another_directory_leaves_the_run_alone(tmp_path, capsys, trained):
    out, _ = trained
    before = tree_digest(out)
    fork = tmp_path / "fork"
    code, _, err = run(capsys, "train", "--resume", out, "--out", fork, "--epochs", 3, "--quiet")
    assert code == 0, err
    assert tree_digest(out) == before
    assert len(json.loads((fork / "metrics.json").read_text())["history"]) == 3
