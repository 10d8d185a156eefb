"""im2col + GEMM convolution backend: the patches of §8.2 times the weights through
``kernels.gemm`` (exact BLAS under a checked bound, numba otherwise), per group."""

from __future__ import annotations

import numpy as np

from ..fixed import acc_limits
from . import gemm
from .acc import max_abs
from .fast import exact_float
from .im2col import col2im, im2col, transposed_im2col


def _rows(t4):
    """(B, C, H, W) -> (B*H*W, C)."""
    return t4.transpose(0, 2, 3, 1).reshape(-1, t4.shape[1])


def _unrows(rows, b, hw):
    return rows.reshape((b,) + tuple(hw) + (-1,)).transpose(0, 3, 1, 2)


def group_gemm(a, b, acc_bits, overflow, init=None, backend=None):
    """``gemm`` of each group: a (G, M, K) @ b (G, K, N) (+ init (G, M, N)) -> (G, M, N).

    Many small groups (depthwise) go through one batched float product when the bound of
    §4 shows it exact and free of overflow; otherwise one ``gemm`` per group.
    """
    g = a.shape[0]
    if backend == "fast" and g > 1 and a.size and b.size:
        _, hi = acc_limits(acc_bits)
        bound = a.shape[2] * max_abs(a) * max_abs(b) + (max_abs(init) if init is not None else 0)
        if bound <= hi and bound < (1 << 53):
            return exact_float(a, b, init, np.float32 if bound < (1 << 24) else np.float64)
    return np.stack([gemm(a[j], b[j], acc_bits, overflow, None if init is None else init[j], backend)
                     for j in range(g)])


def forward(x4, w4, geo, acc_bits, overflow, init, backend):
    cols = im2col(x4, geo)
    g, cout = geo.groups, w4.shape[0]
    og = cout // g
    wt = w4.reshape(g, og, -1).transpose(0, 2, 1)
    i3 = None if init is None else np.broadcast_to(init.reshape(g, 1, og), (g, cols.shape[1], og))
    out = group_gemm(cols, wt, acc_bits, overflow, i3, backend)
    return _unrows(out.transpose(1, 0, 2).reshape(cols.shape[1], cout), x4.shape[0], geo.out_hw)


def weight_grad(x4, dy4, geo, acc_bits, overflow, backend):
    cols = im2col(x4, geo)
    g, cout = geo.groups, dy4.shape[1]
    og = cout // g
    dyt = _rows(dy4).reshape(-1, g, og).transpose(1, 2, 0)  # (G, Og, B*OH*OW)
    out = group_gemm(dyt, cols, acc_bits, overflow, None, backend)
    return out.reshape((cout, x4.shape[1] // g) + geo.kernel)


def input_grad(dy4, w4, geo, acc_bits, overflow, backend):
    g, cout, cg = geo.groups, w4.shape[0], w4.shape[1]
    og = cout // g
    b = dy4.shape[0]
    _, hi = acc_limits(acc_bits)
    bound = og * geo.k * max_abs(dy4) * max_abs(w4)
    if backend != "reference" and bound <= hi:
        # no partial sum in any order can leave the register: col2im of the exact products is exact
        rows = _rows(dy4).reshape(-1, g, og).transpose(1, 0, 2)  # (G, B*OH*OW, Og)
        cols = group_gemm(rows, w4.reshape(g, og, -1), acc_bits, overflow, None, backend)
        return col2im(cols, geo, b, cg * g)
    t = transposed_im2col(dy4, geo)
    wt = w4.reshape(g, og, cg, geo.k).transpose(0, 1, 3, 2).reshape(g, og * geo.k, cg)
    out = group_gemm(t, wt, acc_bits, overflow, None, backend)
    return _unrows(out.transpose(1, 0, 2).reshape(t.shape[1], cg * g), b, geo.in_hw)
