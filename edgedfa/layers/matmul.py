"""MatMul of two activations (attention's ``q @ k^T`` and ``a @ v``, bilinear pooling): the
batched product through the MAC array's accumulator, requantized to a format of its own (§7)."""

from __future__ import annotations

import numpy as np

from ..fixed import FixedFormat, Overflow, QTensor, acc_format, acc_limits, apply_overflow, narrow_dynamic
from ..kernels import gemm
from .base import register
from .shape import Product

F64_EXACT = 1 << 53


def _maxabs(x) -> int:
    return int(np.abs(x).max(initial=0))


def batched_gemm(a, b, acc_bits: int, overflow) -> np.ndarray:
    """``a @ b`` over the leading (batch) axes, every output through an ``acc_bits``-bit register
    (init 0, k ascending, ``overflow`` after every addition: §4), as int64.

    The integers are those of one ``kernels.gemm`` per matrix; when no partial sum can leave the
    register (``K * max|a| * max|b|`` fits it) every overflow mode takes the exact sum, and under
    AP_WRAP the exact sum wrapped once is the step-by-step result, so those cases take one batched
    product (float64, exact below 2^53)."""
    k = a.shape[-1]
    bound = k * _maxabs(a) * _maxabs(b)
    mode, fits = Overflow.parse(overflow), bound <= acc_limits(acc_bits)[1]
    if fits or mode is Overflow.AP_WRAP:
        if bound < F64_EXACT:
            exact = np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)
        else:
            exact = np.matmul(a.astype(np.int64), b.astype(np.int64))
        return exact if fits else apply_overflow(exact, FixedFormat(acc_bits, acc_bits), mode)
    lead = a.shape[:-2]
    a3, b3 = a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:])
    out = np.stack([gemm(x, y, acc_bits, mode) for x, y in zip(a3, b3)]) if len(a3) else \
        np.zeros((0, a.shape[-2], b.shape[-1]), np.int64)
    return out.reshape(lead + out.shape[-2:])


@register("MatMul")
class MatMul(Product):
    """``y = a @ b`` of two activations with the same leading axes (the batch and, e.g., heads):
    each output a K-term dot product of codes through the accumulator (``acc_bits``,
    ``acc_overflow``), then requantized to the layer's own ``out_fmt`` (calibrated, or moved by
    the exponent unit). Errors: ``da = dy @ b^T``, ``db = a^T @ dy`` through the same
    accumulator, each narrowed to ``err_bits`` (§9.4), as a Dense's input error is."""

    def infer_shape(self):
        a, b = self.in_shapes
        return tuple(a[:-1]) + (b[-1],)

    def _wide(self, xs) -> QTensor:
        a, b = xs
        acc = batched_gemm(np.asarray(a.codes), np.asarray(b.codes), self.num.acc_bits, self.num.acc_overflow)
        return QTensor(acc, acc_format(self.num.acc_bits, a.fmt.frac_bits + b.fmt.frac_bits))

    def backward(self, cache, dy, need_dx):
        a, b = cache
        num = self.num
        outs = [None, None]
        d = np.asarray(dy.codes)
        if need_dx[0]:  # da = dy @ b^T
            bt = np.swapaxes(np.asarray(b.codes), -1, -2)
            acc = batched_gemm(d, bt, num.acc_bits, num.acc_overflow)
            outs[0] = narrow_dynamic(acc, acc_format(num.acc_bits, dy.fmt.frac_bits + b.fmt.frac_bits),
                                     num.err_bits, num.err_rounding)
        if need_dx[1]:  # db = a^T @ dy
            at = np.swapaxes(np.asarray(a.codes), -1, -2)
            acc = batched_gemm(at, d, num.acc_bits, num.acc_overflow)
            outs[1] = narrow_dynamic(acc, acc_format(num.acc_bits, a.fmt.frac_bits + dy.fmt.frac_bits),
                                     num.err_bits, num.err_rounding)
        return outs, {}
