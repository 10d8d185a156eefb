"""Reference integer GEMM: numpy int64, one accumulation step per k (docs/datapath.md §4)."""

from __future__ import annotations

import numpy as np

from ..fixed import Overflow, acc_step
from .acc import check_products, max_abs


def gemm(a, b, acc_bits: int, overflow: Overflow, init=None):
    """acc[m, n] = init[m, n]; for k ascending: acc = overflow(acc + a[m, k] * b[k, n])."""
    overflow = Overflow.parse(overflow)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    check_products(max_abs(a), max_abs(b))
    m, n = a.shape[0], b.shape[1]
    acc = np.zeros((m, n), dtype=np.int64)
    if init is not None:
        acc = acc_step(acc + np.asarray(init, dtype=np.int64), acc_bits, overflow)
    for k in range(a.shape[1]):
        acc = acc_step(acc + a[:, k, None] * b[None, k, :], acc_bits, overflow)
    return acc
