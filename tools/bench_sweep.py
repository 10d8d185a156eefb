"""Sweep speed: a 16-trial grid with 2 workers against the same trials one after another.

    python tools/bench_sweep.py                   # 3 rounds: --workers 1, --workers 2, --dask-local 2
    python tools/bench_sweep.py --rounds 5 --epochs 8 --no-dask

Each round runs the three executors back to back into fresh directories (so all three see
the same load on a shared machine) and reports wall-clock seconds of the whole sweep
(process or cluster start included, report excluded) and the ratios to one worker; the
summary is the median over rounds. One worker runs the trials one after another in one
process, which is cheaper than a shell loop of `edgedfa train` + `edgedfa emulate`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from edgedfa.sweep.executors import make_executor
from edgedfa.sweep.run import run_sweep

SPEC = """\
[sweep]
seeds = [0, 1, 2, 3]
emulate_steps = 1

[base.model]
arch = "mlp"
[base.train]
epochs = {epochs}

[axes]
"train.algo" = ["bp", "sdfa"]
"numerics.bits" = [4, 8]
"""


def timed(spec: str, out: str, **executor) -> float:
    t0 = time.perf_counter()
    result = run_sweep(spec, out, make_executor(**executor), log=lambda _line: None)
    seconds = time.perf_counter() - t0
    assert result.ran == 16 and not result.failed, result.failed
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    executors = {"1 worker": {"workers": 1}, "2 workers (pool)": {"workers": 2}}
    if not args.no_dask:
        executors["2 workers (Dask LocalCluster)"] = {"dask_local": 2}
    times = {k: [] for k in executors}
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "grid16.toml")
        with open(spec, "w") as fh:
            fh.write(SPEC.format(epochs=args.epochs))
        for r in range(args.rounds):
            for name, kw in executors.items():
                times[name].append(timed(spec, os.path.join(tmp, f"{r}-{len(times[name])}-{kw}"), **kw))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    base = times["1 worker"]
    print(f"\n| executor | wall time, median of {args.rounds} (s) | ratio to 1 worker, median |")
    print("|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"| {name} | {statistics.median(ts):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
