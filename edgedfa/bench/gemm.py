"""The integer GEMM against onnxruntime's ``MatMulInteger`` uint8 x int8 (the plain op, the
fastest int8 product on this CPU we know of), on the same operands, interleaved repeats."""

from __future__ import annotations

import numpy as np

from ..fixed import Overflow
from ..kernels import gemm, onnxrt
from . import timing

SHAPES = ((1024, 1024, 1024), (32, 784, 256), (128, 256, 256))
THREADS = (1, 2)


def _operands(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (m, k)).astype(np.int8), rng.integers(-128, 128, (k, n)).astype(np.int8)


def _exact(a, b) -> np.ndarray:
    """a @ b exactly (float64 holds every sum of 8-bit products here)."""
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def _sides(a, b, threads: int) -> dict:
    """The plain MatMulInteger and edgedfa's gemm (8-bit and int64 operands, wrapping and
    saturating 32-bit registers, and without the int8 route), each at ``threads``."""
    from ..onnx.kernel_models import matmul_u8s8

    plain = onnxrt.new_session(threads, matmul_u8s8(zero_point=False).SerializeToString())
    au = np.bitwise_xor(a.view(np.uint8), np.uint8(128))
    a64, b64 = a.astype(np.int64), b.astype(np.int64)

    def route(on):
        return lambda: (onnxrt.enable(on), onnxrt.set_threads(threads))

    return {"onnxruntime": timing.Side(lambda i: plain.run(None, {"A": au, "B": b})),
            "gemm": timing.Side(lambda i: gemm(a, b, 32, Overflow.AP_WRAP), route(True)),
            "gemm_sat": timing.Side(lambda i: gemm(a, b, 32, Overflow.AP_SAT), route(True)),
            "gemm_int64": timing.Side(lambda i: gemm(a64, b64, 32, Overflow.AP_WRAP), route(True)),
            "gemm_without_int8_route": timing.Side(lambda i: gemm(a, b, 32, Overflow.AP_WRAP), route(False))}


def shape_row(m, k, n, threads: int, repeats: int, target: float) -> dict:
    """GOP/s of every side and the ratios to onnxruntime (medians of per-repeat ratios)."""
    a, b = _operands(m, k, n)
    before = onnxrt.threads()
    try:
        onnxrt.set_threads(threads)
        exact = _exact(a, b)
        bit_exact = bool(np.array_equal(gemm(a, b), exact)
                         and np.array_equal(gemm(a.astype(np.int64), b.astype(np.int64), 32, "AP_SAT"), exact))
        t = timing.interleaved(_sides(a, b, threads), repeats, target)
    finally:
        onnxrt.enable(True)
        onnxrt.set_threads(before)
    row = {name: 2 * m * k * n / v["seconds"] / 1e9 for name, v in t.items()}
    row.update({"shape": [m, k, n], "threads": threads, "bit_exact": bit_exact,
                "ratio": 1 / timing.speedup(t["onnxruntime"], t["gemm"]),
                "ratio_int64": 1 / timing.speedup(t["onnxruntime"], t["gemm_int64"]),
                "seconds": {name: v["seconds"] for name, v in t.items()}})
    return row


def rows(repeats: int, target: float, threads=THREADS, shapes=SHAPES) -> list:
    """One row per shape and thread count."""
    return [shape_row(m, k, n, th, repeats, target) for th in threads for (m, k, n) in shapes]
