"""Reference convolution backend: direct loops over the reduction index, numpy over the
rest (slow, obviously right); the accumulation orders of §8."""

from __future__ import annotations

import numpy as np

from ..fixed import acc_step
from .im2col import inverse_taps, pad4, patches, tap_slice


def forward(x4, w4, geo, acc_bits, overflow, init):
    b, cin = x4.shape[:2]
    cout, cg = w4.shape[:2]
    og = cout // geo.groups
    xp = pad4(x4, geo)
    acc = np.zeros((b, cout) + geo.out_hw, dtype=np.int64)
    if init is not None:
        acc = acc_step(acc + init[None, :, None, None], acc_bits, overflow)
    for j in range(geo.groups):
        o = slice(j * og, (j + 1) * og)
        for c in range(cg):
            for kh in range(geo.kernel[0]):
                for kw in range(geo.kernel[1]):
                    xs = xp[tap_slice(geo, kh, kw)][:, j * cg + c]
                    prod = xs[:, None] * w4[o, c, kh, kw][None, :, None, None]
                    acc[:, o] = acc_step(acc[:, o] + prod, acc_bits, overflow)
    return acc


def weight_grad(x4, dy4, geo, acc_bits, overflow):
    b, cin = x4.shape[:2]
    cout = dy4.shape[1]
    g = geo.groups
    cg, og = cin // g, cout // g
    p = patches(x4, geo)  # (B, C, KH, KW, OH, OW)
    group_of_o = np.arange(cout) // og
    acc = np.zeros((cout, cg) + geo.kernel, dtype=np.int64)
    for n in range(b):
        for oh in range(geo.out_hw[0]):
            for ow in range(geo.out_hw[1]):
                xs = p[n, :, :, :, oh, ow].reshape(g, cg, *geo.kernel)[group_of_o]
                acc = acc_step(acc + dy4[n, :, oh, ow][:, None, None, None] * xs, acc_bits, overflow)
    return acc


def input_grad(dy4, w4, geo, acc_bits, overflow):
    b = dy4.shape[0]
    cout, cg = w4.shape[:2]
    g = geo.groups
    og = cout // g
    h, w = geo.in_hw
    acc = np.zeros((b, cg * g, h, w), dtype=np.int64)
    for j in range(g):
        c = slice(j * cg, (j + 1) * cg)
        for o in range(j * og, (j + 1) * og):
            for kh in range(geo.kernel[0]):
                oh_of, vh = inverse_taps(h, geo.pads[0], kh * geo.dilations[0], geo.strides[0], geo.out_hw[0])
                for kw in range(geo.kernel[1]):
                    ow_of, vw = inverse_taps(w, geo.pads[1], kw * geo.dilations[1], geo.strides[1], geo.out_hw[1])
                    e = np.where(vh[:, None] & vw[None, :], dy4[:, o][:, oh_of][:, :, ow_of], 0)  # (B, H, W)
                    prod = e[:, None] * w4[o, :, kh, kw][None, :, None, None]
                    acc[:, c] = acc_step(acc[:, c] + prod, acc_bits, overflow)
    return acc
