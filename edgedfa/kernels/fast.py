"""Fast integer GEMM, bit-identical to kernels.reference.

The fastest exact path the operands allow: 8-bit codes on the int8 dot-product units
(``int8.py``); exact float BLAS while every partial sum is provably below 2**24 (float32)
or 2**53 (float64); each wrapped once at the end under AP_WRAP when the sum may leave the
accumulator; a numba loop with the reference's per-step overflow otherwise.
"""

from __future__ import annotations

import numba
import numpy as np

from ..fixed import Overflow, acc_limits, acc_step
from . import int8
from .acc import check_products, max_abs, register_mode, step


@numba.njit(cache=True, parallel=True)
def _gemm_loop(a, b, init, has_init, lo, hi, mode, bits):
    # a row of accumulators, k outer and j inner: independent lanes the compiler vectorises
    m, kk = a.shape
    n = b.shape[1]
    out = np.empty((m, n), dtype=np.int64)
    for i in numba.prange(m):
        acc = np.zeros(n, dtype=np.int64)
        if has_init:
            for j in range(n):
                acc[j] = step(init[i, j], lo, hi, mode, bits)
        for k in range(kk):
            aik = a[i, k]
            for j in range(n):
                acc[j] = step(acc[j] + aik * b[k, j], lo, hi, mode, bits)
        out[i, :] = acc
    return out


def partial_sum_bound(a, b, init=None) -> int:
    """Largest |partial sum| any accumulation order can reach."""
    bound = a.shape[1] * max_abs(a) * max_abs(b)
    return bound + (max_abs(init) if init is not None else 0)


def exact_float(a, b, init, dtype):
    """a @ b (+ init) in a float type whose integers are exact for the bound at hand."""
    out = a.astype(dtype) @ b.astype(dtype)
    if init is not None:
        out = out + np.asarray(init, dtype=dtype)
    return out.astype(np.int64)


def gemm(a, b, acc_bits: int, overflow: Overflow, init=None, min_macs=None):
    """Same contract as reference.gemm; picks the fastest exact path (the int8 units from
    ``min_macs`` multiply-adds up, default ``int8.MIN_MACS``)."""
    overflow = Overflow.parse(overflow)
    out = int8.gemm(np.asarray(a), np.asarray(b), acc_bits, overflow, init,
                    int8.MIN_MACS if min_macs is None else min_macs)
    if out is not None:  # 8-bit codes: no product comes near 62 bits
        return out
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    amax, bmax = max_abs(a), max_abs(b)
    check_products(amax, bmax)
    _, hi = acc_limits(acc_bits)
    bound = a.shape[1] * amax * bmax + (max_abs(np.asarray(init)) if init is not None else 0)
    if bound <= hi or overflow is Overflow.AP_WRAP:
        # in range every overflow mode is the identity; AP_WRAP is arithmetic modulo 2**A,
        # so the exact sum wrapped once equals the per-step wrap (docs/datapath.md §4)
        exact = None
        if bound < (1 << 24):
            exact = exact_float(a, b, init, np.float32)
        elif bound < (1 << 53):
            exact = exact_float(a, b, init, np.float64)
        if exact is not None:
            return exact if bound <= hi else acc_step(exact, acc_bits, Overflow.AP_WRAP)
    if init is None:
        init_arr, has_init = np.zeros((1, 1), dtype=np.int64), False
    else:
        init_arr = np.ascontiguousarray(np.broadcast_to(np.asarray(init, dtype=np.int64), (a.shape[0], b.shape[1])))
        has_init = True
    return _gemm_loop(np.ascontiguousarray(a), np.ascontiguousarray(b), init_arr, has_init,
                      *register_mode(acc_bits, overflow))
