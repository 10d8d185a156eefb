"""Softmax over one non-batch axis on the softmax unit (§8.10): the §11 exponent ROM per element,
an adder tree per row, the divider once per row for 2^46 / S, e·r through the requantizer into
the layer's own format; backward the row sums of dy·y, then y·(dy − s) narrowed."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from ..accounting import Cost, nbytes
from ..requant_unit import narrow, requant
from ..softmax_unit import RECIP_FRAC
from .base import HwLayer, T, register


@register("Softmax")
class SoftmaxHw(HwLayer):
    own_format = True

    def __init__(self, node, layer):
        super().__init__(node, layer)
        rank = len(self.in_shapes[0]) + 1
        a = int(self.attrs.get("axis", -1))
        self.axis = a + rank if a < 0 else a
        self.length = int(self.in_shapes[0][self.axis - 1])

    def forward(self, acc, xs, train):
        x = xs[0]
        e = acc.softmax.exp2(x.codes, x.fmt.frac_bits, self.axis)
        r = acc.softmax.reciprocal(e.sum(axis=self.axis, keepdims=True), RECIP_FRAC)
        p = e * r
        y = requant(p, RECIP_FRAC, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            self.track("out", p, RECIP_FRAC)
        n = y.size
        c = Cost().use("softmax", acc.softmax.layer_cycles(n, n // self.length, 3, True))
        c.use("requant", acc.requant.cycles(n))
        c.macs, c.adds, c.lut_lookups = 2 * n, n, n
        acc.read(c, "act", 2 * n * nbytes(x.fmt.width))  # the max pass, then the exponent pass
        acc.write(c, "act", n * nbytes(self.out_fmt.width))
        return T(y, self.out_fmt), (T(y, self.out_fmt) if train else None), c

    def backward(self, acc, cache, dy, need):
        y, f_y, f_dy = cache.codes, cache.fmt.frac_bits, dy.fmt.frac_bits
        top = (1 << (dy.fmt.width - 1 + max(f_y, 0))) + \
            self.length * (1 << (dy.fmt.width - 1 + cache.fmt.width - 1 + max(-f_y, 0)))
        if ((1 << (cache.fmt.width - 1)) * top).bit_length() > 62:
            raise EdgeDFAError(f"hdl_models: node {self.name!r}: the Softmax error could pass 62 bits")
        d = np.asarray(dy.codes, dtype=np.int64)
        s = (d * y).sum(axis=self.axis, keepdims=True)
        up = max(f_y, 0)  # dy aligned to the row sum's fraction F_dy + F_y (or the sum to dy's)
        c = (d << up) - (s << (up - f_y))
        codes, fmt = narrow(y * c, f_dy + up + f_y, self.num.err_bits, self.num.err_rounding)
        n = codes.size
        cost = Cost().use("softmax", acc.softmax.layer_cycles(n, n // self.length, 2, False))
        cost.use("requant", acc.requant.cycles(n))
        cost.macs, cost.adds = 2 * n, 2 * n
        acc.read(cost, "err", 2 * n * nbytes(dy.fmt.width))
        acc.read(cost, "act", 2 * n * nbytes(cache.fmt.width))
        acc.write(cost, "err", n * nbytes(fmt.width))
        return [T(codes, fmt)], {}, cost, Cost()
