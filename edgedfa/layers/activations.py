"""Piecewise-linear activations and their integer derivative masks (§7)."""

from __future__ import annotations

import numpy as np

from ..fixed import FixedFormat, QTensor, quantize, round_shift
from .base import Layer, register

ALPHA_FRAC = 16  # a slope (LeakyRelu's alpha, HardSigmoid's) is ap_fixed<17,1>
SLOPE_FMT = FixedFormat(ALPHA_FRAC + 1, 1)


def slope_code(value: float) -> int:
    """A slope constant as a code of SLOPE_FMT (nearest, ties to even, saturating)."""
    return int(quantize(np.array(value), SLOPE_FMT, "AP_RND_CONV", "AP_SAT"))


def relu_forward(x: QTensor) -> QTensor:
    return QTensor(np.maximum(x.codes, 0), x.fmt)


def masked(dy: QTensor, mask) -> QTensor:
    """Error through a 0/1 derivative: pass where the mask is set. A product by the mask, not
    ``np.where``: the same codes, without a branch per element (a ReLU's mask is as good as
    random, and ``np.where`` took 10x as long on a conv layer's error)."""
    return QTensor(dy.codes * mask, dy.fmt)


@register("Relu")
class Relu(Layer):
    def forward(self, xs, train=False):
        x = xs[0]
        return relu_forward(x), (x.codes > 0) if train else None

    def backward(self, cache, dy, need_dx):
        return [masked(dy, cache)], {}


@register("Clip")
class Clip(Layer):
    """Hard-tanh / ReLU6 / clip: clamp to [min, max] given in real units."""

    def _bounds(self, fmt: FixedFormat):
        lo = self.node.attrs.get("min", -np.inf)
        hi = self.node.attrs.get("max", np.inf)
        lo_c = int(quantize(np.array(lo), fmt, "AP_RND_CONV", "AP_SAT"))
        hi_c = int(quantize(np.array(hi), fmt, "AP_RND_CONV", "AP_SAT"))
        return lo_c, hi_c

    def forward(self, xs, train=False):
        x = xs[0]
        lo, hi = self._bounds(x.fmt)
        y = np.clip(x.codes, lo, hi)
        return QTensor(y, x.fmt), ((x.codes > lo) & (x.codes < hi)) if train else None

    def backward(self, cache, dy, need_dx):
        return [masked(dy, cache)], {}


@register("LeakyRelu")
class LeakyRelu(Layer):
    """x for x >= 0, else x * alpha with alpha in ap_ufixed<16,0> and AP_RND."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        alpha = float(node.attrs.get("alpha", 0.01))
        self.alpha_code = slope_code(alpha)

    def _scale(self, codes, rounding):
        return round_shift(codes * self.alpha_code, ALPHA_FRAC, rounding)

    def forward(self, xs, train=False):
        x = xs[0]
        y = np.where(x.codes >= 0, x.codes, self._scale(x.codes, self.num.act_rounding))
        return QTensor(y, x.fmt), (x.codes >= 0) if train else None

    def backward(self, cache, dy, need_dx):
        neg = self._scale(dy.codes, self.num.err_rounding)
        return [QTensor(np.where(cache, dy.codes, neg), dy.fmt)], {}
