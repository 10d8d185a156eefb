"""Benchmark the integer GEMM backends (reference vs fast) on MLP- and CNN-sized shapes.

    python tools/bench_kernels.py            # markdown table on stdout
    python tools/bench_kernels.py --quick    # fewer shapes and repeats
    python tools/bench_kernels.py --json out.json
    python tools/bench_kernels.py --threads 1 --clock cpu   # per-core figures on a busy box

GOP/s counts 2*M*K*N integer operations (multiply + add) per call; time is the best of
``--repeats`` calls after one warm-up (which also JIT-compiles numba). Every fast result is
checked bit for bit against the reference before it is timed. The load average is printed
with the figures: other processes on the machine make the multi-threaded paths noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _set_threads_from_argv(argv) -> None:
    """Thread counts must be in the environment before numpy/numba are imported."""
    if "--threads" in argv:
        n = argv[argv.index("--threads") + 1]
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = n


_set_threads_from_argv(sys.argv)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from edgedfa.fixed import Overflow, acc_limits  # noqa: E402
from edgedfa.kernels import fast, gemm, int8, onnxrt  # noqa: E402

# (name, M, K, N): batch 64 on the 8x8 digits; im2col GEMMs of a 16c3-p2-32c3 CNN; one
# larger MLP layer (784 inputs) to show where BLAS pays off.
SHAPES = [
    ("mlp fc1 64x64->128", 64, 64, 128),
    ("mlp fc2 64x128->128", 64, 128, 128),
    ("mlp out 64x128->10", 64, 128, 10),
    ("mlp big 256x784->256", 256, 784, 256),
    ("cnn conv1 im2col 4096x9->16", 4096, 9, 16),
    ("cnn conv2 im2col 1024x144->32", 1024, 144, 32),
    ("dfa dW 128x64->64 (B^T e)", 128, 64, 64),
]
QUICK = {"mlp fc2 64x128->128", "mlp big 256x784->256", "cnn conv2 im2col 1024x144->32"}

# (label, operand bits, accumulator bits, overflow)
CONFIGS = [
    ("int8, acc32 wrap", 8, 32, Overflow.AP_WRAP),
    ("int8, acc16 wrap", 8, 16, Overflow.AP_WRAP),
    ("int8, acc16 sat", 8, 16, Overflow.AP_SAT),
    ("int16, acc48 sat", 16, 48, Overflow.AP_SAT),
    ("int16, acc32 sat", 16, 32, Overflow.AP_SAT),
]


def fast_path(a, b, acc_bits, overflow) -> str:
    """Which exact path kernels.fast takes (mirrors its bound checks)."""
    if a.size * b.shape[1] >= int8.MIN_MACS and onnxrt.available():
        (a8, amax), (b8, bmax) = int8.narrow(a, 128), int8.narrow(b, 0)
        if a8 is not None and b8 is not None and int8.exact_route(a.shape[1], amax, bmax, 0, acc_bits, overflow):
            return "int8 route (MatMulInteger)"
    bound = fast.partial_sum_bound(a, b)
    fits = bound <= acc_limits(acc_bits)[1]
    if fits or overflow is Overflow.AP_WRAP:
        suffix = "" if fits else " + wrap"
        if bound < (1 << 24):
            return "float32 BLAS" + suffix
        if bound < (1 << 53):
            return "float64 BLAS" + suffix
    return "numba loop"


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up / JIT
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def run(shapes, configs, repeats: int, seed: int = 0, clock=time.perf_counter):
    rng = np.random.default_rng(seed)
    rows = []
    for name, m, k, n in shapes:
        for label, bits, acc_bits, overflow in configs:
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            a = rng.integers(lo, hi, size=(m, k), endpoint=True, dtype=np.int64).astype(f"int{bits}")
            b = rng.integers(lo, hi, size=(k, n), endpoint=True, dtype=np.int64).astype(f"int{bits}")
            ref = gemm(a, b, acc_bits, overflow, backend="reference")
            assert np.array_equal(gemm(a, b, acc_bits, overflow, backend="fast"), ref), (name, label)
            ops = 2.0 * m * k * n
            t_ref = best_time(lambda: gemm(a, b, acc_bits, overflow, backend="reference"), repeats, clock)
            t_fast = best_time(lambda: gemm(a, b, acc_bits, overflow, backend="fast"), repeats, clock)
            rows.append({
                "shape": name, "m": m, "k": k, "n": n, "config": label,
                "fast_path": fast_path(a.astype(np.int64), b.astype(np.int64), acc_bits, overflow),
                "saturated": int(np.count_nonzero(np.abs(ref) >= acc_limits(acc_bits)[1])),
                "reference_gops": ops / t_ref / 1e9, "fast_gops": ops / t_fast / 1e9,
                "speedup": t_ref / t_fast,
            })
    return rows


def markdown(rows) -> str:
    out = ["| shape (M×K→N) | operands, accumulator | fast path | reference GOP/s | fast GOP/s | speed-up |",
           "|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['config']} | {r['fast_path']} | {r['reference_gops']:.3f} "
                   f"| {r['fast_gops']:.2f} | {r['speedup']:.0f}× |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="three shapes, fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (best is kept)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=None, help="BLAS and numba threads")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time, steady under load (use with --threads 1)")
    args = p.parse_args(argv)
    shapes = [s for s in SHAPES if s[0] in QUICK] if args.quick else SHAPES
    repeats = args.repeats or (2 if args.quick else 5)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = run(shapes, CONFIGS, repeats, clock=clock)
    import numba

    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"{os.cpu_count()} cores, {threads} thread(s), {args.clock} clock, best of {repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
