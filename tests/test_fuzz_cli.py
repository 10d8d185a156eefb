"""Fuzzing the command line: every run ends with exit 0, or 2 and one `edgedfa: error:` line;
never an internal error or a traceback, and never a changed byte of a run directory it was
not asked to resume.

Inputs (tests/cli_strategies.py): argument lists, TOML configs, .npz data files and damaged
checkpoints. Each example works in a fresh directory holding a copy of a trained run. To keep
examples short the harness stops training after a few batches (the run then ends with 130
and a saved checkpoint, which the harness accepts because it asked for it) and emulation
after a few steps. ``HYPOTHESIS_PROFILE=thorough`` runs many more examples than CI does;
the counts are printed at the end (pytest -s) and kept in ``FUZZ_COUNTS``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import tree_digest, write_npz
from cli_strategies import argument_lists, checkpoint_mutations, config_texts, npz_arrays
from edgedfa import api, cli
from edgedfa.cosim import run as cosim_run

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = {"ci": 40, "dev": 40}.get(PROFILE, 500)  # per input kind; CI stays well under two minutes
MAX_BATCHES = 3  # the harness stops training after this many batches of a run
MAX_STEPS = 2  # and emulation after this many steps
FUZZ_COUNTS = {"inputs": 0, "internal_errors": 0, "files_damaged": 0, "bad_exits": 0, "exit 0": 0, "exit 2": 0,
               "stopped by the harness": 0}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=PROFILE == "ci",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A trained run, a data file, a config and an ONNX export to copy into every example."""
    base = tmp_path_factory.mktemp("pristine")
    data = write_npz(base / "data.npz", n_train=64, n_test=16)
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--out", str(base / "run")]) == 0
    assert cli.main(["export", str(base / "run"), "--format", "int", "-o", str(base / "model.onnx")]) == 0
    (base / "cfg.toml").write_text("[train]\nepochs = 1\n")
    yield base
    print(f"\nCLI fuzz ({PROFILE}): {FUZZ_COUNTS['inputs']} inputs tried, {FUZZ_COUNTS['internal_errors']} internal"
          f" errors, {FUZZ_COUNTS['files_damaged']} files damaged, {FUZZ_COUNTS['bad_exits']} other bad exits;"
          f" endings: exit 0 {FUZZ_COUNTS['exit 0']}, exit 2 {FUZZ_COUNTS['exit 2']}, stopped by the harness"
          f" {FUZZ_COUNTS['stopped by the harness']}")


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    """Short examples: training stops after MAX_BATCHES batches, emulation after MAX_STEPS steps."""
    real_fit, real_batches = api.fit, cosim_run._batches

    def fit(*a, should_stop=None, **k):
        count = [0]

        def stop():
            count[0] += 1
            return count[0] > MAX_BATCHES or bool(should_stop and should_stop())
        return real_fit(*a, should_stop=stop, **k)

    from edgedfa import session
    monkeypatch.setattr(session, "fit", fit)
    monkeypatch.setattr(cosim_run, "_batches", lambda m, x, y, b, steps: real_batches(m, x, y, b, min(steps, MAX_STEPS)))


