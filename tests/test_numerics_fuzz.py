"""tools/numerics_fuzz.py: how it tells a finished run and a refusal from a defect, and one
real sweep of two settings (one the arithmetic takes, one refused by name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import numerics_fuzz  # noqa: E402  (tools/ is no package)


def done(rc, out="", err=""):
    return subprocess.CompletedProcess([], rc, out, err)


def test_outcomes_are_classified():
    ok = "test accuracy 0.9610  (train 0.9875, algo bp, 4154 samples/s) -> runs/x\n"
    assert numerics_fuzz.outcome(done(0, ok))[0] == "trained"
    assert numerics_fuzz.outcome(done(2, "", "edgedfa: error: node 'g': widths up to 16\n"))[0] == "refused"
    tb = "Traceback (most recent call last):\n  File ...\nValueError: boom\n"
    assert numerics_fuzz.outcome(done(1, "", tb)) == ("DEFECT: traceback", "ValueError: boom")
    assert numerics_fuzz.outcome(done(0, "nothing printed\n"))[0] == "DEFECT: exit 0"
    assert numerics_fuzz.outcome(done(-9))[0] == "DEFECT: exit -9"
    two = "edgedfa: error: one\nedgedfa: error: two\n"  # a refusal is one line
    assert numerics_fuzz.outcome(done(2, "", two))[0] == "DEFECT: exit 2"


def test_a_sweep_trains_and_refuses_by_name(tmp_path, capsys):
    out = str(tmp_path)
    rcs = [numerics_fuzz.main(["-o", out, "--settings", "bits24", "--models", "gru", "--epochs", "1"]),
           numerics_fuzz.main(["-o", out, "--settings", "batch7", "--models", "mlp", "--epochs", "1"])]
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    got = {(r["setting"], r["graph"], r["algo"]): r["outcome"] for r in rows}
    assert got == {("bits24", "gru", "bp"): "refused", ("bits24", "gru", "hybrid"): "refused",
                   ("batch7", "mlp", "bp"): "trained", ("batch7", "mlp", "sdfa"): "trained"}, rows
    assert all("16 bits" in r["message"] for r in rows if r["setting"] == "bits24")
    assert rcs == [0, 0] and capsys.readouterr().out.count("0 defect(s)") == 2
