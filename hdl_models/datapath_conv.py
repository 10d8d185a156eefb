"""Convolution and pooling on the accelerator (§8): im2col tiling onto the PE array,
the transposed convolution for BP errors, group error propagation, max/average pooling.

Geometry (kernel, strides, pads, dilations, groups) is configuration read from the engine's
layer (``layer.geo``, a plain dataclass); every integer is computed here.
"""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from .accounting import Cost, nbytes
from .datapath import HW_LAYERS, HwLayer, T, acc_fmt
from .requant_unit import narrow, requant

RECIP_FRAC = 16
NEG_PAD = -(1 << 62)  # a max-pool padding tap: below every code


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


def im2col(x4, geo, c0, cg):
    """Rows (b, oh, ow), columns k = (c, kh, kw) in C order (§8.2), for channels c0..c0+cg-1."""
    p = patches(x4[:, c0:c0 + cg], geo)
    b, _, oh, ow = p.shape[:4]
    return p.transpose(0, 2, 3, 1, 4, 5).reshape(b * oh * ow, -1)


def block_diagonal(w, groups: int, bgroups: int):
    """§8.4 W_G[o, c', kh, kw] = W[o, j*(C_in/G) + c' - q*Cg, kh, kw]."""
    cout, cg = w.shape[:2]
    cin = cg * groups
    if bgroups < 1 or cin % bgroups or cout % bgroups or bgroups % groups:
        raise EdgeDFAError(f"backward_groups {bgroups} must divide C_in {cin}, C_out {cout} and be a multiple of {groups}")
    cb, og = cin // bgroups, cout // groups
    out = np.empty((cout, cb) + w.shape[2:], dtype=np.int64)
    for o in range(cout):
        j, q = o // (cout // bgroups), o // og
        first = j * cb - q * cg
        out[o] = w[o, first:first + cb]
    return out


