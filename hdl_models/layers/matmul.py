"""MatMul of two activations on the accelerator (§7): attention's ``q @ k^T`` and ``a @ v``.

Each matrix of the batch (and of the heads) is one GEMM on the MAC array with both operands
streamed from the activation buffer: its registers (``acc_bits``, ``acc_overflow``) hold the
dot products, the requantization unit brings them to the layer's own ``out_fmt``. The errors
are two more GEMMs per matrix, ``da = dy @ b^T`` and ``db = a^T @ dy`` (the address generator
reads the other operand transposed), each narrowed to ``err_bits`` by the leading-one
detector (§9.4) as a Dense's input error is.
"""

from __future__ import annotations

import numpy as np

from ..accounting import Cost
from ..requant_unit import narrow, requant
from .base import HwLayer, T, register


def _gemms(acc, a, b, num, widths, buffers, out):
    """The matrices of ``a @ b`` over the leading axes, one GEMM each: (acc int64, Cost)."""
    a3, b3 = a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:])
    c = Cost()
    parts = []
    for x, y in zip(a3, b3):
        r, st = acc.array.gemm(x, y, None, num.acc_bits, num.acc_overflow, widths[0], widths[1])
        c.add(acc.gemm_cost(st, (buffers[0], widths[0]), (buffers[1], widths[1]), out))
        parts.append(r)
    res = np.stack(parts) if parts else np.zeros((0, a.shape[-2], b.shape[-1]), np.int64)
    return res.reshape(a.shape[:-2] + res.shape[-2:]), c


@register("MatMul")
class MatMulHw(HwLayer):
    own_format = True

    def forward(self, acc, xs, train):
        a, b = xs
        f = a.fmt.frac_bits + b.fmt.frac_bits
        wide, c = _gemms(acc, np.asarray(a.codes), np.asarray(b.codes), self.num, (a.fmt.width, b.fmt.width),
                         ("act", "act"), ("act", self.out_fmt.width))
        y = requant(wide, f, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            self.track("out", wide, f)
        return T(y, self.out_fmt), (list(xs) if train else None), c

    def backward(self, acc, cache, dy, need):
        a, b = cache
        num = self.num
        c = Cost()
        outs = [None, None]
        d, at, bt = np.asarray(dy.codes), np.swapaxes(np.asarray(a.codes), -1, -2), np.swapaxes(np.asarray(b.codes), -1, -2)
        products = ((d, bt, (dy.fmt.width, b.fmt.width), dy.fmt.frac_bits + b.fmt.frac_bits, ("err", "act")),  # da
                    (at, d, (a.fmt.width, dy.fmt.width), a.fmt.frac_bits + dy.fmt.frac_bits, ("act", "err")))  # db
        for i, (lhs, rhs, w, f, bufs) in enumerate(products):
            if not need[i]:
                continue
            g, gc = _gemms(acc, lhs, rhs, num, w, bufs, ("err", num.err_bits))
            c.add(gc)
            codes, fmt = narrow(g, f, num.err_bits, num.err_rounding)
            outs[i] = T(codes, fmt)
        return outs, {}, c, Cost()
