"""The address generator of windowed layers: 1-d held as 2-d, output size, and the input
under every tap of every window (§8.1)."""

from __future__ import annotations

import numba
import numpy as np


def to4d(x, ndim):
    return x[:, :, None, :] if ndim == 1 else x


def from4d(x, ndim):
    return x[:, :, 0, :] if ndim == 1 else x


def out_hw(geo):
    return tuple((geo.in_hw[i] + geo.pads[i] + geo.pads[i + 2] - geo.dilations[i] * (geo.kernel[i] - 1) - 1)
                 // geo.strides[i] + 1 for i in range(2))


def tap_index(geo) -> tuple:
    """(rows [OH, KH], cols [OW, KW]): the input row (column) under each tap of each window,
    outside 0..H-1 (0..W-1) in the padding."""
    oh, ow = out_hw(geo)
    rows = np.arange(oh)[:, None] * geo.strides[0] - geo.pads[0] + np.arange(geo.kernel[0])[None, :] * geo.dilations[0]
    cols = np.arange(ow)[:, None] * geo.strides[1] - geo.pads[1] + np.arange(geo.kernel[1])[None, :] * geo.dilations[1]
    return rows, cols


def patches(x4, geo, pad_value=0):
    """(B, C, OH, OW, KH, KW): the input under every tap of every window (padding -> pad_value)."""
    b, c, h, w = x4.shape
    rows, cols = tap_index(geo)
    xp = np.concatenate([x4.reshape(b, c, h * w), np.full((b, c, 1), pad_value, dtype=np.int64)], axis=2)
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[None, :, None, :]
    flat = np.where(inside, np.clip(rows, 0, h - 1)[:, None, :, None] * w + np.clip(cols, 0, w - 1)[None, :, None, :], h * w)
    return xp[:, :, flat]  # (B, C, OH, OW, KH, KW)


def taps(geo) -> tuple:
    """The window's registers as the compiled address loops take them."""
    oh, ow = out_hw(geo)
    return (*geo.kernel, *geo.strides, *geo.dilations, geo.pads[0], geo.pads[1], oh, ow)


def im2col(x4, geo, c0: int, cg: int, dtype=np.int64) -> np.ndarray:
    """Rows (b, oh, ow), columns k = (c, kh, kw) in C order (§8.2), channels c0..c0+cg-1, zero
    where a tap reads the padding; the same integers as ``patches`` laid out as rows."""
    return gather_rows(x4, *tap_index(geo), c0, cg, dtype)


def gather_rows(x4, rows, cols, c0: int, cg: int, dtype=np.int64) -> np.ndarray:
    """Rows (b, i, j), columns (c, u, v) in C order: x4[b, c0 + c, rows[i, u], cols[j, v]],
    zero where that index falls outside x4 (a padding tap, or no output under the tap).
    ``dtype`` float32 / float64 writes the MAC array's operand directly: the caller vouches
    (``mac_array.operand_dtype``) that it holds every code exactly."""
    b_n, _, h_n, w_n = x4.shape
    # the source behind a zero border (row and column 0): every tap reads in bounds, no branch
    xp = np.zeros((b_n, int(cg), h_n + 1, w_n + 1), dtype=dtype)
    xp[:, :, 1:, 1:] = x4[:, c0:c0 + cg]
    rows, cols = np.asarray(rows), np.asarray(cols)
    rr = np.where((rows >= 0) & (rows < h_n), rows + 1, 0).astype(np.int64)
    cc = np.where((cols >= 0) & (cols < w_n), cols + 1, 0).astype(np.int64)
    out = np.empty((b_n * rr.shape[0] * cc.shape[0], int(cg) * rr.shape[1] * cc.shape[1]), dtype=dtype)
    _gather_rows(xp, rr, cc, out)  # every element written once
    return out


@numba.njit(cache=True)
def _gather_rows(xp, rows, cols, out):
    b_n, c_n = xp.shape[:2]
    i_n, u_n = rows.shape
    j_n, v_n = cols.shape
    for b in range(b_n):
        for i in range(i_n):
            for j in range(j_n):
                dst = out[(b * i_n + i) * j_n + j]
                k = 0
                for c in range(c_n):
                    for u in range(u_n):
                        src = xp[b, c, rows[i, u]]
                        for v in range(v_n):
                            dst[k] = src[cols[j, v]]
                            k += 1


def window_max(x4, geo, pad_value: int):
    """(maxima, first maximal tap in (kh, kw) order), both (B, C, OH, OW); a padded tap reads
    ``pad_value``: the integers of ``patches(...).argmax``."""
    return _window_max(np.ascontiguousarray(x4, dtype=np.int64), np.int64(pad_value), *taps(geo))


@numba.njit(cache=True)
def _window_max(x, pad, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    b_n, c_n, h_n, w_n = x.shape
    y = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    arg = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            plane = x[b, c]
            for oh in range(oh_n):
                ih0 = oh * sh - pt
                rows_in = ih0 >= 0 and ih0 + (kh_n - 1) * dh < h_n
                for ow in range(ow_n):
                    iw0 = ow * sw - pl
                    if rows_in and iw0 >= 0 and iw0 + (kw_n - 1) * dw < w_n:  # no tap in the padding
                        best, tap = plane[ih0, iw0], 0
                        for kh in range(kh_n):
                            for kw in range(kw_n):
                                v = plane[ih0 + kh * dh, iw0 + kw * dw]
                                if v > best:
                                    best, tap = v, kh * kw_n + kw
                    else:
                        best, tap = pad, -1
                        for kh in range(kh_n):
                            ih = ih0 + kh * dh
                            for kw in range(kw_n):
                                iw = iw0 + kw * dw
                                v = plane[ih, iw] if (0 <= ih < h_n and 0 <= iw < w_n) else pad
                                if tap < 0 or v > best:
                                    best, tap = v, kh * kw_n + kw
                    y[b, c, oh, ow], arg[b, c, oh, ow] = best, tap
    return y, arg


def route_back(arg, dy4, geo, shape4) -> np.ndarray:
    """(B, C, H, W): each window's error added onto the input under its tap ``arg`` (taps in
    the padding dropped), exact: the integers of ``pool.scatter`` of the routed taps."""
    return _route_back(np.ascontiguousarray(arg, dtype=np.int64), np.ascontiguousarray(dy4, dtype=np.int64),
                       int(shape4[2]), int(shape4[3]), *taps(geo)[1:-2])


@numba.njit(cache=True)
def _route_back(arg, dy, h_n, w_n, kw_n, sh, sw, dh, dw, pt, pl):
    b_n, c_n, oh_n, ow_n = dy.shape
    dx = np.zeros((b_n, c_n, h_n, w_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    t = arg[b, c, oh, ow]
                    ih = oh * sh - pt + (t // kw_n) * dh
                    iw = ow * sw - pl + (t % kw_n) * dw
                    if 0 <= ih < h_n and 0 <= iw < w_n:
                        dx[b, c, ih, iw] += dy[b, c, oh, ow]
    return dx
