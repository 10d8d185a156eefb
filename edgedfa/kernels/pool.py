"""Max pooling in compiled loops, the same integers as the patch-based numpy form (§8.2):
the first maximal tap in (kh, kw) order wins, padding (``PAD``) never does, and the
backward adds each window's error onto its winning input."""

from __future__ import annotations

import numba
import numpy as np

from .geometry import ConvGeometry

PAD = -(1 << 62)  # below every code: a padded tap never wins


def max_forward(x4, geo: ConvGeometry):
    """(window maxima, winning tap index) of (B, C, H, W) int64 codes, both (B, C, OH, OW)."""
    x = np.ascontiguousarray(x4, dtype=np.int64)
    if _inside(geo):  # no window reaches padding: no bounds test per tap
        return _max_forward_inside(x, *geo.kernel, *geo.strides, *geo.dilations, *geo.out_hw)
    return _max_forward(x, *_window(geo))


def max_backward(arg, dy4, geo: ConvGeometry):
    """(B, C, H, W) exact sums of each window's error at its winning tap."""
    arg, dy = np.ascontiguousarray(arg, dtype=np.int64), np.ascontiguousarray(dy4, dtype=np.int64)
    if _tiled(geo):  # every input in exactly one window: each written once, no zero fill first
        return _max_backward_tiled(arg, dy, *geo.kernel)
    return _max_backward(arg, dy, geo.in_hw[0], geo.in_hw[1], *_window(geo)[:-2])


def _window(geo):
    return (*geo.kernel, *geo.strides, *geo.dilations, geo.pads[0], geo.pads[1], *geo.out_hw)


def _inside(geo) -> bool:
    """Every tap of every window lies in the map (no padding used)."""
    return all(p == 0 for p in geo.pads[:2]) and all(
        (o - 1) * s + (k - 1) * d < n for o, s, k, d, n in zip(geo.out_hw, geo.strides, geo.kernel, geo.dilations,
                                                               geo.in_hw))


def _tiled(geo) -> bool:
    """The windows tile the map exactly: stride = kernel, no dilation, no padding, no rest."""
    return all(p == 0 for p in geo.pads) and tuple(geo.strides) == tuple(geo.kernel) and all(
        d == 1 for d in geo.dilations) and all(o * k == n for o, k, n in zip(geo.out_hw, geo.kernel, geo.in_hw))


@numba.njit(cache=True)
def _max_forward_inside(x, kh_n, kw_n, sh, sw, dh, dw, oh_n, ow_n):
    """``_max_forward`` when every window lies in the map: the first tap starts the search."""
    b_n, c_n = x.shape[:2]
    y = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    arg = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    best = x[b, c, oh * sh, ow * sw]
                    tap = 0
                    for kh in range(kh_n):
                        for kw in range(kw_n):
                            v = x[b, c, oh * sh + kh * dh, ow * sw + kw * dw]
                            if v > best:  # strictly greater: the first maximal tap stays
                                best = v
                                tap = kh * kw_n + kw
                    y[b, c, oh, ow] = best
                    arg[b, c, oh, ow] = tap
    return y, arg


@numba.njit(cache=True)
def _max_backward_tiled(arg, dy, kh_n, kw_n):
    """``_max_backward`` when the windows tile the map: each input gets its window's error or 0."""
    b_n, c_n, oh_n, ow_n = dy.shape
    dx = np.empty((b_n, c_n, oh_n * kh_n, ow_n * kw_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    tap = arg[b, c, oh, ow]
                    e = dy[b, c, oh, ow]
                    for kh in range(kh_n):
                        for kw in range(kw_n):
                            dx[b, c, oh * kh_n + kh, ow * kw_n + kw] = e if kh * kw_n + kw == tap else 0
    return dx


@numba.njit(cache=True)
def _max_forward(x, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    b_n, c_n, h_n, w_n = x.shape
    y = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    arg = np.empty((b_n, c_n, oh_n, ow_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    best, tap = PAD, -1
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh * dh
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw * dw
                            v = x[b, c, ih, iw] if 0 <= ih < h_n and 0 <= iw < w_n else PAD
                            if tap < 0 or v > best:  # strictly greater: the first maximal tap stays
                                best, tap = v, kh * kw_n + kw
                    y[b, c, oh, ow] = best
                    arg[b, c, oh, ow] = tap
    return y, arg


@numba.njit(cache=True)
def _max_backward(arg, dy, h_n, w_n, kh_n, kw_n, sh, sw, dh, dw, pt, pl):
    b_n, c_n, oh_n, ow_n = dy.shape
    dx = np.zeros((b_n, c_n, h_n, w_n), dtype=np.int64)
    for b in range(b_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    tap = arg[b, c, oh, ow]
                    ih = oh * sh - pt + (tap // kw_n) * dh
                    iw = ow * sw - pl + (tap % kw_n) * dw
                    if 0 <= ih < h_n and 0 <= iw < w_n:  # a padded winner's error falls off the edge
                        dx[b, c, ih, iw] += dy[b, c, oh, ow]
    return dx
