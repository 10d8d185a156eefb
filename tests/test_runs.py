"""A run directory is owned by one run; outputs never replace a file of another kind; failed runs
leave nothing behind; files follow the umask; output paths are checked before any work."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_helpers import run, tree_digest, write_npz
from edgedfa import api, cli, rundir



@pytest.fixture
def small(tmp_path):
    return write_npz(tmp_path / "small.npz")


def _train(capsys, out, data, *extra):
    return run(capsys, "train", "--data", data, "--epochs", 1, "--quiet", "--out", out, *extra)


# --------------------------------------------------------------------------- one run per directory

def test_a_directory_in_use_is_refused_and_left_alone(tmp_path, capsys, small):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time;"
                               f"fd = os.open({str(out)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX);"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = _train(capsys, out, small)
        assert code == 2 and "in use by another edgedfa run" in err
        assert os.listdir(out) == []
    finally:
        holder.kill()
        holder.wait()
    assert _train(capsys, out, small)[0] == 0  # the lock died with its process: nothing stuck


def test_two_processes_on_one_out_one_is_refused(tmp_path, small):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "edgedfa.cli", "train", "--data", str(small), "--epochs", "2", "--quiet",
           "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    assert "in use by another edgedfa run" in results[1][1] or "not empty" in results[1][1]
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_default_run_names_never_collide(tmp_path, capsys, monkeypatch, small):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20990101-000000")  # the same second
    outs = []
    for _ in range(3):
        code, stdout, err = run(capsys, "train", "--data", small, "--epochs", 1, "--quiet")
        assert code == 0, err
        outs.append(stdout.split("-> ")[-1].strip())
    assert outs == [os.path.join("runs", n) for n in ("20990101-000000", "20990101-000000-2", "20990101-000000-3")]
    assert all((tmp_path / o / "checkpoint.npz").exists() for o in outs)


def test_a_non_empty_out_needs_resume_or_force(tmp_path, capsys, small):
    out = tmp_path / "r"
    assert _train(capsys, out, small)[0] == 0
    before = tree_digest(out)
    code, _, err = _train(capsys, out, small)
    assert code == 2 and f"--resume {out}" in err and "--force" in err
    assert tree_digest(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = _train(capsys, tmp_path / "other", small)
    assert code == 2 and "not empty (notes.txt)" in err
    assert _train(capsys, out, small, "--force", "--seed", 1)[0] == 0
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


def test_out_that_is_a_file_is_refused(tmp_path, capsys, small):
    f = tmp_path / "f"
    f.write_text("x")
    code, _, err = _train(capsys, f, small)
    assert code == 2 and "is a file" in err and f.read_text() == "x"


# --------------------------------------------------------------------------- export and report files

def test_export_never_replaces_a_checkpoint_and_needs_force(tmp_path, capsys, small):
    out = tmp_path / "r"
    assert _train(capsys, out, small)[0] == 0
    before = tree_digest(out)
    ck = out / "checkpoint.npz"
    code, _, err = run(capsys, "export", ck, "--format", "int", "-o", ck)
    assert code == 2 and "belongs to the run" in err
    code, _, err = run(capsys, "export", ck, "--format", "int", "-o", out / "model.onnx", "--force")
    assert code == 2 and "belongs to the run" in err
    assert tree_digest(out) == before
    data = tmp_path / "copy.npz"
    data.write_bytes(small.read_bytes())
    code, _, err = run(capsys, "export", ck, "--format", "int", "-o", data, "--force")
    assert code == 2 and "never replaced by an ONNX model" in err and data.read_bytes() == small.read_bytes()
    target = tmp_path / "m.onnx"
    assert run(capsys, "export", ck, "--format", "int", "-o", target)[0] == 0
    code, _, err = run(capsys, "export", ck, "--format", "float", "-o", target)
    assert code == 2 and "pass --force" in err
    assert run(capsys, "export", ck, "--format", "float", "-o", target, "--force")[0] == 0


@pytest.mark.parametrize("command", ["eval", "emulate"])
def test_json_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch, small, command):
    out = tmp_path / "r"
    assert _train(capsys, out, small)[0] == 0
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: pytest.fail("worked before checking --json"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, message in ((blocker / "r.json", "is a file, not a directory"), (tmp_path, "is a directory"),
                         (out / "metrics.json", "belongs to the run"), (out / "checkpoint.npz", "belongs to the run")):
        code, _, err = run(capsys, command, out, "--data", small, "--json", bad)
        assert code == 2 and message in err, err
    code, _, err = run(capsys, command, out, "--data", small, "--json", small)
    assert code == 2 and "never replaced by JSON" in err


# --------------------------------------------------------------------------- failures leave nothing

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs 0: expected an integer in 1..1000000"),
    (["--lr-shift", "31"], "--lr-shift 31"),
    (["--holdout", "0"], "--holdout 0"),
    (["--arch", "cnn", "--data", "BAD"], "holds 1 NaN"),
])
def test_failed_runs_leave_no_directory(tmp_path, capsys, small, argv, message):
    bad = write_npz(tmp_path / "nan.npz", x_train=np.where(np.arange(300 * 64).reshape(300, 64) == 5, np.nan, 0.5))
    out = tmp_path / "r"
    argv = [str(bad) if a == "BAD" else a for a in argv]
    code, _, err = run(capsys, "train", "--data", small, "--quiet", "--out", out, *argv)
    assert code == 2 and message in err, err
    assert not out.exists()


def test_a_crash_before_the_first_checkpoint_takes_its_files_away(tmp_path, capsys, monkeypatch, small):
    from edgedfa import session

    def crash(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(session, "fit", crash)
    out = tmp_path / "r"
    code, _, err = _train(capsys, out, small)
    assert code == 2 and "internal error RuntimeError: boom" in err
    assert not out.exists()
    out.mkdir()
    assert _train(capsys, out, small)[0] == 2 and os.listdir(out) == []  # made by the user: kept, empty


def test_an_unwritable_out_is_found_before_the_data_is_read(tmp_path, capsys, monkeypatch, small):
    from edgedfa import session

    monkeypatch.setattr(session, "load_data", lambda *a: pytest.fail("read the data first"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _train(capsys, blocker / "run", small)
    assert code == 2 and "is a file, not a directory" in err


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, capsys, small, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "r"
        assert _train(capsys, out, small)[0] == 0
        assert run(capsys, "export", out, "--format", "int", "-o", tmp_path / "i.onnx")[0] == 0
    finally:
        os.umask(old)
    files = list(out.iterdir()) + [tmp_path / "i.onnx"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(0o666 & ~mask) for f in files}


def test_broken_pipe_ends_quietly(capsys, monkeypatch):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["info", "--arch", "mlp"]) == cli.BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_run_dir_helpers_refuse_without_side_effects(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "checkpoint.npz").write_bytes(b"x")
    with pytest.raises(Exception, match="--resume"):
        rundir.check_new_run_dir(str(d))
    assert os.listdir(d) == ["checkpoint.npz"]
