"""The int8 path of the fast GEMM: operands that are 8-bit codes, multiplied on the CPU's
int8 dot-product units through onnxruntime's ``MatMulInteger`` (``onnxrt.py``).

Exact under the bound of docs/datapath.md §4: the result is the exact integer sum when
``K · max|a| · max|b| + max|init|`` fits the accumulator (every overflow mode is then the
identity), and under ``AP_WRAP`` that sum wrapped once otherwise. onnxruntime's own int32
register must not overflow either: ``K · 255 · max|b|`` (the offset operand ``a + 128``
is at most 255) stays below 2^31.
"""

from __future__ import annotations

import numba
import numpy as np

from ..fixed import Overflow, acc_limits, acc_step
from . import onnxrt
from .acc import max_abs

MIN_MACS = 1 << 19  # below this the float path is as fast (tools/bench_int8_options.py, docs/benchmarks.md)
INT32_MAX = (1 << 31) - 1
LIMIT = 128  # max|code| an int8 operand can hold; its codes are -128..127


@numba.njit(cache=True)
def _narrow(x, out, offset):
    """out = x + offset truncated to out's 8 bits, (B, R, C) arrays; (min, max) of x with 0."""
    lo = np.int64(0)
    hi = np.int64(0)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                v = np.int64(x[i, j, k])
                lo = min(lo, v)
                hi = max(hi, v)
                out[i, j, k] = v + offset
    return lo, hi


def narrow_into(x: np.ndarray, out: np.ndarray, offset: int):
    """out = x + offset truncated to out's 8 bits (3-d arrays, any strides); (min, max) of x
    with 0 included, as Python ints: the codes were exact when they lie in -128..127."""
    if x.strides[1] < x.strides[2]:  # e.g. a transposed matrix: walk it in memory order
        x, out = x.transpose(0, 2, 1), out.transpose(0, 2, 1)
    lo, hi = _narrow(x, out, out.dtype.type(offset))
    return int(lo), int(hi)


def narrow(x: np.ndarray, offset: int):
    """(x + offset as a C-contiguous uint8 array when offset is 128, int8 when 0; max|x|),
    or (None, max|x|) when some code leaves -128..127. For int8 input max|x| is 128.

    ``x`` is 2-d or 3-d, any strides (a transposed view is read in its memory order)."""
    if x.dtype == np.int8:
        if offset:
            return np.bitwise_xor(x.view(np.uint8), np.uint8(128), order="C"), LIMIT
        return np.ascontiguousarray(x), LIMIT
    out = np.empty(x.shape, dtype=np.uint8 if offset else np.int8)
    lo, hi = narrow_into(x[None] if x.ndim == 2 else x, out[None] if x.ndim == 2 else out, offset)
    return (out if lo >= -128 and hi <= 127 else None), max(-lo, hi)


def tight(x, reported: int) -> int:
    """max|x| exactly where ``narrow`` only reported the int8 limit."""
    return max_abs(x) if x.dtype == np.int8 else reported


def exact_route(k: int, amax: int, bmax: int, init_max: int, acc_bits: int, overflow: Overflow):
    """'exact' when no sum of K products and init can leave the accumulator, 'wrap' when
    only a wrap (arithmetic modulo 2^A) can, None when a saturating register might clip or
    onnxruntime's int32 register might overflow."""
    if k * 255 * bmax > INT32_MAX:  # onnxruntime's register holds the sum of (a + 128) * b
        return None
    if k * amax * bmax + init_max <= acc_limits(acc_bits)[1]:
        return "exact"
    return "wrap" if overflow is Overflow.AP_WRAP else None


def finish(acc, route: str, acc_bits: int, init=None) -> np.ndarray:
    """int64 result of an exact product (int32, or int64 we own): plus init, wrapped once
    under the 'wrap' route."""
    out = acc.astype(np.int64, copy=False)
    if init is not None:
        out += init
    return out if route == "exact" else acc_step(out, acc_bits, Overflow.AP_WRAP)


def _against_order(x, transposed: bool) -> int:
    """Elements narrowing would write against x's memory order, for ``x`` (or ``x.T``) as a
    C-ordered operand: a transposed weight is written scattered, byte by byte."""
    c, f = x.flags.c_contiguous, x.flags.f_contiguous
    return x.size if (c and not f if transposed else f and not c) else 0


def gemm(a, b, acc_bits: int, overflow: Overflow, init=None, min_macs: int = MIN_MACS):
    """``a @ b (+ init)`` through the accumulator of §4 on the int8 units, or None when
    the operands are not 8-bit codes, the bound does not prove it exact, or the product is
    too small to pay for the call. A product whose operands lie transposed in memory (``x @
    W.T``) is computed as ``(W @ x.T).T``, so that the large one is read in its own order."""
    m, k = a.shape
    n = b.shape[1]
    if m * k * n == 0 or m * k * n < min_macs or not onnxrt.available():  # K = 0: onnxruntime leaves Y unset
        return None
    flip = _against_order(a, True) + _against_order(b, True) < _against_order(a, False) + _against_order(b, False)
    left, right = (b.T, a.T) if flip else (a, b)
    l8, lmax = narrow(left, 128)
    r8, rmax = (None, 0) if l8 is None else narrow(right, 0)
    if r8 is None:
        return None
    init = None if init is None else np.asarray(init, dtype=np.int64)
    init_max = max_abs(init) if init is not None else 0
    route = exact_route(k, lmax, rmax, init_max, acc_bits, overflow)
    if route is None:
        route = exact_route(k, tight(left, lmax), tight(right, rmax), init_max, acc_bits, overflow)
    if route is None:
        return None
    acc = onnxrt.matmul(l8, r8)
    return finish(np.ascontiguousarray(acc.T) if flip else acc, route, acc_bits, init)
