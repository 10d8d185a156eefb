"""Fully connected layer on the accelerator (§7): the GEMMs on the PE array, the bias as
the accumulator's initial value, one requantization."""

from __future__ import annotations

import numpy as np

from edgedfa.fixed import FixedFormat

from ..accounting import Cost
from ..requant_unit import narrow, requant, requant_tracked
from .base import HwLayer, T, acc_fmt, register


def live_mask(acc_codes, f_acc: int, out_fmt: FixedFormat) -> np.ndarray:
    """§7 step 4: the accumulator lies inside out_fmt's range (output not clamped)."""
    s = f_acc - out_fmt.frac_bits
    lo, hi = out_fmt.min_code, out_fmt.max_code
    if s >= 0:
        return (acc_codes >= (lo << s)) & (acc_codes < ((hi + 1) << s))
    t = -s  # acc << t must lie in [lo, hi]
    return (acc_codes >= -((-lo) >> t)) & (acc_codes <= (hi >> t))


@register("Dense")
class DenseHw(HwLayer):
    trainable = True
    own_format = True

    def forward(self, acc, xs, train):
        x = xs[0]
        n_in = x.codes.shape[-1]
        x2 = x.codes.reshape(-1, n_in)
        w = self.params["W"]
        f_acc = x.fmt.frac_bits + w.fmt.frac_bits
        init = None
        if "B" in self.params:
            b = self.params["B"]
            init = requant(b.codes, b.fmt.frac_bits, acc_fmt(self.num.acc_bits, f_acc),
                           self.num.act_rounding, self.num.acc_overflow)[None, :]
        a, st = acc.array.gemm(x2, w.codes.T, init, self.num.acc_bits, self.num.acc_overflow,
                               x.fmt.width, w.fmt.width)
        y, top = requant_tracked(a, f_acc, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            self.track("out", a, f_acc, top)
        cost = acc.gemm_cost(st, ("act", x.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                             ("act", self.out_fmt.width))
        out = T(y.reshape(x.codes.shape[:-1] + (-1,)), self.out_fmt)
        cache = (x, live_mask(a, f_acc, self.out_fmt).reshape(out.codes.shape)) if train else None
        return out, cache, cost

    def backward(self, acc, cache, dy, need):
        x, live = cache
        num = self.num
        x2 = x.codes.reshape(-1, x.codes.shape[-1])
        d = (dy.codes * live).reshape(-1, live.shape[-1])
        w = self.params["W"]
        ecost, gcost = Cost().use("act", acc.act.cycles(d.size)), Cost()
        gw, st = acc.array.gemm(d.T, x2, None, num.acc_bits, num.acc_overflow, dy.fmt.width, x.fmt.width)
        gcost.add(acc.gemm_cost(st, ("err", dy.fmt.width), ("act", x.fmt.width), None, requant_out=False))
        grads = {"W": T(gw, acc_fmt(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))}
        if "B" in self.params:
            grads["B"] = T(d.sum(axis=0), acc_fmt(num.acc_bits, dy.fmt.frac_bits))
            gcost.adds += d.size
        dx = None
        if need[0]:
            a, st = acc.array.gemm(d, w.codes, None, num.acc_bits, num.acc_overflow, dy.fmt.width, w.fmt.width)
            codes, fmt = narrow(a, dy.fmt.frac_bits + w.fmt.frac_bits, num.err_bits, num.err_rounding)
            dx = T(codes.reshape(x.codes.shape), fmt)
            ecost.add(acc.gemm_cost(st, ("err", dy.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                                    ("err", num.err_bits)))
        return [dx], grads, ecost, gcost
