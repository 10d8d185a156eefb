"""The int8 products we could build the GEMM on, side by side on one thread (how the int8
route of edgedfa/kernels/int8.py was chosen), and where it starts to beat the float path.

    python tools/bench_int8_options.py               # GOP/s per option on the bench's shapes
    python tools/bench_int8_options.py --crossover   # int8 route vs float32 path on small GEMMs

Options: onnxruntime MatMulInteger u8 x s8 (plain, and with the zero point 128 the route
uses), float32 BLAS (exact below 2^24, edgedfa's path before the int8 route) and two plain
numba loops into int32 (dot products along k, and rows of accumulators). Every result is
checked against the exact product first. Best of 5 calls after a warm-up.
"""

from __future__ import annotations

import argparse
import os

for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread: before numpy and numba are imported

import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from edgedfa.kernels import gemm, onnxrt  # noqa: E402
from edgedfa.onnx.kernel_models import matmul_u8s8  # noqa: E402

SHAPES = ((1024, 1024, 1024), (32, 784, 256), (128, 256, 256))
SMALL = ((4, 16, 16), (8, 32, 32), (16, 32, 64), (8, 64, 64), (16, 64, 64), (32, 64, 64), (32, 64, 128),
         (64, 128, 128))


@numba.njit(cache=True)
def numba_dot(a, bt, c):
    """c[i, j] = sum over k of a[i, k] * bt[j, k] (both rows contiguous along k)."""
    for i in range(a.shape[0]):
        for j in range(bt.shape[0]):
            acc = np.int32(0)
            for k in range(a.shape[1]):
                acc = np.int32(acc + np.int32(a[i, k]) * np.int32(bt[j, k]))
            c[i, j] = acc


@numba.njit(cache=True)
def numba_rows(a, b, c):
    """k outer, a row of int32 accumulators inner (independent lanes)."""
    for i in range(a.shape[0]):
        acc = np.zeros(b.shape[1], np.int32)
        for k in range(a.shape[1]):
            aik = np.int32(a[i, k])
            for j in range(b.shape[1]):
                acc[j] = np.int32(acc[j] + aik * np.int32(b[k, j]))
        c[i, :] = acc


def best(fn, n=5) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def options(m, k, n):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    au, bt = np.bitwise_xor(a.view(np.uint8), np.uint8(128)), np.ascontiguousarray(b.T)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    c = np.empty((m, n), np.int32)
    plain = onnxrt.new_session(1, matmul_u8s8(zero_point=False).SerializeToString())
    zp = onnxrt.new_session(1)
    correction = 128 * b.sum(0, dtype=np.int32)  # plain: (a + 128) b; checked with it, timed without
    runs = {"onnxruntime plain": lambda: plain.run(None, {"A": au, "B": b})[0],
            "onnxruntime zero point 128": lambda: zp.run(None, {"A": au, "B": b})[0],
            "float32 BLAS": lambda: (af @ bf).astype(np.int32),
            "numba dot": lambda: (numba_dot(a, bt, c), c)[1],
            "numba rows": lambda: (numba_rows(a, b, c), c)[1]}
    row = {}
    for name, fn in runs.items():
        assert np.array_equal(fn() - (correction if name == "onnxruntime plain" else 0), exact), name
        row[name] = 2 * m * k * n / best(fn) / 1e9
    return row


def crossover():
    print("| M x K x N | MACs | int8 route us | float32 path us |\n|---|---|---|---|")
    rng = np.random.default_rng(0)
    for m, k, n in SMALL:
        a, b = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
        t8 = best(lambda: gemm(a, b, 32, "AP_SAT", backend="int8"), 200)
        onnxrt.enable(False)
        tf = best(lambda: gemm(a, b, 32, "AP_SAT"), 200)
        onnxrt.enable(True)
        print(f"| {m} x {k} x {n} | {m * k * n:,} | {t8 * 1e6:.1f} | {tf * 1e6:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crossover", action="store_true", help="small GEMMs: int8 route vs the float32 path")
    if ap.parse_args().crossover:
        return crossover()
    names = None
    for m, k, n in SHAPES:
        row = options(m, k, n)
        if names is None:
            names = list(row)
            print("| M x K x N | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        print(f"| {m} x {k} x {n} | " + " | ".join(f"{row[x]:,.0f}" for x in names) + " |")


if __name__ == "__main__":
    main()
