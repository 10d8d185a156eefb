"""Tanh, Sigmoid, NormalCdf, Elu and Softplus layers: the §9 table unit forward, integer
derivative backward; HardSigmoid, the piecewise-linear one (§7)."""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, Overflow, QTensor, narrow_wide, quantize, requantize
from ..lut import (delu_codes, delu_format, dnormal_cdf_codes, dnormal_cdf_format, dsigmoid_codes, dsigmoid_format,
                   dsoftplus_codes, dsoftplus_format, dtanh_codes, dtanh_format, elu_codes, elu_coefficients, elu_format,
                   normal_cdf_codes, sigmoid_codes, softplus_codes, softplus_format, tanh_codes)
from .activations import ALPHA_FRAC, SLOPE_FMT, slope_code
from .base import Layer, register


def bounded_format(num) -> FixedFormat:
    """Static output format of tanh/sigmoid: ap_fixed<act_bits,1> (values in [-1, 1))."""
    return FixedFormat(num.act_bits, 1)


def times_derivative(dy: QTensor, d_codes, d_fmt: FixedFormat, num) -> QTensor:
    """dy * f'(x): exact product, then the top err_bits kept (dynamic exponent, §9.4)."""
    wide = dy.codes * np.asarray(d_codes, dtype=np.int64)
    return narrow_wide(wide, dy.fmt.frac_bits + d_fmt.frac_bits, num.err_bits, num.err_rounding)


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


@register("NormalCdf")
class NormalCdf(_Bounded):
    """y = Phi(x) = (1 + erf(x/sqrt 2)) / 2 by the §9.8 erf table (PyTorch's GELU is x times it,
    either form: the tanh approximation is read as the exact Phi); dx = dy * phi(x), the density
    from its own table at the cached input's address."""

    def forward(self, xs, train=False):
        x = xs[0]
        y = normal_cdf_codes(x.codes, x.fmt, self.out_fmt, self.num.act_rounding)
        return QTensor(y, self.out_fmt), (x if train else None)

    def backward(self, cache, dy, need_dx):
        d = dnormal_cdf_codes(cache.codes, cache.fmt, self.out_fmt)
        return [times_derivative(dy, d, dnormal_cdf_format(self.out_fmt), self.num)], {}


@register("Elu")
class Elu(Layer):
    """y = gamma * ELU_alpha(x) (ONNX Elu; Selu with its gamma; Celu of alpha 1) by §9.9: gamma x
    above zero, -gamma alpha (1 - exp(x)) from the expm1 table at or below; the output keeps the
    input's format with the integer bits gamma, gamma alpha > 1 need; dx = dy * gamma above zero,
    dy * (y + gamma alpha) at or below, from the cached output."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.c_pos, self.c_neg = elu_coefficients(float(node.attrs.get("alpha", 1.0)),
                                                  float(node.attrs.get("gamma", 1.0)))

    def calibrate(self, xs):
        self.out_fmt = elu_format(xs[0].fmt, self.c_pos, self.c_neg)

    def refresh_format(self, in_fmts):
        if in_fmts and in_fmts[0] is not None:
            self.out_fmt = elu_format(in_fmts[0], self.c_pos, self.c_neg)

    def forward(self, xs, train=False):
        x = xs[0]
        fmt = elu_format(x.fmt, self.c_pos, self.c_neg)
        y = QTensor(elu_codes(x.codes, x.fmt, fmt, self.c_pos, self.c_neg, self.num.act_rounding), fmt)
        return y, (y if train else None)

    def backward(self, cache, dy, need_dx):
        d = delu_codes(cache.codes, cache.fmt, self.c_pos, self.c_neg)
        return [times_derivative(dy, d, delu_format(cache.fmt), self.num)], {}


@register("Softplus")
class Softplus(Layer):
    """y = softplus(x) = max(x, 0) + log(1 + exp(-|x|)) by §9.10 (PyTorch's nn.Softplus at beta 1;
    its nn.Mish is x tanh of it): the table at |x|/2 plus max(x, 0), one rounding into the input's
    width with max(I_in, 1) + 1 integer bits; dx = dy * sigmoid(x), the tanh table's sigmoid read
    at the cached input's address."""

    def calibrate(self, xs):
        self.out_fmt = softplus_format(xs[0].fmt)

    def refresh_format(self, in_fmts):
        if in_fmts and in_fmts[0] is not None:
            self.out_fmt = softplus_format(in_fmts[0])

    def forward(self, xs, train=False):
        x = xs[0]
        fmt = softplus_format(x.fmt)
        return QTensor(softplus_codes(x.codes, x.fmt, fmt, self.num.act_rounding), fmt), (x if train else None)

    def backward(self, cache, dy, need_dx):
        out_fmt = softplus_format(cache.fmt)
        d = dsoftplus_codes(cache.codes, cache.fmt, out_fmt)
        return [times_derivative(dy, d, dsoftplus_format(out_fmt), self.num)], {}


@register("HardSigmoid")
class HardSigmoid(Layer):
    """y = clip(alpha x + beta, 0, 1) (ONNX HardSigmoid; PyTorch's nn.Hardsigmoid has alpha
    1/6, beta 1/2, and its nn.Hardswish is x times it): alpha as a code of ap_fixed<17,1>, beta
    in the product's format, the sum requantized into ap_fixed<act_bits,1> (1 saturates one
    LSB under, as the sigmoid table's) and floored at 0. The error passes where
    0 < alpha x + beta < 1, times alpha, its top err_bits kept (§7, §9.4)."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.alpha_code = slope_code(float(node.attrs.get("alpha", 0.2)))
        self.beta = float(node.attrs.get("beta", 0.5))
        self.out_fmt = bounded_format(self.num)

    def calibrate(self, xs):
        self.out_fmt = bounded_format(self.num)

    def refresh_format(self, in_fmts):
        pass  # bounded values: the format never moves

    def beta_code(self, in_fmt: FixedFormat) -> tuple:
        """(beta's code, the fraction bits of alpha x + beta) for an input in ``in_fmt``."""
        frac = in_fmt.frac_bits + ALPHA_FRAC
        if frac > 46:
            raise EdgeDFAError(f"{self.name}: an input with {in_fmt.frac_bits} fraction bits leaves beta no "
                               "48-bit format; HardSigmoid takes inputs of at most 30 fraction bits")
        return int(quantize(np.array(self.beta), FixedFormat.with_frac(48, frac), "AP_RND_CONV", "AP_SAT")), frac

    def _wide(self, x: QTensor):
        """(alpha x + beta codes, their fraction bits)."""
        beta, frac = self.beta_code(x.fmt)
        return np.asarray(x.codes, np.int64) * self.alpha_code + beta, frac

    def forward(self, xs, train=False):
        wide, frac = self._wide(xs[0])
        y = np.maximum(requantize(wide, FixedFormat.with_frac(48, frac), self.out_fmt, self.num.act_rounding,
                                  Overflow.AP_SAT), 0)
        return QTensor(y, self.out_fmt), (((wide > 0) & (wide < (1 << frac))) if train else None)

    def backward(self, cache, dy, need_dx):
        return [times_derivative(dy, cache * self.alpha_code, SLOPE_FMT, self.num)], {}
