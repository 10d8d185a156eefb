"""Where the time of a training step goes, per stage, for the workloads of `edgedfa bench`.

    python tools/profile_step.py                       # every workload, algos bp and sdfa
    python tools/profile_step.py --workloads cnn-b64 --algos bp --steps 20
    python tools/profile_step.py --cprofile 15         # also the 15 functions with most self time

Each stage's time is exclusive: a stage called inside another (a GEMM inside a layer's
backward) counts for itself, not for its caller, so the rows add up to the step. The update
stage and the output error absorb what they call (their rounding is theirs). The timers cost about a microsecond per call; the step time
without them is printed alongside.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import defaultdict

from edgedfa.bench.workloads import WORKLOADS, dataset, engine  # first: edgedfa pins BLAS threads

ABSORBING = {"update stage", "output error"}


class Clock:
    """Exclusive wall time per stage name (a stack of open stages)."""

    def __init__(self):
        self.total = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack = []  # [stage, start, time spent in nested stages]

    def wrap(self, stage, fn):
        def timed(*args, **kwargs):
            if self.stack and self.stack[-1][0] in ABSORBING:
                return fn(*args, **kwargs)
            self.stack.append([stage, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, t0, inner = self.stack.pop()
                spent = time.perf_counter() - t0
                self.total[name] += spent - inner
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1][2] += spent
        timed.__wrapped__ = fn
        return timed


def patch_everywhere(fn, wrapped):
    """Replace ``fn`` by ``wrapped`` in every edgedfa module that holds it by name."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("edgedfa"):
            for key, val in list(vars(mod).items()):
                if val is fn:
                    setattr(mod, key, wrapped)


def instrument_modules(clock: Clock) -> None:
    """Timers on the kernels and the numeric stages, wherever edgedfa calls them (once)."""
    from edgedfa import fixed, loss, update
    from edgedfa.kernels import conv, conv_gemm, conv_int8, conv_numba, fast, im2col, int8, onnxrt
    import edgedfa.kernels as kernels

    stages = [
        (kernels.gemm, "GEMM glue (checks, int64 results, init)"),
        (conv.conv_forward, "conv glue (checks, layouts, int64 results)"),
        (conv.conv_weight_grad, "conv glue (checks, layouts, int64 results)"),
        (conv.conv_input_grad, "conv glue (checks, layouts, int64 results)"),
        (int8.narrow, "operands narrowed to int8"),
        (conv_int8.patches, "conv patches (int8 im2col)"),
        (conv_int8.col2im, "conv col2im"),
        (onnxrt.matmul, "products: onnxruntime MatMulInteger"),
        (fast.exact_float, "products: float BLAS"),
        (fast._gemm_loop, "products: numba per-step loops"),
        (im2col.im2col, "conv patches (int64 im2col, fallback)"),
        (im2col.transposed_im2col, "conv patches (int64 im2col, fallback)"),
        (im2col.col2im, "conv col2im"),
        (fixed.requantize, "requantize / narrow"),
        (fixed.narrow_dynamic, "requantize / narrow"),
        (update.update_params, "update stage"),
        (loss.output_error, "output error"),
    ]
    for name in ("forward", "weight_grad", "input_grad"):
        stages.append((getattr(conv_numba, name), "products: numba direct conv loops"))
        stages.append((getattr(conv_gemm, name), "conv glue (checks, layouts, int64 results)"))
    for fn, stage in stages:
        patch_everywhere(fn, clock.wrap(stage, fn))


def instrument_engine(clock: Clock, eng) -> None:
    """Timers on every layer, projector and the step of one engine."""
    for _, proj in eng.trainer.projectors.values():
        proj.project = clock.wrap("feedback projection (glue)", proj.project)
        proj.generate = clock.wrap("feedback matrices regenerated", proj.generate)
    for layer in eng.model.layers:
        for method in ("forward", "backward"):
            setattr(layer, method, clock.wrap(f"{layer.op} {method} (elementwise, masks, loops)",
                                              getattr(layer, method)))
    eng.trainer.step = clock.wrap("training-step glue (Python)", eng.trainer.step)


CLOCK = Clock()


def profile(w, algo: str, steps: int, top: int) -> None:
    ds = dataset(w)
    eng = engine(w, algo, ds)
    for s in range(3):
        eng.step(s)
    t0 = time.perf_counter()
    for s in range(steps):
        eng.step(3 + s)
    plain = (time.perf_counter() - t0) / steps
    clock = CLOCK
    clock.total.clear()
    clock.calls.clear()
    instrument_engine(clock, eng)
    prof = cProfile.Profile() if top else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for s in range(steps):
        eng.step(100 + s)
    if prof:
        prof.disable()
    timed = (time.perf_counter() - t0) / steps
    total = sum(clock.total.values()) / steps
    print(f"\n#### {w.title}, `{algo}`: {plain * 1e3:.1f} ms/step "
          f"({timed * 1e3:.1f} with the timers{', and cProfile' if prof else ''})\n")
    print("| stage | ms/step | share | calls/step |\n|---|---|---|---|")
    for stage, t in sorted(clock.total.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {t / steps * 1e3:.2f} | {t / steps / total:.0%} | {clock.calls[stage] / steps:.0f} |")
    if prof:
        st = pstats.Stats(prof)
        print(f"\nPython function calls per step: {st.total_calls / steps:,.0f}\n")
        st.sort_stats("tottime").print_stats(top)
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=[n for n in WORKLOADS if not n.startswith("digits")],
                    choices=list(WORKLOADS))
    ap.add_argument("--algos", nargs="+", default=["bp", "sdfa"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N",
                    help="also print the N functions with the most self time")
    args = ap.parse_args()
    instrument_modules(CLOCK)
    for name in args.workloads:
        for algo in args.algos:
            profile(WORKLOADS[name], algo, args.steps, args.cprofile)


if __name__ == "__main__":
    main()
