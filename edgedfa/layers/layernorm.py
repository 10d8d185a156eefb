"""Layer normalization (docs/datapath.md §8.8): BatchNorm's arithmetic (§8.7) with the
statistics taken per sample over the normalised trailing axes instead of per channel over the
batch; γ and β per feature. Forward, backward and update side by side.

A row is one sample's (and leading position's) ``D`` values over the normalised axes; the
codes are viewed as (R, D). Per-row scalars (sums, mean, Q, gains) are exact Python integers
until a rounding of §8.7; elements are int64 codes. No running statistics: training and
inference normalise alike. Parameters ``scale`` (γ) and ``B`` (β), shaped like the normalised
axes (their gradients too), viewed flat by the arithmetic, trained by the layer's update rule.
The affine sees the codes as (M, channels, positions) with a parameter per channel: here one
per feature (positions 1); GroupNorm (groupnorm.py, §8.9) changes only the rows and this view.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor, acc_format, int_bits_for, requantize
from ..scaling import observe
from ..update import update_params
from .base import Layer, register
from .batchnorm import (EPS_FRAC, XHAT_INT, group_statistics, input_error, narrow, normalise_groups, one_block,
                        scale_shift)
from .dense import calibrated_format, inside_range, quantize_param, weight_format_bits


def normalised_axes(in_shape, axis: int) -> tuple:
    """The per-sample shape's trailing axes ``axis`` (negative, counted on the batched shape)
    names: -1 the last, ... -len(in_shape) the first after the batch."""
    return tuple(int(d) for d in in_shape[len(in_shape) + axis:])


@register("LayerNorm")
class LayerNorm(Layer):
    trainable = True
    changes_scale = True
    centred = True  # x − μ; RMSNorm (rmsnorm.py) leaves the mean out

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.where = f"node {node.name!r} ({self.op})"
        self._geometry(node)
        for key in self.affine_keys(node):
            if np.size(node.params.get(key, ())) != self.channels:
                raise EdgeDFAError(f"{self.where}: parameter {key} must hold {self.channels} values")
        eps = float(node.attrs.get("epsilon", 1e-5))
        if not math.isfinite(eps) or eps < 0 or eps >= 2 ** 20:
            raise EdgeDFAError(f"{self.where}: epsilon {eps} must be a finite number in [0, 2^20)")
        self.eps_code = int(np.rint(np.ldexp(eps, EPS_FRAC)))
        self.xhat_fmt = FixedFormat(min(self.num.act_bits + 8, 24), XHAT_INT)
        keys = self.affine_keys(node)
        if keys and keys[0] not in self.params:
            p = {k: np.asarray(node.params[k], dtype=np.float64).reshape(self.param_shape) for k in keys}
            if "scale" in p:
                self.params["scale"] = quantize_param(p["scale"], self.num.weight_bits,
                                                      weight_format_bits(self.num, p["scale"]))
            if "B" in p:
                ib = max(int_bits_for(float(np.abs(p["B"]).max()), 1), self.gamma().fmt.int_bits + 3)
                self.params["B"] = quantize_param(p["B"], self.num.bias_bits, ib)

    def affine_keys(self, node) -> tuple:
        """The affine's parameters: γ and β both (RMSNorm: those the graph has)."""
        return ("B", "scale")

    def _geometry(self, node) -> None:
        """The row length ``features`` (D) and the affine's view (``channels`` parameters, each
        over ``positions`` consecutive codes): a row is one sample's normalised axes, a
        parameter per feature."""
        shape = tuple(self.in_shapes[0])
        axis = int(node.attrs.get("axis", -1))
        if not shape or not -len(shape) <= axis <= -1:
            raise EdgeDFAError(f"{self.where}: axis {axis} must name trailing axes of the {len(shape)} after the batch")
        self.axis = axis
        self.param_shape = normalised_axes(shape, axis)
        self.features = self.channels = int(np.prod(self.param_shape, dtype=np.int64))
        self.positions = 1

    # ------------------------------------------------------------------ statistics
    def _rows(self, codes):
        return codes.reshape(-1, self.features)

    def _check_width(self, x_fmt: FixedFormat) -> None:
        """The exact sums fit 62 bits: S2 over a row's activations, the backward's Σe·x̂."""
        lg = (self.features - 1).bit_length()
        top = max(2 * x_fmt.width - 2, self.num.err_bits + 8 + self.xhat_fmt.width - 2) + lg
        if top > 62:
            raise EdgeDFAError(f"{self.where}: {self.features} values per row at these widths need"
                               f" sums of {top} bits (at most 62); use narrower words")

    def statistics(self, x: QTensor) -> dict:
        """Per row: μ, Q and the inverse standard deviation as a gain (§8.8, §8.7 steps 1-4)."""
        x2 = self._rows(x.codes)
        self._check_width(x.fmt)
        s2 = (x2 * x2).sum(axis=1).tolist()
        return group_statistics(self._row_sums(x2), s2, self.features, self.eps_code, x.fmt.frac_bits)

    def _row_sums(self, rows) -> list:
        """Σ per row, the mean's numerator; zeros when the form has no mean (μ = 0, Q = D·S2)."""
        return rows.sum(axis=1).tolist() if self.centred else [0] * len(rows)

    # ------------------------------------------------------------------ forward
    def normalise(self, x: QTensor, stats: dict, count: bool = True):
        """(x̂ codes (R, D), per-row (ι, F_ι)): §8.7 steps 4-5 with a gain per row (the rows as
        BatchNorm's channels of one sample)."""
        xhat, units = normalise_groups(self, self._rows(x.codes)[None], x.fmt.frac_bits, stats, count)
        return xhat[0], units

    def _view(self, codes):
        """(M, channels, positions): the affine's view, a parameter per channel (axis 1)."""
        return codes.reshape(-1, self.channels, self.positions)

    def _rows_view(self, rows):
        """Codes in row order (x̂, the bracket's dx) in the affine's view."""
        return self._view(rows)

    def gamma(self) -> QTensor:
        return self.params["scale"]

    def beta(self) -> QTensor:
        return self.params["B"]

    def affine(self, xhat) -> QTensor:
        """acc = β' + γ·x̂ per parameter (§8.7 step 6), shaped as ``_view``."""
        return scale_shift(self.gamma(), self.beta(), self._rows_view(xhat), self.xhat_fmt.frac_bits,
                           self.num, (1, self.channels, 1))

    def _output(self, x: QTensor, count: bool = True):
        if self.out_fmt is None:
            raise EdgeDFAError(f"{self.where}: forward before calibrate (no output format)")
        xhat, units = self.normalise(x, self.statistics(x), count)
        acc = self.affine(xhat)
        y = requantize(acc.codes, acc.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        return xhat, units, acc, y

    def forward(self, xs, train=False):
        x = xs[0]
        xhat, units, acc, y = self._output(x)
        out = QTensor(y.reshape(x.codes.shape), self.out_fmt)
        if not train:
            return out, None
        observe(self, "out", acc, self.out_fmt, y)
        return out, {"xhat": xhat, "live": inside_range(acc, self.out_fmt), "units": units}

    def calibrate(self, xs):
        x = xs[0]
        xhat, _ = self.normalise(x, self.statistics(x), count=False)
        self.out_fmt = calibrated_format(self.affine(xhat), self.num)

    def calibration_output(self, xs):
        x = xs[0]
        return QTensor(self._output(x, count=False)[3].reshape(x.codes.shape), self.out_fmt)

    # ------------------------------------------------------------------ backward
    def backward(self, cache, dy, need_dx):
        """dγ, dβ summed over the samples (and positions); dx = ι·(e - mean(e) - x̂·mean(e·x̂)) per
        row with e = γ·dy narrowed to err_bits + 8 (§8.8)."""
        xhat, num = cache["xhat"], self.num
        d = self._view(dy.codes) * cache["live"]  # masked as activations.masked
        f_dy, f_xh = dy.fmt.frac_bits, self.xhat_fmt.frac_bits
        sums = {"B": (lambda: d.sum(axis=(0, 2)), f_dy),
                "scale": (lambda: (d * self._rows_view(xhat)).sum(axis=(0, 2)), f_dy + f_xh)}
        grads = {k: QTensor(sums[k][0]().reshape(self.param_shape), acc_format(num.acc_bits, sums[k][1]))
                 for k in sums if k in self.params}
        if not need_dx[0]:
            return [None], grads
        g = self.gamma()
        e, f_e = narrow(d * g.codes.reshape(1, -1, 1), f_dy + g.fmt.frac_bits, num.err_bits + 8, num.err_rounding)
        e = self._rows(e)
        codes, fmt = input_error(e[None], xhat[None], self._row_sums(e), (e * xhat).sum(axis=1).tolist(),
                                 self.features, f_e, f_xh, one_block(cache["units"]), f_dy, num)
        return [QTensor(self._rows_view(codes[0]).reshape(dy.codes.shape), fmt)], grads

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)

