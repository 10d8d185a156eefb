"""Fully connected layer: forward, backward (BP), weight update side by side (§7-8)."""

from __future__ import annotations

import numpy as np

from ..kernels import gemm
from ..fixed import FixedFormat, QTensor, acc_format, int_bits_for, narrow_dynamic, quantize, requantize
from ..scaling import observe
from ..update import update_params
from .base import Layer, register


def quantize_param(w: np.ndarray, bits: int, int_bits: int) -> QTensor:
    """Float parameter to codes of ap_fixed<bits, int_bits>, to nearest, saturating."""
    fmt = FixedFormat(bits, int_bits)
    return QTensor(quantize(w, fmt, "AP_RND_CONV", "AP_SAT"), fmt)


def quantize_weight_and_bias(layer: Layer, node) -> None:
    """W and optional B of a Dense/Conv node to their static formats (§7)."""
    w = np.asarray(node.params["W"], dtype=np.float64)
    layer.params["W"] = quantize_param(w, layer.num.weight_bits, weight_format_bits(layer.num, w))
    if "B" in node.params:
        b = np.asarray(node.params["B"], dtype=np.float64)
        ib = max(int_bits_for(float(np.abs(b).max()) if b.size else 0.0, 1),
                 layer.params["W"].fmt.int_bits + 3)
        layer.params["B"] = quantize_param(b, layer.num.bias_bits, ib)


def weight_format_bits(num, w) -> int:
    """Integer bits of a weight format: fixed by config, or from the initial max with headroom."""
    if num.weight_int_bits is not None:
        return num.weight_int_bits
    return int_bits_for(float(np.abs(w).max()) if w.size else 0.0, num.weight_headroom)


def linear_forward(x: QTensor, w: QTensor, b: QTensor | None, num, out_fmt, backend=None):
    """y = requantize(x @ w.T + b): returns (output QTensor, wide accumulator QTensor)."""
    frac = x.fmt.frac_bits + w.fmt.frac_bits
    afmt = acc_format(num.acc_bits, frac)
    init = None
    if b is not None:
        init = requantize(b.codes, b.fmt, afmt, num.act_rounding, num.acc_overflow)[None, :]
    acc = gemm(x.codes, w.codes.T, num.acc_bits, num.acc_overflow, init, backend)
    acc_t = QTensor(acc, afmt)
    if out_fmt is None:
        return None, acc_t
    return QTensor(requantize(acc, afmt, out_fmt, num.act_rounding, num.act_overflow), out_fmt), acc_t


def linear_backward(x: QTensor, w: QTensor, dy: QTensor, num, need_dx: bool, backend=None):
    """(dx narrowed to err_bits or None, dW wide, dB wide) for y = x @ w.T + b."""
    gw = gemm(dy.codes.T, x.codes, num.acc_bits, num.acc_overflow, None, backend)
    dw = QTensor(gw, acc_format(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))
    db = QTensor(dy.codes.sum(axis=0), acc_format(num.acc_bits, dy.fmt.frac_bits))
    dx = None
    if need_dx:
        acc = gemm(dy.codes, w.codes, num.acc_bits, num.acc_overflow, None, backend)
        dx = narrow_dynamic(acc, acc_format(num.acc_bits, dy.fmt.frac_bits + w.fmt.frac_bits),
                            num.err_bits, num.err_rounding)
    return dx, dw, db


@register("Dense")
class Dense(Layer):
    trainable = True
    changes_scale = True

    def __init__(self, node, spec):
        super().__init__(node, spec)
        quantize_weight_and_bias(self, node)

    def infer_shape(self):
        return tuple(self.in_shapes[0][:-1]) + (int(np.shape(self.node.params["W"])[0]),)

    def _flat(self, x: QTensor) -> QTensor:
        return QTensor(x.codes.reshape(-1, x.codes.shape[-1]), x.fmt)

    def forward(self, xs, train=False):
        x = xs[0]
        y, acc = linear_forward(self._flat(x), self.params["W"], self.params.get("B"), self.num,
                                self.out_fmt, self.backend)
        if not train:
            return QTensor(y.codes.reshape(x.codes.shape[:-1] + (-1,)), y.fmt), None
        observe(self, "out", acc, y.fmt, y.codes)
        y = QTensor(y.codes.reshape(x.codes.shape[:-1] + (-1,)), y.fmt)
        return y, (x, inside_range(acc, y.fmt).reshape(y.codes.shape))

    def calibrate(self, xs):
        _, acc = linear_forward(self._flat(xs[0]), self.params["W"], self.params.get("B"),
                                self.num, None, self.backend)
        self.out_fmt = calibrated_format(acc, self.num)

    def backward(self, cache, dy, need_dx):
        xin, live = cache
        x = self._flat(xin)
        dy = QTensor(np.where(live, dy.codes, 0), dy.fmt)  # a clamped output passes no error
        dyf = QTensor(dy.codes.reshape(-1, dy.codes.shape[-1]), dy.fmt)
        dx, dw, db = linear_backward(x, self.params["W"], dyf, self.num, need_dx[0], self.backend)
        grads = {"W": dw}
        if "B" in self.params:
            grads["B"] = db
        if dx is not None:
            dx = QTensor(dx.codes.reshape(xin.codes.shape), dx.fmt)
        return [dx], grads

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)


def inside_range(acc: QTensor, out_fmt: FixedFormat) -> np.ndarray:
    """True where the accumulator lies inside the output format's range (clamp derivative)."""
    shift = acc.fmt.frac_bits - out_fmt.frac_bits
    lo, hi = out_fmt.min_code, out_fmt.max_code
    if shift <= 0:  # acc * 2^-shift must lie in [lo, hi]: ceil and floor of the bounds
        return (acc.codes >= -((-lo) >> -shift)) & (acc.codes <= hi >> -shift)
    return (acc.codes >= (lo << shift)) & (acc.codes < ((hi + 1) << shift))


def calibrated_format(acc: QTensor, num) -> FixedFormat:
    """Static activation format: fixed I from config, or one spare bit over the batch max."""
    if num.act_int_bits is not None:
        return FixedFormat(num.act_bits, num.act_int_bits)
    maxabs = float(np.abs(acc.codes).max()) * acc.fmt.lsb if acc.codes.size else 0.0
    return FixedFormat(num.act_bits, int_bits_for(maxabs, 1))
