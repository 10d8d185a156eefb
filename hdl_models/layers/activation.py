"""Element-wise activations on the activation unit: ReLU, Clip, LeakyReLU masks, the
piecewise-linear hard sigmoid and the §9 ROMs for tanh/sigmoid, the normal CDF, ELU and softplus
with their derivatives."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, Overflow

from .. import activation_unit as act
from ..accounting import Cost, nbytes
from ..requant_unit import narrow, requant, shift_round
from .base import HwLayer, T, register


SLOPE_FRAC = 16  # a slope constant (LeakyRelu's alpha, HardSigmoid's) is ap_fixed<17,1>


def _slope(value: float) -> int:
    return act.quantize_bound(value, FixedFormat(SLOPE_FRAC + 1, 1))


@register("Relu")
class ReluHw(HwLayer):
    def forward(self, acc, xs, train):
        x = xs[0]
        y, mask = act.relu(x.codes)
        c = Cost().use("act", acc.act.cycles(y.size))
        acc.read(c, "act", y.size * nbytes(x.fmt.width))
        acc.write(c, "act", y.size * nbytes(x.fmt.width))
        return T(y, x.fmt), (mask if train else None), c

    def backward(self, acc, cache, dy, need):
        c = Cost().use("act", acc.act.cycles(dy.codes.size))
        acc.read(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        acc.write(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        return [T(dy.codes * cache, dy.fmt)], {}, c, Cost()  # the mask gates each lane (no branch)


@register("Clip")
class ClipHw(ReluHw):
    def forward(self, acc, xs, train):
        x = xs[0]
        lo = act.quantize_bound(float(self.attrs.get("min", -np.inf)), x.fmt)
        hi = act.quantize_bound(float(self.attrs.get("max", np.inf)), x.fmt)
        y, mask = act.clip(x.codes, lo, hi)
        return T(y, x.fmt), (mask if train else None), Cost().use("act", acc.act.cycles(y.size))


@register("LeakyRelu")
class LeakyReluHw(HwLayer):
    def forward(self, acc, xs, train):
        x = xs[0]
        self.alpha = _slope(float(self.attrs.get("alpha", 0.01)))
        y, mask = act.leaky(x.codes, self.alpha, SLOPE_FRAC, self.num.act_rounding)
        return T(y, x.fmt), (mask if train else None), Cost().use("act", acc.act.cycles(y.size))

    def backward(self, acc, cache, dy, need):
        neg = shift_round(dy.codes * self.alpha, SLOPE_FRAC, self.num.err_rounding)
        return [T(np.where(cache, dy.codes, neg), dy.fmt)], {}, Cost().use("act", acc.act.cycles(dy.codes.size)), Cost()


@register("Tanh")
class TanhHw(HwLayer):
    """§9.2/§9.4 through the activation unit's ROM; output ap_fixed<act_bits,1>."""

    func, deriv = staticmethod(act.tanh), staticmethod(act.tanh_deriv)

    def forward(self, acc, xs, train):
        x = xs[0]
        fmt = FixedFormat(self.num.act_bits, 1)
        y = type(self).func(x.codes, x.fmt.frac_bits, fmt, self.num.act_rounding)
        c = Cost().use("act", acc.act.cycles(y.size))
        c.lut_lookups = int(y.size)
        return T(y, fmt), (y if train else None), c

    def backward(self, acc, cache, dy, need):
        fmt = FixedFormat(self.num.act_bits, 1)
        d, dfmt = type(self).deriv(cache, fmt)
        codes, efmt = narrow(dy.codes * d, dy.fmt.frac_bits + dfmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        return [T(codes, efmt)], {}, Cost().use("act", acc.act.cycles(codes.size)), Cost()


@register("Sigmoid")
class SigmoidHw(TanhHw):
    func, deriv = staticmethod(act.sigmoid), staticmethod(act.sigmoid_deriv)


@register("NormalCdf")
class NormalCdfHw(HwLayer):
    """§9.8: the erf ROM forward into ap_fixed<act_bits,1>; the input codes are kept, and the
    backward reads the density ROM at their address (phi is no function of the output)."""

    def forward(self, acc, xs, train):
        x = xs[0]
        fmt = FixedFormat(self.num.act_bits, 1)
        y = act.normal_cdf(x.codes, x.fmt.frac_bits, fmt, self.num.act_rounding)
        c = Cost().use("act", acc.act.cycles(y.size))
        c.lut_lookups = int(y.size)
        return T(y, fmt), (x if train else None), c

    def backward(self, acc, cache, dy, need):
        d, dfmt = act.normal_cdf_deriv(cache.codes, cache.fmt.frac_bits, FixedFormat(self.num.act_bits, 1))
        codes, efmt = narrow(dy.codes * d, dy.fmt.frac_bits + dfmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        c = Cost().use("act", acc.act.cycles(codes.size))
        c.lut_lookups = int(codes.size)
        return [T(codes, efmt)], {}, c, Cost()


@register("Elu")
class EluHw(HwLayer):
    """§9.9: gamma*x above zero, -gamma*alpha*(1 - exp(x)) from the expm1 ROM at |x|/2 at or
    below, one multiplier and the output rounder; the output codes are kept and the derivative
    is gamma, or y + gamma*alpha (one adder, floored at 0), from them."""

    def _coefs(self):
        return act.elu_coefficients(float(self.attrs.get("alpha", 1.0)), float(self.attrs.get("gamma", 1.0)))

    def forward(self, acc, xs, train):
        x = xs[0]
        c_pos, c_neg = self._coefs()
        fmt = act.elu_out_format(x.fmt, c_pos, c_neg)
        y = act.elu(x.codes, x.fmt.frac_bits, fmt, c_pos, c_neg, self.num.act_rounding)
        c = Cost().use("act", acc.act.cycles(y.size))
        c.lut_lookups, c.macs = int(y.size), int(y.size)
        return T(y, fmt), (T(y, fmt) if train else None), c

    def backward(self, acc, cache, dy, need):
        d, f_d = act.elu_deriv(cache.codes, cache.fmt, *self._coefs())
        codes, efmt = narrow(dy.codes * d, dy.fmt.frac_bits + f_d, self.num.err_bits, self.num.err_rounding)
        c = Cost().use("act", acc.act.cycles(codes.size))
        c.macs += codes.size
        return [T(codes, efmt)], {}, c, Cost()


@register("Softplus")
class SoftplusHw(HwLayer):
    """§9.10: the softplus ROM at |x|/2 plus max(x, 0), one adder and the output rounder; the input
    codes are kept and the backward reads sigmoid(x) from the tanh ROM at their address."""

    def forward(self, acc, xs, train):
        x = xs[0]
        fmt = act.softplus_out_format(x.fmt)
        y = act.softplus(x.codes, x.fmt.frac_bits, fmt, self.num.act_rounding)
        c = Cost().use("act", acc.act.cycles(y.size))
        c.lut_lookups = int(y.size)
        return T(y, fmt), (x if train else None), c

    def backward(self, acc, cache, dy, need):
        d, dfmt = act.softplus_deriv(cache.codes, cache.fmt.frac_bits, act.softplus_out_format(cache.fmt))
        codes, efmt = narrow(dy.codes * d, dy.fmt.frac_bits + dfmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        c = Cost().use("act", acc.act.cycles(codes.size))
        c.lut_lookups = int(codes.size)
        return [T(codes, efmt)], {}, c, Cost()


@register("HardSigmoid")
class HardSigmoidHw(HwLayer):
    """clip(alpha x + beta, 0, 1) on the activation unit: one multiply by the ap_fixed<17,1>
    slope, one add of beta aligned to the product, the requantizer into ap_fixed<act_bits,1>
    and a floor at 0; the error is dy times the slope where the sum lies strictly inside."""

    def _wide(self, x):
        self.alpha = _slope(float(self.attrs.get("alpha", 0.2)))
        f = x.fmt.frac_bits + SLOPE_FRAC
        if f > 46:
            raise EdgeDFAError(f"{self.name}: an input with {x.fmt.frac_bits} fraction bits leaves beta no 48-bit format")
        beta = act.quantize_bound(float(self.attrs.get("beta", 0.5)), FixedFormat.with_frac(48, f))
        return np.asarray(x.codes, dtype=np.int64) * self.alpha + beta, f

    def forward(self, acc, xs, train):
        wide, f = self._wide(xs[0])
        fmt = FixedFormat(self.num.act_bits, 1)
        y = np.maximum(requant(wide, f, fmt, self.num.act_rounding, Overflow.AP_SAT), 0)
        c = Cost().use("act", acc.act.cycles(y.size)).use("requant", acc.requant.cycles(y.size))
        c.macs += y.size
        return T(y, fmt), (((wide > 0) & (wide < (1 << f))) if train else None), c

    def backward(self, acc, cache, dy, need):
        codes, efmt = narrow(dy.codes * (cache * self.alpha), dy.fmt.frac_bits + SLOPE_FRAC, self.num.err_bits,
                             self.num.err_rounding)
        c = Cost().use("act", acc.act.cycles(codes.size))
        c.macs += codes.size
        return [T(codes, efmt)], {}, c, Cost()
