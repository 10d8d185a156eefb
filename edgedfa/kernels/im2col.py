"""Patches of a padded input: im2col, its adjoint col2im and the transposed im2col (§8.2-8.3).

Rows are (b, oh, ow) and columns (c, kh, kw) in C order; these fix the accumulation order
the GEMM backends reproduce.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry


def pad4(x4, geo: ConvGeometry, value=0) -> np.ndarray:
    t, lf, b, r = geo.pads
    if not (t or lf or b or r):
        return x4
    return np.pad(x4, ((0, 0), (0, 0), (t, b), (lf, r)), constant_values=value)


def tap_slice(geo: ConvGeometry, kh: int, kw: int):
    """Index of the padded input seen by kernel tap (kh, kw) at every output position."""
    oh, ow = geo.out_hw
    sh, sw = geo.strides
    h0, w0 = kh * geo.dilations[0], kw * geo.dilations[1]
    return (slice(None), slice(None), slice(h0, h0 + sh * (oh - 1) + 1, sh),
            slice(w0, w0 + sw * (ow - 1) + 1, sw))


def patches(x4, geo: ConvGeometry, pad_value=0) -> np.ndarray:
    """(B, C, KH, KW, OH, OW): the input under every kernel tap at every output position."""
    xp = pad4(np.asarray(x4), geo, pad_value)
    kh_n, kw_n = geo.kernel
    out = np.empty(x4.shape[:2] + (kh_n, kw_n) + geo.out_hw, dtype=xp.dtype)
    for kh in range(kh_n):
        for kw in range(kw_n):
            out[:, :, kh, kw] = xp[tap_slice(geo, kh, kw)]
    return out


def im2col(x4, geo: ConvGeometry) -> np.ndarray:
    """(G, B*OH*OW, C_in/G*KH*KW); rows (b, oh, ow) and columns (c, kh, kw) in C order (§8)."""
    b, c = x4.shape[:2]
    g = geo.groups
    p = patches(x4, geo).reshape((b, g, c // g) + geo.kernel + geo.out_hw)
    p = p.transpose(1, 0, 5, 6, 2, 3, 4)
    return p.reshape(g, b * geo.out_hw[0] * geo.out_hw[1], (c // g) * geo.k)


def col2im(cols, geo: ConvGeometry, b: int, c: int) -> np.ndarray:
    """Exact int64 sum of (G, B*OH*OW, C/G*KH*KW) columns back onto (B, C, H, W)."""
    g = geo.groups
    oh, ow = geo.out_hw
    p = cols.reshape((g, b, oh, ow, c // g) + geo.kernel).transpose(1, 0, 4, 5, 6, 2, 3)
    p = p.reshape((b, c) + geo.kernel + (oh, ow))
    t, lf, _, _ = geo.pads
    h, w = geo.in_hw
    xp = np.zeros((b, c, h + geo.pads[0] + geo.pads[2], w + geo.pads[1] + geo.pads[3]), dtype=np.int64)
    for kh in range(geo.kernel[0]):
        for kw in range(geo.kernel[1]):
            xp[tap_slice(geo, kh, kw)] += p[:, :, kh, kw]
    return xp[:, :, t:t + h, lf:lf + w]


def transposed_im2col(dy4, geo: ConvGeometry) -> np.ndarray:
    """(G, B*H*W, C_out/G*KH*KW): for input (b, ih, iw) and column (o, kh, kw), the output
    error dy[b, o, oh, ow] with ih = oh*sh - top + kh*dh (likewise w), or 0 where none."""
    b, cout = dy4.shape[:2]
    g = geo.groups
    h, w = geo.in_hw
    out = np.zeros((b, cout) + geo.kernel + (h, w), dtype=np.int64)
    for kh in range(geo.kernel[0]):
        ih_to_oh, vh = inverse_taps(h, geo.pads[0], kh * geo.dilations[0], geo.strides[0], geo.out_hw[0])
        for kw in range(geo.kernel[1]):
            iw_to_ow, vw = inverse_taps(w, geo.pads[1], kw * geo.dilations[1], geo.strides[1], geo.out_hw[1])
            vals = dy4[:, :, ih_to_oh][:, :, :, iw_to_ow]
            out[:, :, kh, kw] = np.where(vh[:, None] & vw[None, :], vals, 0)
    out = out.reshape((b, g, cout // g) + geo.kernel + (h, w)).transpose(1, 0, 5, 6, 2, 3, 4)
    return out.reshape(g, b * h * w, (cout // g) * geo.k)


def inverse_taps(n_in, pad, offset, stride, n_out):
    """For each input index: the output index whose tap at ``offset`` reads it, and validity."""
    t = np.arange(n_in) + pad - offset
    valid = (t >= 0) & (t % stride == 0) & (t // stride < n_out)
    return np.where(valid, t // stride, 0), valid
