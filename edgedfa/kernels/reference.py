"""Reference integer GEMM: numpy int64, one accumulation step per k (docs/datapath.md §4)."""

from __future__ import annotations

import numpy as np

from ..fixed import Overflow


def acc_limits(acc_bits: int):
    """Signed accumulator range of ``acc_bits`` bits."""
    return -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1


def acc_step(acc, acc_bits: int, overflow: Overflow):
    """Bring an accumulator register back into its width after one addition."""
    lo, hi = acc_limits(acc_bits)
    if overflow is Overflow.AP_WRAP:
        return ((acc - lo) & ((1 << acc_bits) - 1)) + lo
    if overflow is Overflow.AP_SAT_ZERO:
        return np.where((acc < lo) | (acc > hi), 0, acc)
    if overflow is Overflow.AP_SAT_SYM:
        lo = -hi
    return np.clip(acc, lo, hi)


def gemm(a, b, acc_bits: int, overflow: Overflow, init=None):
    """acc[m, n] = init[m, n]; for k ascending: acc = overflow(acc + a[m, k] * b[k, n])."""
    overflow = Overflow.parse(overflow)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    m, n = a.shape[0], b.shape[1]
    acc = np.zeros((m, n), dtype=np.int64)
    if init is not None:
        acc = acc_step(acc + np.asarray(init, dtype=np.int64), acc_bits, overflow)
    for k in range(a.shape[1]):
        acc = acc_step(acc + a[:, k, None] * b[None, k, :], acc_bits, overflow)
    return acc