class ConvHw(HwLayer):
    trainable = True

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.geo = layer.geo
        self.backward_mode = getattr(layer, "backward_mode", "full")
        self.backward_groups = getattr(layer, "backward_groups", None)

    def configure(self, opts):
        super().configure(opts)

    def forward(self, acc, xs, train):
        x = xs[0]
        geo, num = self.geo, self.num
        x4 = to4d(x.codes, geo.ndim)
        w = self.params["W"]
        cout, cg = w.codes.shape[:2]
        g = geo.groups
        og = cout // g
        f_acc = x.fmt.frac_bits + w.fmt.frac_bits
        init = np.zeros(cout, dtype=np.int64)
        if "B" in self.params:
            b = self.params["B"]
            init = requant(b.codes, b.fmt.frac_bits, acc_fmt(num.acc_bits, f_acc), num.act_rounding, num.acc_overflow)
        oh, ow = out_hw(geo)
        bsz = x4.shape[0]
        out = np.empty((bsz * oh * ow, cout), dtype=np.int64)
        cost = Cost()
        for j in range(g):
            a = im2col(x4, geo, j * cg, cg)
            wj = w.codes[j * og:(j + 1) * og].reshape(og, -1)
            out[:, j * og:(j + 1) * og], st = acc.array.gemm(a, wj.T, init[None, j * og:(j + 1) * og], num.acc_bits,
                                                             num.acc_overflow, x.fmt.width, w.fmt.width)
            cost.add(acc.gemm_cost(st, ("act", x.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                                   ("act", self.out_fmt.width)))
        accs = out.reshape(bsz, oh, ow, cout).transpose(0, 3, 1, 2)
        y = requant(accs, f_acc, self.out_fmt, num.act_rounding, num.act_overflow)
        return T(from4d(y, geo.ndim), self.out_fmt), (x if train else None), cost

    def backward(self, acc, cache, dy, need):
        x, geo, num = cache, self.geo, self.num
        w = self.params["W"]
        cout, cg = w.codes.shape[:2]
        g = geo.groups
        og = cout // g
        x4, dy4 = to4d(x.codes, geo.ndim), to4d(dy.codes, geo.ndim)
        bsz, _, oh, ow = dy4.shape
        ecost, gcost = Cost(), Cost()
        gw = np.empty(w.codes.shape, dtype=np.int64)
        dyr = dy4.transpose(1, 0, 2, 3).reshape(cout, -1)  # (o, (b, oh, ow))
        for j in range(g):
            a = im2col(x4, geo, j * cg, cg)
            gj, st = acc.array.gemm(dyr[j * og:(j + 1) * og], a, None, num.acc_bits, num.acc_overflow,
                                    dy.fmt.width, x.fmt.width)
            gw[j * og:(j + 1) * og] = gj.reshape((og,) + w.codes.shape[1:])
            gcost.add(acc.gemm_cost(st, ("err", dy.fmt.width), ("act", x.fmt.width), None, requant_out=False))
        grads = {"W": T(gw, acc_fmt(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))}
        if "B" in self.params:
            grads["B"] = T(dy4.sum(axis=(0, 2, 3)), acc_fmt(num.acc_bits, dy.fmt.frac_bits))
            gcost.adds += dy4.size
        dx = None
        if need[0]:
            wc, groups = (w.codes if w.codes.ndim == 4 else w.codes[:, :, None, :]), g  # 1-D: (o, c, 1, k)
            if self.backward_mode == "group" and self.backward_groups:
                groups = int(self.backward_groups)
                wc = block_diagonal(wc, g, groups)
            a, cost = self._input_grad(acc, dy4, wc, groups, x4.shape, dy.fmt.width, w.fmt.width)
            ecost.add(cost)
            codes, fmt = narrow(a, dy.fmt.frac_bits + w.fmt.frac_bits, num.err_bits, num.err_rounding)
            dx = T(from4d(codes, geo.ndim), fmt)
        return [dx], grads, ecost, gcost

    def _input_grad(self, acc, dy4, wc, groups, in_shape, dy_width, w_width):
        """§8.3 transposed convolution as the GEMM of the transposed im2col (rows (b, ih, iw),
        columns (o', kh, kw), zero where no output reads the tap) with W as (Og*KH*KW, Cg)."""
        geo, num = self.geo, self.num
        bsz, cin, h, w = in_shape
        cout, oh, ow = dy4.shape[1], dy4.shape[2], dy4.shape[3]
        og, cb = cout // groups, wc.shape[1]
        kh, kw = geo.kernel
        sh, sw = geo.strides
        th = np.arange(h)[:, None] + geo.pads[0] - np.arange(kh)[None, :] * geo.dilations[0]
        tw = np.arange(w)[:, None] + geo.pads[1] - np.arange(kw)[None, :] * geo.dilations[1]
        oh_i = np.where((th >= 0) & (th % sh == 0) & (th // sh < oh), th // sh, oh)
        ow_i = np.where((tw >= 0) & (tw % sw == 0) & (tw // sw < ow), tw // sw, ow)
        dyp = np.zeros((bsz, cout, oh + 1, ow + 1), dtype=np.int64)
        dyp[:, :, :oh, :ow] = dy4
        out = np.empty((bsz * h * w, cin), dtype=np.int64)
        cost = Cost()
        for j in range(groups):
            tcol = dyp[:, j * og:(j + 1) * og][:, :, oh_i[:, None, :, None], ow_i[None, :, None, :]]
            tcol = tcol.transpose(0, 2, 3, 1, 4, 5).reshape(bsz * h * w, og * kh * kw)
            wj = wc[j * og:(j + 1) * og].transpose(0, 2, 3, 1).reshape(og * kh * kw, cb)
            out[:, j * cb:(j + 1) * cb], st = acc.array.gemm(tcol, wj, None, num.acc_bits, num.acc_overflow,
                                                             dy_width, w_width)
            cost.add(acc.gemm_cost(st, ("err", dy_width), ("weight", w_width, f"param/{self.name}/W"),
                                   ("err", num.err_bits)))
        return out.reshape(bsz, h, w, cin).transpose(0, 3, 1, 2), cost


class MaxPoolHw(HwLayer):
    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.geo = layer.geo

    def forward(self, acc, xs, train):
        x = xs[0]
        geo = self.geo
        p = patches(to4d(x.codes, geo.ndim), geo, NEG_PAD)
        b, c, oh, ow = p.shape[:4]
        flat = p.reshape(b, c, oh, ow, -1)
        arg = flat.argmax(axis=4)  # first maximal tap in (kh, kw) order
        y = np.take_along_axis(flat, arg[..., None], axis=4)[..., 0]
        cost = Cost().use("act", acc.act.cycles(flat.size))
        acc.read(cost, "act", x.codes.size * nbytes(x.fmt.width))
        acc.write(cost, "act", y.size * nbytes(x.fmt.width))
        return T(from4d(y, geo.ndim), x.fmt), ((arg, x.codes.shape) if train else None), cost

    def backward(self, acc, cache, dy, need):
        arg, in_shape = cache
        geo = self.geo
        dy4 = to4d(dy.codes, geo.ndim)
        k = geo.kernel[0] * geo.kernel[1]
        per_tap = np.where(arg[..., None] == np.arange(k), dy4[..., None], 0).reshape(dy4.shape + tuple(geo.kernel))
        dx = scatter(per_tap, geo, to4d(np.empty(in_shape, dtype=np.int8), geo.ndim).shape)
        cost = Cost().use("act", acc.act.cycles(per_tap.size))
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


class AveragePoolHw(HwLayer):
    """Exact window sum times the 17-bit reciprocal of the count, one requantization (§8.5)."""

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.geo = layer.geo
        include = bool(self.attrs.get("count_include_pad", 0))
        n = self._counts(include)
        L = np.vectorize(lambda v: int(v - 1).bit_length())(n)
        r = ((1 << (RECIP_FRAC + L)) + n // 2) // n
        self.S = RECIP_FRAC + int(L.max())
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

    def forward(self, acc, xs, train):
        x = xs[0]
        p = patches(to4d(x.codes, self.geo.ndim), self.geo)
        s = p.sum(axis=(4, 5))
        prod = s * self.scale
        y = requant(prod, x.fmt.frac_bits + self.S, x.fmt, self.num.act_rounding, self.num.act_overflow)
        cost = Cost().use("act", acc.act.cycles(p.size))
        cost.adds, cost.macs = int(p.size), int(s.size)
        return T(from4d(y, self.geo.ndim), x.fmt), (x.codes.shape if train else None), cost

    def backward(self, acc, cache, dy, need):
        dy4 = to4d(dy.codes, self.geo.ndim)
        prod = dy4 * self.scale
        per_tap = np.broadcast_to(prod[..., None, None], prod.shape + tuple(self.geo.kernel))
        dx = scatter(per_tap, self.geo, to4d(np.empty(cache, dtype=np.int8), self.geo.ndim).shape)
        codes, fmt = narrow(dx, dy.fmt.frac_bits + self.S, self.num.err_bits, self.num.err_rounding)
        cost = Cost().use("act", acc.act.cycles(per_tap.size))
        cost.adds, cost.macs = int(per_tap.size), int(prod.size)
        return [T(from4d(codes, self.geo.ndim), fmt)], {}, cost, Cost()


HW_LAYERS.update({"Conv": ConvHw, "MaxPool": MaxPoolHw, "AveragePool": AveragePoolHw,
                  "GlobalAveragePool": AveragePoolHw})
