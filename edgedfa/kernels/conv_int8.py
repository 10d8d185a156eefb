"""Convolution on the int8 dot-product units: 8-bit patches written by a compiled loop,
multiplied by onnxruntime's ``MatMulInteger`` (``onnxrt.py``), bit-identical to
``conv_reference`` under the bounds of ``int8.exact_route`` (docs/datapath.md §4, §8).

Patches are held transposed, ``(G, Cg·KH·KW, B·OH·OW)``: rows ``(c, kh, kw)`` and columns
``(b, oh, ow)`` in C order, so both the writing and the col2im loops run along output rows.
Every function returns None when the route does not apply (codes wider than 8 bits, a
bound that does not prove the result exact, onnxruntime unusable, or a product too small
to pay for the call); the caller then takes another backend.
"""

from __future__ import annotations

import numba
import numpy as np

from . import int8, onnxrt
from .acc import max_abs


@numba.njit(cache=True)
def _taps(img, cols, kernel, strides, dilations, out_hw, offset, gather):
    """Walk every (tap, output position) pair of a padded image (every tap lies inside it):
    ``gather`` writes cols[g, (c,kh,kw), (b,oh,ow)] = img[b, c, oh*sh + kh*dh, ow*sw + kw*dw]
    + offset (patches); otherwise that image element += the column entry (col2im)."""
    b_n, c_n = img.shape[:2]
    groups = cols.shape[0]
    cg = c_n // groups
    oh_n, ow_n = out_hw
    sw = strides[1]
    for g in range(groups):
        for c in range(cg):
            for kh in range(kernel[0]):
                for kw in range(kernel[1]):
                    row = cols[g, (c * kernel[0] + kh) * kernel[1] + kw]
                    w0 = kw * dilations[1]
                    for b in range(b_n):
                        for oh in range(oh_n):
                            line = img[b, g * cg + c, oh * strides[0] + kh * dilations[0]]
                            base = (b * oh_n + oh) * ow_n
                            if gather and sw == 1:  # contiguous: the compiler vectorises the copy
                                for ow in range(ow_n):
                                    row[base + ow] = line[w0 + ow] + offset
                            elif gather:
                                for ow in range(ow_n):
                                    row[base + ow] = line[w0 + ow * sw] + offset
                            else:
                                for ow in range(ow_n):
                                    line[w0 + ow * sw] += row[base + ow]


def _padded_shape(geo, b: int, c: int) -> tuple:
    t, left, bottom, right = geo.pads
    return (b, c, geo.in_hw[0] + t + bottom, geo.in_hw[1] + left + right)