class Example:
    """A fresh directory with a copy of the pristine run and files; runs one command line."""

    def __init__(self, pristine):
        self.dir = tempfile.mkdtemp(prefix="fuzz-")
        for name in ("run", "data.npz", "cfg.toml", "model.onnx"):
            src, dst = pristine / name, os.path.join(self.dir, name)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        with open(os.path.join(self.dir, "file.txt"), "w") as fh:
            fh.write("not mine")
        os.mkdir(os.path.join(self.dir, "emptydir"))
        self.paths = {"@RUN": "run", "@CK": "run/checkpoint.npz", "@DATA": "data.npz", "@CFG": "cfg.toml",
                      "@ONNX": "model.onnx", "@NEW": "new", "@FILE": "file.txt", "@MISSING": "missing/x",
                      "@DIR": "emptydir"}
        self.run_digest = tree_digest(os.path.join(self.dir, "run"))
        self.file_digest = tree_digest(self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def __call__(self, argv):
        argv = [os.path.join(self.dir, self.paths[a]) if a in self.paths else a for a in argv]
        out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
        os.chdir(self.dir)  # relative paths (and the default runs/) land in the example's directory
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = cli.main(argv)
        finally:
            os.chdir(here)
        self.check(argv, code, out.getvalue(), err.getvalue())
        shutil.rmtree(self.dir, ignore_errors=True)

    def check(self, argv, code, out, err):
        FUZZ_COUNTS["inputs"] += 1
        if "internal error" in err or "Traceback" in err:
            FUZZ_COUNTS["internal_errors"] += 1
            pytest.fail(f"{argv}: {err}")
        resumed = "--resume" in argv and any(os.path.join(self.dir, "run") in a for a in argv)
        if not resumed and tree_digest(os.path.join(self.dir, "run")) != self.run_digest:
            FUZZ_COUNTS["files_damaged"] += 1
            pytest.fail(f"{argv}: changed the run directory")
        errors = [line for line in err.splitlines() if line.startswith("edgedfa: error: ")]
        stopped = code == cli.INTERRUPTED and "resume with: edgedfa train --resume" in err  # the harness stopped it
        if not (code == 0 or stopped or (code == 2 and len(errors) == 1 and err.rstrip().endswith(errors[0]))):
            FUZZ_COUNTS["bad_exits"] += 1
            pytest.fail(f"{argv}: exit {code}, stderr {err!r}")
        FUZZ_COUNTS["stopped by the harness" if stopped else f"exit {code}"] += 1


@FUZZ
@given(argument_lists())
def test_fuzz_argument_lists(pristine, argv):
    Example(pristine)(argv)


@FUZZ
@given(config_texts(), st.sampled_from([["train", "--data", "@DATA", "--out", "@NEW"],
                                        ["train", "--print-config"], ["train", "--resume", "@RUN"],
                                        ["emulate", "@RUN", "--data", "@DATA"]]))
def test_fuzz_configs(pristine, text, argv):
    ex = Example(pristine)
    with open(ex.path("fuzz.toml"), "wb") as fh:
        fh.write(text)
    ex(argv + ["--config", ex.path("fuzz.toml")])


@FUZZ
@given(npz_arrays(), st.sampled_from([["train", "--out", "@NEW"], ["train", "--arch", "cnn", "--out", "@NEW"],
                                      ["train", "--arch", "gru", "--out", "@NEW"], ["train", "--holdout", "0.3"],
                                      ["eval", "@RUN"], ["emulate", "@RUN"], ["train", "--resume", "@RUN"]]),
       st.sampled_from(["npz", "bytes", "cut"]))
def test_fuzz_data_files(pristine, arrays, argv, how):
    ex = Example(pristine)
    path = ex.path("fuzz.npz")
    with warnings_off():
        np.savez(path, **arrays)
    if how != "npz":
        raw = open(path, "rb").read()
        raw = raw[: len(raw) // 2] if how == "cut" else bytes(reversed(raw[:200]))
        open(path, "wb").write(raw)
    ex(argv + ["--data", path, "--epochs", "1"] if argv[0] == "train" else argv + ["--data", path])


@FUZZ
@given(checkpoint_mutations(), st.sampled_from([["eval", "@CK", "--data", "@DATA"], ["info", "@CK"],
                                                ["export", "@CK", "--format", "int", "-o", "@NEW"],
                                                ["emulate", "@CK", "--data", "@DATA"],
                                                ["train", "--resume", "@RUN", "--epochs", "2", "--quiet"]]))
def test_fuzz_checkpoints(pristine, mutations, argv):
    ex = Example(pristine)
    damage(ex.path("run/checkpoint.npz"), mutations)
    ex.run_digest = tree_digest(ex.path("run"))  # the damaged run is the one that must not change
    ex(argv)


class warnings_off:
    def __enter__(self):
        np.seterr(all="ignore")

    def __exit__(self, *exc):
        np.seterr(all="warn")


def damage(path, mutations) -> None:
    """Apply checkpoint mutations to the file at ``path``."""
    for m in mutations:
        if m[0] in ("flip", "cut"):
            raw = bytearray(open(path, "rb").read())
            if not raw:
                continue
            at = min(int(m[1] * len(raw)), len(raw) - 1)
            if m[0] == "flip":
                raw[at] ^= m[2]
            else:
                del raw[at:]
            open(path, "wb").write(bytes(raw))
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
            continue  # already unreadable bytes
        _edit(arrays, m)
        np.savez(path, **arrays)


def _edit(arrays, m) -> None:
    kind = m[0]
    if kind == "drop":
        arrays.pop(m[1], None)
    elif kind == "reshape" and m[1] in arrays:
        arrays[m[1]] = arrays[m[1]].reshape(-1)[:-1] if arrays[m[1]].size > 1 else arrays[m[1]].astype(float)
    elif kind in ("meta", "meta_sub", "meta_del", "graph"):
        key = "graph_json" if kind == "graph" else "meta_json"
        if key not in arrays:
            return
        doc = json.loads(str(arrays[key]))
        path = m[1].split(".")
        target = doc
        for p in path[:-1]:
            target = target.get(p) if isinstance(target, dict) else None
        if isinstance(target, dict) and kind == "meta_del":
            target.pop(path[-1], None)
        elif isinstance(target, dict):
            target[path[-1]] = m[2]
        arrays[key] = np.array(json.dumps(doc, default=str))


META_PATHS = ("format", "formats", "formats.input", "formats.dense1", "numerics", "numerics.weight_bits",
              "layer_numerics", "seed", "train", "train.algo", "train.batch_size", "train.epochs", "plan", "progress",
              "progress.epoch", "progress.step", "progress.batch", "progress.history", "progress.partial", "run",
              "run.settings", "run.settings.train", "run.settings.model", "run.data", "run.data.sha256")
COMMANDS = (["info", "@CK"], ["eval", "@CK", "--data", "@DATA"], ["emulate", "@CK", "--data", "@DATA"],
            ["export", "@CK", "--format", "int", "-o", "@NEW"], ["train", "--resume", "@RUN", "--epochs", "2"])


@pytest.mark.parametrize("path", META_PATHS)
def test_every_single_piece_of_metadata_removed(pristine, path):
    """Each piece of a checkpoint's metadata taken away, under every command that reads it."""
    for argv in COMMANDS:
        ex = Example(pristine)
        damage(ex.path("run/checkpoint.npz"), [("meta_del", path)])
        ex.run_digest = tree_digest(ex.path("run"))
        ex(argv)
