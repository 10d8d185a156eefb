"""Softmax over one non-batch axis inside the graph (attention pooling, softmax gating), §8.10:
§11's base-2 exponent per element, an exact sum per row, one reciprocal per row, a product
requantized into a format of its own; backward dx = y ⊙ (dy − Σ dy ⊙ y), exact, narrowed."""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor, narrow_wide, requantize
from ..loss import exp2_codes
from ..scaling import observe
from .base import Layer, register
from .dense import calibrated_format

RECIP_FRAC = 46  # the row's reciprocal r = round(2^46 / S): p = e·r has 46 fraction bits
MAX_ROW = 1 << 24  # S < 2^39 keeps r >= 2^7


def reciprocal(total: np.ndarray) -> np.ndarray:
    """r = floor((2^46 + floor(S/2)) / S): 2^46 / S rounded half up, S >= 2^15 (the row's max)."""
    return ((np.int64(1) << RECIP_FRAC) + total // 2) // total


def softmax_wide(x: QTensor, axis: int) -> QTensor:
    """p = e·r per element (46 fraction bits), e the §11 exponent codes, r the row's reciprocal."""
    num = exp2_codes(np.asarray(x.codes, np.int64), x.fmt.frac_bits, axis)
    return QTensor(num * reciprocal(num.sum(axis=axis, keepdims=True)), FixedFormat.with_frac(48, RECIP_FRAC))


def backward_bound(y_fmt: FixedFormat, e_width: int, length: int) -> int:
    """Bit length bound of y·c in the backward pass (|y| < 2^(A-1), |dy| < 2^(E-1))."""
    f = y_fmt.frac_bits
    c = (1 << (e_width - 1 + max(f, 0))) + length * (1 << (e_width - 1 + y_fmt.width - 1 + max(-f, 0)))
    return ((1 << (y_fmt.width - 1)) * c).bit_length()


@register("Softmax")
class Softmax(Layer):
    """y = softmax(x) along ``axis`` (attr, the batch at 0 never): e^(x − max) by §11's LUT and
    shifter, the row sum exact, one reciprocal per row, e·r requantized into the layer's own
    calibrated format (moved by the exponent unit under adaptive scaling); the error is
    y ⊙ (dy − Σ_axis dy ⊙ y), exact, then its top err_bits kept (§8.10)."""

    changes_scale = True

    def __init__(self, node, spec):
        super().__init__(node, spec)
        rank = len(self.in_shapes[0]) + 1
        axis = int(node.attrs.get("axis", -1))
        self.axis = axis + rank if axis < 0 else axis
        if not 1 <= self.axis < rank:
            raise EdgeDFAError(f"node {self.name!r}: Softmax over axis {axis} of a rank-{rank} input: only a"
                               " non-batch axis")
        self.length = int(self.in_shapes[0][self.axis - 1])
        if self.length > MAX_ROW:
            raise EdgeDFAError(f"node {self.name!r}: Softmax over {self.length} values; at most 2^24")

    def forward(self, xs, train=False):
        wide = softmax_wide(xs[0], self.axis)
        y = requantize(wide.codes, wide.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            observe(self, "out", wide, self.out_fmt, y)
        return QTensor(y, self.out_fmt), (QTensor(y, self.out_fmt) if train else None)

    def calibrate(self, xs):
        self.out_fmt = calibrated_format(softmax_wide(xs[0], self.axis), self.num)

    def backward(self, cache, dy, need_dx):
        y, f_y, f_dy = cache.codes, cache.fmt.frac_bits, dy.fmt.frac_bits
        if backward_bound(cache.fmt, dy.fmt.width, self.length) > 62:
            raise EdgeDFAError(f"node {self.name!r} (Softmax), backward: a {cache.fmt} output, {dy.fmt.width}-bit"
                               f" errors over {self.length} values could pass 62 bits")
        d = np.asarray(dy.codes, np.int64)
        s = (d * y).sum(axis=self.axis, keepdims=True)  # exact, F_dy + F_y
        f_c = f_dy + max(f_y, 0)
        c = (d << (f_c - f_dy)) - (s << (f_c - f_dy - f_y))
        return [narrow_wide(y * c, f_y + f_c, self.num.err_bits, self.num.err_rounding)], {}