def patches(x4, geo, offset: int):
    """(8-bit patches (G, Cg·KH·KW, B·OH·OW), max|x|), or (None, max|x|) when some code of
    x leaves -128..127 (x is narrowed whole into a padded int8 copy, then gathered)."""
    b, c, h, w = x4.shape
    t, left = geo.pads[:2]
    shape = _padded_shape(geo, b, c)
    xp = np.zeros(shape, dtype=np.int8)
    inner = xp.reshape(b * c, shape[2], shape[3])[:, t:t + h, left:left + w]
    lo, hi = int8.narrow_into(x4.reshape(b * c, h, w), inner, 0)
    if lo < -128 or hi > 127:
        return None, max(-lo, hi)
    out = np.empty((geo.groups, c // geo.groups * geo.k, b * geo.out_hw[0] * geo.out_hw[1]),
                   dtype=np.uint8 if offset else np.int8)
    _taps(xp, out, geo.kernel, geo.strides, geo.dilations, geo.out_hw, out.dtype.type(offset), True)
    return out, max(-lo, hi)


def col2im(cols, geo, b: int, c: int) -> np.ndarray:
    """Exact int64 sums of (G, Cg·KH·KW, B·OH·OW) columns onto (B, C, H, W)."""
    t, left = geo.pads[:2]
    outp = np.zeros(_padded_shape(geo, b, c), dtype=np.int64)
    _taps(outp, cols, geo.kernel, geo.strides, geo.dilations, geo.out_hw, cols.dtype.type(0), False)
    return np.ascontiguousarray(outp[:, :, t:t + geo.in_hw[0], left:left + geo.in_hw[1]])


def _fits(macs: int, min_macs: int) -> bool:
    return macs > 0 and macs >= min_macs and onnxrt.available()


def _route(k, a, amax, b, bmax, init_max, acc_bits, overflow):
    """``int8.exact_route``, retried with exact maxima of int8 operands."""
    route = int8.exact_route(k, amax, bmax, init_max, acc_bits, overflow)
    if route is None:
        route = int8.exact_route(k, int8.tight(a, amax), int8.tight(b, bmax), init_max, acc_bits, overflow)
    return route


def forward(x4, w4, geo, acc_bits, overflow, init, min_macs=int8.MIN_MACS):
    """y (B, C_out, OH, OW) int64 of §8.2, or None."""
    g, (cout, cg) = geo.groups, w4.shape[:2]
    og, kk = cout // g, cg * geo.k
    b, n = x4.shape[0], x4.shape[0] * geo.out_hw[0] * geo.out_hw[1]
    if not _fits(cout * kk * n, min_macs):
        return None
    w8, wmax = int8.narrow(w4.reshape(g, og, kk), 128)
    p8, xmax = (None, 0) if w8 is None else patches(x4, geo, 0)
    if p8 is None:
        return None
    route = _route(kk, w4, wmax, x4, xmax, max_abs(init) if init is not None else 0, acc_bits, overflow)
    if route is None:
        return None
    y = np.concatenate([onnxrt.matmul(w8[j], p8[j]) for j in range(g)]) if g > 1 else onnxrt.matmul(w8[0], p8[0])
    out = np.empty((b, cout) + geo.out_hw, dtype=np.int64)
    out.transpose(1, 0, 2, 3)[...] = y.reshape((cout, b) + geo.out_hw)
    return int8.finish(out, route, acc_bits, None if init is None else init[None, :, None, None])


def weight_grad(x4, dy4, geo, acc_bits, overflow, min_macs=int8.MIN_MACS):
    """dW (C_out, C_in/G, KH, KW) int64 of §8.3, or None."""
    g, b, cout = geo.groups, x4.shape[0], dy4.shape[1]
    og, kk, n = cout // g, x4.shape[1] // g * geo.k, dy4[:, 0].size
    if not _fits(cout * kk * n, min_macs):
        return None
    p8, xmax = patches(x4, geo, 128)
    d8, dmax = (None, 0) if p8 is None else int8.narrow(dy4.reshape(b, cout, -1).transpose(0, 2, 1), 0)
    if d8 is None:
        return None
    route = _route(n, x4, xmax, dy4, dmax, 0, acc_bits, overflow)
    if route is None:
        return None
    rows = d8.reshape(n, cout)
    dwt = [onnxrt.matmul(p8[j], np.ascontiguousarray(rows[:, j * og:(j + 1) * og])) for j in range(g)]
    dw = np.concatenate([t.T for t in dwt])  # (C_out, Cg·KH·KW)
    return int8.finish(dw, route, acc_bits).reshape((cout, kk // geo.k) + geo.kernel)


def input_grad(dy4, w4, geo, acc_bits, overflow, min_macs=int8.MIN_MACS):
    """dx (B, C_in, H, W) int64 of §8.3 (exact products scattered back), or None."""
    g, (cout, cg) = geo.groups, w4.shape[:2]
    og, kk, b = cout // g, cg * geo.k, dy4.shape[0]
    n = dy4[:, 0].size
    if not _fits(cout * kk * n, min_macs):
        return None
    wt8, wmax = int8.narrow(w4.reshape(g, og, kk).transpose(0, 2, 1), 128)  # (G, Cg·KH·KW, Og)
    d8, dmax = (None, 0) if wt8 is None else int8.narrow(dy4.reshape(b, cout, -1).transpose(1, 0, 2), 0)
    if d8 is None:
        return None
    # a register sums Og·KH·KW products (the GEMM's Og, then col2im's taps)
    route = _route(og * geo.k, w4, wmax, dy4, dmax, 0, acc_bits, overflow)
    if route is None:
        return None
    dmat = d8.reshape(cout, n)
    cols = np.stack([onnxrt.matmul(wt8[j], dmat[j * og:(j + 1) * og]) for j in range(g)])
    return int8.finish(col2im(cols, geo, b, cg * g), route, acc_bits)
