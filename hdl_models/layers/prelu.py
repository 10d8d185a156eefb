"""Parametric ReLU on the activation unit (§7.1): one multiplier per lane by the element's slope
(read from a small slope register file, one entry per channel or one shared), the requantizer
into the input's format; backward, a mux between dy and dy·a into the error narrowing, and one
accumulator per slope element for its gradient (an adder addressed by the slope index)."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from ..accounting import Cost, nbytes
from ..requant_unit import narrow, requant
from .base import HwLayer, T, acc_fmt, register
from .dense import live_mask

SUM_BITS = 62  # the slope accumulators are exact int64 registers


def slope_index(slope_shape, x_shape) -> np.ndarray:
    """For every element of a batched input, the index of the slope register it reads."""
    rank = len(x_shape) - 1
    padded = (1,) + (1,) * (rank - len(slope_shape)) + tuple(slope_shape)
    ids = np.arange(int(np.prod(slope_shape, dtype=np.int64)), dtype=np.int64).reshape(padded)
    return np.broadcast_to(ids, x_shape)


@register("PRelu")
class PReluHw(HwLayer):
    trainable = True

    def forward(self, acc, xs, train):
        x, a = xs[0], self.params["slope"]
        f_p = x.fmt.frac_bits + a.fmt.frac_bits
        slope = a.codes.reshape(-1)[slope_index(a.codes.shape, x.codes.shape)]
        prod = x.codes * slope
        y = np.where(x.codes > 0, x.codes, requant(prod, f_p, x.fmt, self.num.act_rounding, self.num.act_overflow))
        n = y.size
        c = Cost().use("act", acc.act.cycles(n))
        c.macs += n
        acc.read(c, "act", n * nbytes(x.fmt.width))
        acc.read(c, "weight", a.codes.size * nbytes(a.fmt.width), f"param/{self.name}/slope")
        acc.write(c, "act", n * nbytes(x.fmt.width))
        if not train:
            return T(y, x.fmt), None, c
        return T(y, x.fmt), (x, slope, (x.codes > 0) | live_mask(prod, f_p, x.fmt)), c

    def backward(self, acc, cache, dy, need):
        x, slope, live = cache
        num, a = self.num, self.params["slope"]
        d = np.where(live, dy.codes, 0)
        at_or_below = x.codes <= 0
        idx = slope_index(a.codes.shape, x.codes.shape)
        per = x.codes.size // a.codes.size
        if dy.fmt.width + x.fmt.width - 2 + (per - 1).bit_length() > SUM_BITS:
            raise EdgeDFAError(f"hdl_models: node {self.name!r}: the slope gradient's sums could pass {SUM_BITS} bits")
        g = np.zeros(a.codes.size, dtype=np.int64)
        np.add.at(g, idx.reshape(-1), np.where(at_or_below, d * x.codes, 0).reshape(-1))
        grads = {"slope": T(g.reshape(a.codes.shape), acc_fmt(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))}
        n = d.size
        gcost = Cost().use("act", acc.act.cycles(n))
        gcost.macs += n
        acc.read(gcost, "act", n * nbytes(x.fmt.width))
        ecost = Cost()
        if not need[0]:
            return [None], grads, ecost, gcost
        f_d = max(a.fmt.frac_bits, 0)
        factor = np.where(at_or_below, slope * (1 << (f_d - a.fmt.frac_bits)), 1 << f_d)
        codes, fmt = narrow(d * factor, dy.fmt.frac_bits + f_d, num.err_bits, num.err_rounding)
        ecost.use("act", acc.act.cycles(n)).use("requant", acc.requant.cycles(n))
        acc.read(ecost, "err", n * nbytes(dy.fmt.width))
        acc.write(ecost, "err", n * nbytes(num.err_bits))
        return [T(codes, fmt)], grads, ecost, gcost
