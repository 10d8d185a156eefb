"""The address generator of windowed layers: 1-d held as 2-d, output size, and the input
under every tap of every window (§8.1)."""

from __future__ import annotations

import numpy as np


def to4d(x, ndim):
    return x[:, :, None, :] if ndim == 1 else x


def from4d(x, ndim):
    return x[:, :, 0, :] if ndim == 1 else x


def out_hw(geo):
    return tuple((geo.in_hw[i] + geo.pads[i] + geo.pads[i + 2] - geo.dilations[i] * (geo.kernel[i] - 1) - 1)
                 // geo.strides[i] + 1 for i in range(2))


def patches(x4, geo, pad_value=0):
    """(B, C, OH, OW, KH, KW): the input under every tap of every window (padding -> pad_value)."""
    b, c, h, w = x4.shape
    oh, ow = out_hw(geo)
    t, l = geo.pads[0], geo.pads[1]
    rows = np.arange(oh)[:, None] * geo.strides[0] - t + np.arange(geo.kernel[0])[None, :] * geo.dilations[0]
    cols = np.arange(ow)[:, None] * geo.strides[1] - l + np.arange(geo.kernel[1])[None, :] * geo.dilations[1]
    xp = np.concatenate([x4.reshape(b, c, h * w), np.full((b, c, 1), pad_value, dtype=np.int64)], axis=2)
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[None, :, None, :]
    flat = np.where(inside, np.clip(rows, 0, h - 1)[:, None, :, None] * w + np.clip(cols, 0, w - 1)[None, :, None, :], h * w)
    return xp[:, :, flat]  # (B, C, OH, OW, KH, KW)
