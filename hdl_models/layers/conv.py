"""Convolution on the accelerator (§8.2-8.4): im2col tiling onto the PE array, the
transposed convolution for BP errors, group error propagation.

Geometry (kernel, strides, pads, dilations, groups) is configuration read from the engine's
layer (``layer.geo``, a plain dataclass); every integer is computed here.
"""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from ..accounting import Cost
from ..lanes import maxabs
from ..mac_array import operand_dtype
from ..requant_unit import narrow, requant, requant_tracked
from .base import HwLayer, T, acc_fmt, register
from .window import from4d, gather_rows, im2col, out_hw, patches, to4d


def im2col_reference(x4, geo, c0, cg):
    """``window.im2col`` from the taps of ``patches``: the reference of the compiled loop."""
    p = patches(x4[:, c0:c0 + cg], geo)
    b, _, oh, ow = p.shape[:4]
    return p.transpose(0, 2, 3, 1, 4, 5).reshape(b * oh * ow, -1)


def transposed_taps(geo, in_hw, out_hw_):
    """(oh_i, ow_i): the output row (column) read by input row ih (column iw) at tap kh (kw),
    or OH (OW) where no output reads it (§8.3)."""
    (h, w), (oh, ow) = in_hw, out_hw_
    kh, kw = geo.kernel
    sh, sw = geo.strides
    th = np.arange(h)[:, None] + geo.pads[0] - np.arange(kh)[None, :] * geo.dilations[0]
    tw = np.arange(w)[:, None] + geo.pads[1] - np.arange(kw)[None, :] * geo.dilations[1]
    oh_i = np.where((th >= 0) & (th % sh == 0) & (th // sh < oh), th // sh, oh)
    ow_i = np.where((tw >= 0) & (tw % sw == 0) & (tw // sw < ow), tw // sw, ow)
    return oh_i, ow_i


def transposed_im2col_reference(dy4, oh_i, ow_i, o0, og):
    """The transposed im2col (``window.gather_rows`` of the error) by numpy fancy indexing: the
    reference of the compiled loop."""
    bsz, _, oh, ow = dy4.shape
    dyp = np.zeros((bsz, og, oh + 1, ow + 1), dtype=np.int64)
    dyp[:, :, :oh, :ow] = dy4[:, o0:o0 + og]
    tcol = dyp[:, :, oh_i[:, None, :, None], ow_i[None, :, None, :]]
    return tcol.transpose(0, 2, 3, 1, 4, 5).reshape(bsz * oh_i.shape[0] * ow_i.shape[0], -1)


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


@register("Conv")
class ConvHw(HwLayer):
    own_format = True
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
        cost, cols, x_top = Cost(), [], maxabs(x4)  # x_top bounds every gathered operand
        for j in range(g):
            a = im2col(x4, geo, j * cg, cg, operand_dtype(x_top))
            cols.append(a)
            wj = w.codes[j * og:(j + 1) * og].reshape(og, -1)
            out[:, j * og:(j + 1) * og], st = acc.array.gemm(a, wj.T, init[None, j * og:(j + 1) * og], num.acc_bits,
                                                             num.acc_overflow, x.fmt.width, w.fmt.width, a_max=x_top)
            cost.add(acc.gemm_cost(st, ("act", x.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                                   ("act", self.out_fmt.width)))
        accs = out.reshape(bsz, oh, ow, cout).transpose(0, 3, 1, 2)
        y, top = requant_tracked(accs, f_acc, self.out_fmt, num.act_rounding, num.act_overflow)
        if train:
            self.track("out", accs, f_acc, top)
        return T(from4d(y, geo.ndim), self.out_fmt), ((x, cols, x_top) if train else None), cost

    def backward(self, acc, cache, dy, need):
        (x, cols, x_top), geo, num = cache, self.geo, self.num  # cols: the forward's im2col, read again for dW
        w = self.params["W"]
        cout, cg = w.codes.shape[:2]
        g = geo.groups
        og = cout // g
        x4, dy4 = to4d(x.codes, geo.ndim), to4d(dy.codes, geo.ndim)
        bsz, _, oh, ow = dy4.shape
        ecost, gcost = Cost(), Cost()
        gw = np.empty(w.codes.shape, dtype=np.int64)
        dy_top = maxabs(dy4)
        dyr = np.ascontiguousarray(dy4.transpose(1, 0, 2, 3), dtype=operand_dtype(dy_top)).reshape(cout, -1)
        for j in range(g):  # dyr: (o, (b, oh, ow))
            gj, st = acc.array.gemm(dyr[j * og:(j + 1) * og], cols[j], None, num.acc_bits, num.acc_overflow,
                                    dy.fmt.width, x.fmt.width, a_max=dy_top, b_max=x_top)
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
            a, cost = self._input_grad(acc, dy4, dy_top, wc, groups, x4.shape, dy.fmt.width, w.fmt.width)
            ecost.add(cost)
            codes, fmt = narrow(a, dy.fmt.frac_bits + w.fmt.frac_bits, num.err_bits, num.err_rounding)
            dx = T(from4d(codes, geo.ndim), fmt)
        return [dx], grads, ecost, gcost

    def _input_grad(self, acc, dy4, dy_top, wc, groups, in_shape, dy_width, w_width):
        """§8.3 transposed convolution as the GEMM of the transposed im2col (rows (b, ih, iw),
        columns (o', kh, kw), zero where no output reads the tap) with W as (Og*KH*KW, Cg)."""
        geo, num = self.geo, self.num
        bsz, cin, h, w = in_shape
        cout = dy4.shape[1]
        og, cb = cout // groups, wc.shape[1]
        kh, kw = geo.kernel
        oh_i, ow_i = transposed_taps(geo, (h, w), dy4.shape[2:])
        out = np.empty((bsz * h * w, cin), dtype=np.int64)
        cost = Cost()
        for j in range(groups):
            tcol = gather_rows(dy4, oh_i, ow_i, j * og, og, operand_dtype(dy_top))  # oh_i = OH: no output there
            wj = wc[j * og:(j + 1) * og].transpose(0, 2, 3, 1).reshape(og * kh * kw, cb)
            out[:, j * cb:(j + 1) * cb], st = acc.array.gemm(tcol, wj, None, num.acc_bits, num.acc_overflow,
                                                             dy_width, w_width, a_max=dy_top)
            cost.add(acc.gemm_cost(st, ("err", dy_width), ("weight", w_width, f"param/{self.name}/W"),
                                   ("err", num.err_bits)))
        return out.reshape(bsz, h, w, cin).transpose(0, 3, 1, 2), cost
