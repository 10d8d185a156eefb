"""A/B of a compiled path against its reference: the compiled requantize / narrow
(edgedfa/rounding.py, ``fixed.COMPILED``) or the recurrent cells' compiled time loops
(edgedfa/layers/cell_loops.py, ``cell_loops.COMPILED``). The same engine steps, timed
alternately with the switch on and off in one process (so both sides run under the same
load), median ms per step of each; the two engines' parameters must end identical.

    python tools/ab_compiled.py --workloads gru-b64 digits-gru mlp-b32 --steps 6 --rounds 5
    python tools/ab_compiled.py --switch cells --workloads gru-b64 digits-gru
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgedfa.bench.workloads import WORKLOADS, dataset, engine  # before numpy: edgedfa pins BLAS threads

import edgedfa.fixed as fixed
import numpy as np
from edgedfa.layers import cell_loops

SWITCHES = {"rounding": fixed, "cells": cell_loops}  # modules whose COMPILED flag is switched


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["gru-b64", "digits-gru", "digits-lstm", "mlp-b32",
                                                         "cnn-b64", "digits-cnn"])
    ap.add_argument("--algos", nargs="+", default=["bp", "sdfa"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--switch", choices=sorted(SWITCHES), default="rounding")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time (steadier on a shared box; counts every thread)")
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    switch = SWITCHES[args.switch]
    print("| workload | algo | reference ms/step | compiled ms/step | speed-up | parameters identical |")
    print("|---|---|---|---|---|---|")
    for name in args.workloads:
        w = WORKLOADS[name]
        ds = dataset(w)
        for algo in args.algos:
            engines = {c: engine(w, algo, ds) for c in (True, False)}
            times = {True: [], False: []}
            step = 0
            for r in range(args.rounds + 1):  # round 0 warms up (compiles)
                for c in ((True, False) if r % 2 else (False, True)):
                    switch.COMPILED = c
                    t0 = clock()
                    for s in range(args.steps):
                        engines[c].step(step + s)
                    if r:
                        times[c].append((clock() - t0) / args.steps * 1e3)
                step += args.steps
            switch.COMPILED = True
            same = all(np.array_equal(a.codes, b.codes) for la, lb in zip(engines[True].model.layers,
                                                                         engines[False].model.layers)
                       for a, b in zip(la.params.values(), lb.params.values()))
            on, off = statistics.median(times[True]), statistics.median(times[False])
            print(f"| {w.title} | `{algo}` | {off:.1f} | {on:.1f} | {off / on:.2f}x | {'yes' if same else 'NO'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
