"""A/B of the emulator (hdl_models) at a git ref against the working tree's, each against the
engine, in one process: the ratio ``edgedfa bench`` reports (emulate / engine), both sides
under the same load.

    python tools/ab_emulator.py --base main --workloads mlp-b32 digits-gru --rounds 7

The base's ``hdl_models`` is read from ``git archive`` into a temporary directory and
imported beside the working tree's (the two module trees coexist; the cosim driver's
``Controller`` is switched per side). Each round times, in rotating order: the engine's
step (warm, repeated for about ``--seconds``, as the bench's training section does), and
each side's ``edgedfa emulate`` per step the way the bench's emulate section takes it
(one warm-up emulate, then ``--steps`` steps with every integer compared). Printed: the
median ms per step and the median over the rounds of each round's emulate / engine ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from edgedfa.bench.workloads import WORKLOADS, dataset, engine  # first: edgedfa pins BLAS threads

import edgedfa.cosim.driver as driver  # noqa: E402
import edgedfa.cosim.run as cosim_run  # noqa: E402
from edgedfa.bench import timing  # noqa: E402
from edgedfa.bench.training import emulate_row  # noqa: E402
from edgedfa.memory import hold_freed_memory  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _drop_hdl_modules() -> dict:
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "hdl_models" or k.startswith("hdl_models.")}


def hooks(controller, accounting, hwconfig) -> dict:
    """What the cosim driver and ``emulate`` take from hdl_models, switched per side."""
    return {(driver, "Controller"): controller.Controller, (cosim_run, "Totals"): accounting.Totals,
            (cosim_run, "HwConfig"): hwconfig.HwConfig, (cosim_run, "hw_config"): hwconfig.hw_config}


def base_side(ref: str, tmp: str) -> dict:
    """``hooks`` of ``hdl_models`` as it is at git ``ref``."""
    tar = subprocess.run(["git", "-C", REPO, "archive", ref, "hdl_models"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
    ours = _drop_hdl_modules()
    sys.path.insert(0, tmp)
    try:
        import hdl_models.accounting as accounting
        import hdl_models.controller as controller
        import hdl_models.hwconfig as hwconfig

        return hooks(controller, accounting, hwconfig)
    finally:
        sys.path.remove(tmp)
        _drop_hdl_modules()
        sys.modules.update(ours)


def measure(name: str, sides: dict, rounds: int, steps: int, seconds: float) -> None:
    w = WORKLOADS[name]
    ds = dataset(w)
    eng = engine(w, "bp", ds)
    eng_side = timing.Side(eng.step)
    calls = timing.calls_per_repeat(eng_side, seconds)
    names = ["engine"] + list(sides)
    per = {n: [] for n in names}
    i = timing.WARMUP_CALLS + 1
    for r in range(rounds + 1):  # round 0 warms up (compiles)
        for n in names[r % len(names):] + names[:r % len(names)]:
            if n == "engine":
                t = eng_side.timed(calls, i) / calls
                i += calls
            else:
                for (mod, attr), value in sides[n].items():
                    setattr(mod, attr, value)
                em = emulate_row(eng, ds, steps)
                assert em.get("bit_exact"), (n, em)
                t = em["seconds_per_step"]
            if r:
                per[n].append(t)
    line = [f"{name}: engine {statistics.median(per['engine']) * 1e3:.2f} ms"]
    for n in sides:
        ratio = statistics.median(a / b for a, b in zip(per[n], per["engine"]))
        line.append(f"{n} {statistics.median(per[n]) * 1e3:.2f} ms ({ratio:.2f}x)")
    print(", ".join(line), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git ref of the base hdl_models (default main)")
    ap.add_argument("--workloads", nargs="+", default=["mlp-b32", "mlp-b128", "cnn-b64", "gru-b64", "digits-mlp",
                                                         "digits-cnn", "digits-gru"], choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="emulated steps per figure (the bench's 3)")
    ap.add_argument("--seconds", type=float, default=0.4, help="length of an engine repeat")
    a = ap.parse_args(argv)
    hold_freed_memory()  # as the command line does
    with tempfile.TemporaryDirectory() as tmp:
        import hdl_models.accounting as accounting
        import hdl_models.controller as controller
        import hdl_models.hwconfig as hwconfig

        ours = hooks(controller, accounting, hwconfig)
        sides = {f"base {a.base}": base_side(a.base, tmp), "this tree": ours}
        for name in a.workloads:
            measure(name, sides, a.rounds, a.steps, a.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
