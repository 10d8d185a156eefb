"""Direct convolution loops compiled with numba, bit-identical to ``conv_reference``.

``fast`` runs them when a group has a single input channel (first layers, depthwise), where
they beat im2col + GEMM (docs/benchmarks.md).
"""

from __future__ import annotations

import numba
import numpy as np

from .acc import EXACT, max_abs, register_mode, step, step_or_exact
from .im2col import pad4


def forward(x4, w4, geo, acc_bits, overflow, init):
    bound = w4[0].size * max_abs(x4) * max_abs(w4) + (max_abs(init) if init is not None else 0)
    return _nb_forward(pad4(x4, geo), w4, geo.out_hw, geo.strides, geo.dilations, geo.groups,
                       *register_mode(acc_bits, overflow, bound), init if init is not None else np.zeros(0, np.int64),
                       init is not None)


def weight_grad(x4, dy4, geo, acc_bits, overflow):
    return _nb_weight_grad(pad4(x4, geo), dy4, geo.kernel, geo.strides, geo.dilations, geo.groups,
                           *register_mode(acc_bits, overflow, dy4[:, 0].size * max_abs(x4) * max_abs(dy4)))


def input_grad(dy4, w4, geo, acc_bits, overflow):
    mode = register_mode(acc_bits, overflow, w4.shape[0] // geo.groups * geo.k * max_abs(dy4) * max_abs(w4))
    if mode[2] == EXACT:  # no overflow possible: any order gives the exact sum, scatter is cheaper
        return _nb_input_grad_scatter(dy4, w4, geo.in_hw, geo.pads[:2], geo.strides, geo.dilations, geo.groups)
    return _nb_input_grad(dy4, w4, geo.in_hw, geo.pads[:2], geo.strides, geo.dilations, geo.groups, *mode)


@numba.njit(cache=True, parallel=True)
def _nb_forward(xp, w, out_hw, strides, dilations, groups, lo, hi, mode, bits, init, has_init):
    b_n = xp.shape[0]
    cout, cg, kh_n, kw_n = w.shape
    og = cout // groups
    oh_n, ow_n = out_hw
    out = np.empty((b_n, cout, oh_n, ow_n), dtype=np.int64)
    for bo in numba.prange(b_n * cout):
        b = bo // cout
        o = bo % cout
        c0 = (o // og) * cg
        for oh in range(oh_n):
            for ow in range(ow_n):
                acc = np.int64(0)
                if has_init:
                    acc = step(init[o], lo, hi, mode, bits)
                for c in range(cg):
                    for kh in range(kh_n):
                        ih = oh * strides[0] + kh * dilations[0]
                        for kw in range(kw_n):
                            iw = ow * strides[1] + kw * dilations[1]
                            acc = step_or_exact(acc + xp[b, c0 + c, ih, iw] * w[o, c, kh, kw], lo, hi, mode, bits)
                out[b, o, oh, ow] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_weight_grad(xp, dy, kernel, strides, dilations, groups, lo, hi, mode, bits):
    b_n, cout, oh_n, ow_n = dy.shape
    cg = xp.shape[1] // groups
    og = cout // groups
    kh_n, kw_n = kernel
    out = np.empty((cout, cg, kh_n, kw_n), dtype=np.int64)
    for oc in numba.prange(cout * cg):
        o = oc // cg
        c = (o // og) * cg + oc % cg
        for kh in range(kh_n):
            for kw in range(kw_n):
                acc = np.int64(0)
                for b in range(b_n):
                    for oh in range(oh_n):
                        ih = oh * strides[0] + kh * dilations[0]
                        for ow in range(ow_n):
                            iw = ow * strides[1] + kw * dilations[1]
                            acc = step_or_exact(acc + dy[b, o, oh, ow] * xp[b, c, ih, iw], lo, hi, mode, bits)
                out[o, oc % cg, kh, kw] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_input_grad(dy, w, in_hw, pads, strides, dilations, groups, lo, hi, mode, bits):
    b_n, cout, oh_n, ow_n = dy.shape
    cg, kh_n, kw_n = w.shape[1], w.shape[2], w.shape[3]
    og = cout // groups
    h_n, w_n = in_hw
    out = np.empty((b_n, cg * groups, h_n, w_n), dtype=np.int64)
    for bc in numba.prange(b_n * cg * groups):
        b = bc // (cg * groups)
        ci = bc % (cg * groups)
        j = ci // cg
        c = ci % cg
        for ih in range(h_n):
            for iw in range(w_n):
                acc = np.int64(0)
                for o in range(j * og, (j + 1) * og):
                    for kh in range(kh_n):
                        th = ih + pads[0] - kh * dilations[0]
                        if th < 0 or th % strides[0] != 0 or th // strides[0] >= oh_n:
                            continue
                        for kw in range(kw_n):
                            tw = iw + pads[1] - kw * dilations[1]
                            if tw < 0 or tw % strides[1] != 0 or tw // strides[1] >= ow_n:
                                continue
                            acc = step_or_exact(acc + dy[b, o, th // strides[0], tw // strides[1]] * w[o, c, kh, kw],
                                        lo, hi, mode, bits)
                out[b, ci, ih, iw] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_input_grad_scatter(dy, w, in_hw, pads, strides, dilations, groups):
    b_n, cout, oh_n, ow_n = dy.shape
    cg, kh_n, kw_n = w.shape[1], w.shape[2], w.shape[3]
    og = cout // groups
    h_n, w_n = in_hw
    out = np.zeros((b_n, cg * groups, h_n, w_n), dtype=np.int64)
    for b in numba.prange(b_n):
        for o in range(cout):
            c0 = (o // og) * cg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    e = dy[b, o, oh, ow]
                    if e == 0:
                        continue
                    for c in range(cg):
                        for kh in range(kh_n):
                            ih = oh * strides[0] - pads[0] + kh * dilations[0]
                            if ih < 0 or ih >= h_n:
                                continue
                            for kw in range(kw_n):
                                iw = ow * strides[1] - pads[1] + kw * dilations[1]
                                if 0 <= iw < w_n:
                                    out[b, c0 + c, ih, iw] += e * w[o, c, kh, kw]
    return out
