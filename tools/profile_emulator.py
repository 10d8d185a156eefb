"""The emulator's step against the engine's, warm, interleaved in one process, and where the
emulator's step goes.

    python tools/profile_emulator.py --workloads mlp-b32 cnn-b64 --repeats 9 [--cprofile 15]

Both sides step the same batch (one untimed step each first); each repeat times one
hdl_models step then one engine step, and the ratio printed is the median of the per-repeat
ratios, so both sides of it ran under the same load. ``--cprofile N`` lists the N functions
with the most self time over 8 further emulator steps.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from edgedfa.bench.workloads import WORKLOADS, dataset, engine  # first: edgedfa pins BLAS threads

import numpy as np  # noqa: E402

from edgedfa.cosim import CoSim  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def profile(name: str, algo: str, repeats: int, top: int) -> None:
    w = WORKLOADS[name]
    ds = dataset(w)
    eng = engine(w, algo, ds)
    sim = CoSim(eng.model, eng.settings.train, eng.settings.modules)
    x = eng.model.reshape_input(ds.x_train[:eng.batch], "x")
    y = np.asarray(ds.y_train[:eng.batch]).astype(np.int64)
    shift = sim.cfg.shift_at(0)
    sim.hdl_step(x, y, 0, shift)
    sim.engine_step(x, y, 0, shift)
    pairs = [(timed(lambda: sim.hdl_step(x, y, s, shift)), timed(lambda: sim.engine_step(x, y, s, shift)))
             for s in range(1, repeats + 1)]
    hdl, eng_t = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    ratio = statistics.median(h / e for h, e in pairs)
    print(f"{name} {algo}: emulator {hdl * 1e3:.1f} ms/step, engine {eng_t * 1e3:.1f} ms/step, "
          f"emulator / engine {ratio:.2f} (median of {repeats})")
    if top:
        prof = cProfile.Profile()
        prof.enable()
        for s in range(8):
            sim.hdl_step(x, y, 100 + s, shift)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["mlp-b32", "mlp-b128", "cnn-b64", "gru-b64"],
                    choices=sorted(WORKLOADS))
    ap.add_argument("--algo", default="bp")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N")
    a = ap.parse_args()
    for name in a.workloads:
        profile(name, a.algo, a.repeats, a.cprofile)


if __name__ == "__main__":
    main()
