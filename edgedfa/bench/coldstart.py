"""Cold start: a first ``edgedfa train`` on an empty numba cache (a fresh install), against
the same command once the cache is filled; the difference is the time spent compiling."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

TIMEOUT = 600


def _train(args: list, out: str, env: dict) -> float:
    cmd = [sys.executable, "-m", "edgedfa.cli", "train", *args, "--quiet", "--out", out]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1])
    return seconds


def cold_start(args: list) -> dict:
    """Seconds of ``edgedfa train ARGS`` with an empty numba cache, then with it filled."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba-cache"))
        row = {"command": " ".join(["edgedfa", "train", *args])}
        try:
            cold = _train(args, os.path.join(tmp, "cold"), env)
            warm = _train(args, os.path.join(tmp, "warm"), env)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            return dict(row, error=str(exc))
    return dict(row, cold_seconds=cold, warm_seconds=warm, compile_seconds=max(0.0, cold - warm))
