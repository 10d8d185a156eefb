"""Tanh and Sigmoid layers: the §9 table unit forward, integer derivative backward."""

from __future__ import annotations

import numpy as np

from ..fixed import FixedFormat, QTensor, narrow_dynamic
from ..lut import dsigmoid_codes, dsigmoid_format, dtanh_codes, dtanh_format, sigmoid_codes, tanh_codes
from .base import Layer, register


def bounded_format(num) -> FixedFormat:
    """Static output format of tanh/sigmoid: ap_fixed<act_bits,1> (values in [-1, 1))."""
    return FixedFormat(num.act_bits, 1)


def times_derivative(dy: QTensor, d_codes, d_fmt: FixedFormat, num) -> QTensor:
    """dy * f'(x): exact product, then the top err_bits kept (dynamic exponent, §9.4)."""
    wide = dy.codes * np.asarray(d_codes, dtype=np.int64)
    fmt = FixedFormat.with_frac(48, dy.fmt.frac_bits + d_fmt.frac_bits)
    return narrow_dynamic(wide, fmt, num.err_bits, num.err_rounding)


class _Bounded(Layer):
    """Element-wise table function with a fixed ap_fixed<act_bits,1> output; caches y."""

    func = None
    deriv = None
    deriv_format = None

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.out_fmt = bounded_format(self.num)

    def calibrate(self, xs):
        self.out_fmt = bounded_format(self.num)

    def refresh_format(self, in_fmts):
        pass  # bounded values: the format never moves

    def forward(self, xs, train=False):
        x = xs[0]
        y = type(self).func(x.codes, x.fmt, self.out_fmt, self.num.act_rounding)
        return QTensor(y, self.out_fmt), (y if train else None)

    def backward(self, cache, dy, need_dx):
        d = type(self).deriv(cache, self.out_fmt)
        return [times_derivative(dy, d, type(self).deriv_format(self.out_fmt), self.num)], {}


@register("Tanh")
class Tanh(_Bounded):
    """y = tanh(x) by the §9 table; dx = dy * (1 - y^2)."""

    func = staticmethod(tanh_codes)
    deriv = staticmethod(dtanh_codes)
    deriv_format = staticmethod(dtanh_format)


@register("Sigmoid")
class Sigmoid(_Bounded):
    """y = sigmoid(x) = (1 + tanh(x/2)) / 2 by the §9 table; dx = dy * y (1 - y)."""

    func = staticmethod(sigmoid_codes)
    deriv = staticmethod(dsigmoid_codes)
    deriv_format = staticmethod(dsigmoid_format)
