"""Pooling on the accelerator (§8.5): max pooling with its first-maximum routing, average
pooling by the 17-bit reciprocal of the window count; errors scattered back exactly."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from ..accounting import Cost, nbytes
from ..requant_unit import narrow, requant
from .base import HwLayer, T, register
from .window import from4d, out_hw, patches, route_back, to4d, window_max

RECIP_FRAC = 16
NEG_PAD = -(1 << 62)  # a max-pool padding tap: below every code


@register("MaxPool")
class MaxPoolHw(HwLayer):
    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.geo = layer.geo

    def forward(self, acc, xs, train):
        x = xs[0]
        geo = self.geo
        y, arg = window_max(to4d(x.codes, geo.ndim), geo, NEG_PAD)
        cost = Cost().use("act", acc.act.cycles(arg.size * geo.kernel[0] * geo.kernel[1]))
        acc.read(cost, "act", x.codes.size * nbytes(x.fmt.width))
        acc.write(cost, "act", y.size * nbytes(x.fmt.width))
        return T(from4d(y, geo.ndim), x.fmt), ((arg, x.codes.shape) if train else None), cost

    def backward(self, acc, cache, dy, need):
        arg, in_shape = cache
        geo = self.geo
        dy4 = to4d(dy.codes, geo.ndim)
        dx = route_back(arg, dy4, geo, to4d(np.empty(in_shape, dtype=np.int8), geo.ndim).shape)
        cost = Cost().use("act", acc.act.cycles(dy4.size * geo.kernel[0] * geo.kernel[1]))
        cost.adds += int(dy4.size)
        acc.read(cost, "err", dy.codes.size * nbytes(dy.fmt.width))
        acc.write(cost, "err", dx.size * nbytes(self.num.err_bits))
        if not overlapping(geo):
            return [T(from4d(dx, geo.ndim), dy.fmt)], {}, cost, Cost()
        codes, fmt = narrow(dx, dy.fmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        return [T(from4d(codes, geo.ndim), fmt)], {}, cost, Cost()


def overlapping(geo) -> bool:
    return any(geo.dilations[i] * (geo.kernel[i] - 1) + 1 > geo.strides[i] for i in range(2))


def scatter(per_tap, geo, shape4):
    """Exact sum of (B, C, OH, OW, KH, KW) tap values back onto the input positions."""
    b, c, h, w = shape4
    oh, ow = per_tap.shape[2:4]
    rows = np.arange(oh)[:, None] * geo.strides[0] - geo.pads[0] + np.arange(geo.kernel[0])[None, :] * geo.dilations[0]
    cols = np.arange(ow)[:, None] * geo.strides[1] - geo.pads[1] + np.arange(geo.kernel[1])[None, :] * geo.dilations[1]
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[None, :, None, :]
    flat = np.where(inside, np.clip(rows, 0, h - 1)[:, None, :, None] * w + np.clip(cols, 0, w - 1)[None, :, None, :], h * w)
    out = np.zeros((b, c, h * w + 1), dtype=np.int64)
    idx = np.broadcast_to(flat, per_tap.shape).reshape(b, c, -1)
    for bi in range(b):  # unbuffered add: several taps may land on one input
        np.add.at(out[bi], (np.arange(c)[:, None], idx[bi]), per_tap[bi].reshape(c, -1))
    return out[:, :, :h * w].reshape(b, c, h, w)


@register("AveragePool", "GlobalAveragePool")
class AveragePoolHw(HwLayer):
    """Exact window sum times the 17-bit reciprocal of the count, one requantization (§8.5)."""

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.geo = layer.geo
        include = bool(self.attrs.get("count_include_pad", 0))
        n = self._counts(include)
        L = np.vectorize(lambda v: int(v - 1).bit_length())(n)
        r = ((1 << (RECIP_FRAC + L)) + n // 2) // n
        self.k = int(self.attrs.get("scale_log2", 0))  # the mean times 2^k: the product's point moves
        self.S = RECIP_FRAC + int(L.max()) - self.k
        self.scale = r << (int(L.max()) - L)

    def _explicit_pads(self):
        if not self.attrs.get("ceil_mode", 0) or "pads" not in self.attrs:
            return self.geo.pads if not self.attrs.get("ceil_mode", 0) else (0, 0, 0, 0)
        p = [int(v) for v in self.attrs["pads"]]
        return (0, p[0], 0, p[1]) if len(p) == 2 else tuple(p)

    def _counts(self, include):
        geo, pads = self.geo, self._explicit_pads()
        oh_ow = out_hw(geo)
        cnt = []
        for i in range(2):
            lo = -pads[i] if include else 0
            hi = geo.in_hw[i] + (pads[i + 2] if include else 0)
            pos = np.arange(oh_ow[i])[:, None] * geo.strides[i] - geo.pads[i] + np.arange(geo.kernel[i])[None, :] * geo.dilations[i]
            cnt.append(((pos >= lo) & (pos < hi)).sum(axis=1))
        n = cnt[0][:, None] * cnt[1][None, :]
        if (n == 0).any():
            raise EdgeDFAError(f"node {self.name!r}: a pooling window counts no input")
        return n.astype(np.int64)

    @property
    def own_format(self) -> bool:
        """Adaptive scaling: the mean is requantized into the layer's own managed format (§8.5,
        §13); static: into the input's, unless the mean is scaled by 2^k (a sum)."""
        return self.num.adaptive or self.k != 0

    def forward(self, acc, xs, train):
        x = xs[0]
        p = patches(to4d(x.codes, self.geo.ndim), self.geo)
        s = p.sum(axis=(4, 5))
        prod = s * self.scale
        fmt = self.out_fmt if self.own_format else x.fmt
        y = requant(prod, x.fmt.frac_bits + self.S, fmt, self.num.act_rounding, self.num.act_overflow)
        if train and self.own_format:
            self.track("out", prod, x.fmt.frac_bits + self.S)
        cost = Cost().use("act", acc.act.cycles(p.size))
        cost.adds, cost.macs = int(p.size), int(s.size)
        return T(from4d(y, self.geo.ndim), fmt), (x.codes.shape if train else None), cost

    def backward(self, acc, cache, dy, need):
        dy4 = to4d(dy.codes, self.geo.ndim)
        prod = dy4 * self.scale
        per_tap = np.broadcast_to(prod[..., None, None], prod.shape + tuple(self.geo.kernel))
        dx = scatter(per_tap, self.geo, to4d(np.empty(cache, dtype=np.int8), self.geo.ndim).shape)
        codes, fmt = narrow(dx, dy.fmt.frac_bits + self.S, self.num.err_bits, self.num.err_rounding)
        cost = Cost().use("act", acc.act.cycles(per_tap.size))
        cost.adds, cost.macs = int(per_tap.size), int(prod.size)
        return [T(from4d(codes, self.geo.ndim), fmt)], {}, cost, Cost()
