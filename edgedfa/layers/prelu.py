"""Parametric ReLU (docs/datapath.md §7.1): x above zero, a·x at or below, with the slope ``a``
a trained parameter (PyTorch's nn.PReLU, ONNX PRelu). Forward, backward and update side by side.

The slope ``slope`` has a per-sample shape that broadcasts to the input's (right-aligned):
``(C,)`` after a Dense, ``(C, 1)`` / ``(C, 1, 1)`` per channel of a Conv map, all ones when
shared. It is a weight-class parameter (its format as a weight's, §7), trained by the layer's
update rule (§12) and managed by the exponent unit (§13). The output keeps the input's format.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import QTensor, acc_format, narrow_wide, requantize
from ..update import update_params
from .base import Layer, register
from .dense import inside_range, quantize_param, weight_format_bits

SUM_BITS_MAX = 62  # the slope gradient's exact sums stay inside int64


def slope_shape(slope_shape_, in_shape) -> tuple:
    """The slope's shape left-padded with ones to the input's per-sample rank."""
    shape = tuple(int(d) for d in slope_shape_)
    return (1,) * (len(in_shape) - len(shape)) + shape


def sum_axes(slope_shape_, in_shape) -> tuple:
    """The axes of a batched input a slope element's gradient sums over: the batch and every
    axis along which the slope is shared."""
    padded = slope_shape(slope_shape_, in_shape)
    return (0,) + tuple(i + 1 for i, d in enumerate(padded) if d == 1)


@register("PRelu")
class PRelu(Layer):
    trainable = True

    def __init__(self, node, spec):
        super().__init__(node, spec)
        slope = np.asarray(node.params.get("slope", np.full(1, 0.25)), dtype=np.float64)
        shape = self.in_shapes[0]
        ok = slope.ndim <= len(shape) and all(s in (1, d) for s, d in zip(slope_shape(slope.shape, shape), shape))
        if not ok or not np.all(np.isfinite(slope)):
            raise EdgeDFAError(f"node {node.name!r} (PRelu): slope of shape {list(slope.shape)} must be finite and"
                               f" broadcast to the per-sample input shape {list(shape)}")
        if "slope" not in self.params:
            self.params["slope"] = quantize_param(slope, self.num.weight_bits, weight_format_bits(self.num, slope))

    def _product(self, x: QTensor):
        """(q·a exact, its format): the negative side's product register."""
        a = self.params["slope"]
        return x.codes * a.codes, acc_format(self.num.acc_bits, x.fmt.frac_bits + a.fmt.frac_bits)

    def forward(self, xs, train=False):
        x = xs[0]
        p, p_fmt = self._product(x)
        neg = requantize(p, p_fmt, x.fmt, self.num.act_rounding, self.num.act_overflow)
        pos = x.codes > 0
        y = QTensor(np.where(pos, x.codes, neg), x.fmt)
        if not train:
            return y, None
        return y, (x, pos | inside_range(QTensor(p, p_fmt), x.fmt))  # a clamped output passes no error

    def backward(self, cache, dy, need_dx):
        """slope: Σ dy·x over x <= 0 (exact); dx = narrow(dy · (1 or a))."""
        x, live = cache
        num, a = self.num, self.params["slope"]
        d = dy.codes * live
        neg = x.codes <= 0
        self._check_sum(x, dy, d.size // a.codes.size)
        g = (d * np.where(neg, x.codes, 0)).sum(axis=sum_axes(a.codes.shape, self.in_shapes[0]), keepdims=True)
        grads = {"slope": QTensor(g.reshape(a.codes.shape), acc_format(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))}
        if not need_dx[0]:
            return [None], grads
        f_d = max(a.fmt.frac_bits, 0)  # the derivative 1 or a, with f_d fraction bits
        deriv = np.where(neg, a.codes << (f_d - a.fmt.frac_bits), np.int64(1) << f_d)
        return [narrow_wide(d * deriv, dy.fmt.frac_bits + f_d, num.err_bits, num.err_rounding)], grads

    def _check_sum(self, x: QTensor, dy: QTensor, terms: int) -> None:
        top = (dy.fmt.width - 1) + (x.fmt.width - 1) + max(terms - 1, 0).bit_length()
        if top > SUM_BITS_MAX:
            raise EdgeDFAError(f"node {self.name!r} (PRelu): the slope gradient sums {terms} products of"
                               f" {dy.fmt.width}x{x.fmt.width} bits, which could need {top} bits (at most"
                               f" {SUM_BITS_MAX}); use a smaller batch or narrower words")

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)
