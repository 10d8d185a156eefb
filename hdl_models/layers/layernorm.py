"""Layer normalization on the accelerator (§8.8): the normalisation unit of BatchNorm (§8.7)
with its statistics per row (one sample's values over the normalised trailing axes) and γ, β
per feature; no running statistics. Backward: dγ, dβ over the rows, e = γ·dy narrowed, the
per-row bracket and the row scale."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat

from ..accounting import Cost, nbytes
from ..norm_unit import BACKWARD_SCALAR_CYCLES, EPS_FRAC, GUARD, SCALAR_CYCLES, leading_one, rne, rsqrt
from .base import HwLayer, T, acc_fmt, register
from .batchnorm import affine_pass, input_error, norm_constants, normalise_groups, one_block, top_bits
from .dense import live_mask


@register("LayerNorm")
class LayerNormHw(HwLayer):
    trainable = True
    own_format = True
    centred = True  # the S1 accumulator and the subtracter of μ; §8.11 has neither

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.d, self.channels, self.positions = self.rows()
        self.eps, self.xh = norm_constants(self.attrs, self.num)

    def rows(self) -> tuple:
        """(row length, γ/β count, positions per γ/β): a row per sample's normalised axes, a
        parameter per feature."""
        shape = self.in_shapes[0]
        axis = int(self.attrs.get("axis", -1))
        d = int(np.prod(shape[len(shape) + axis:], dtype=np.int64))
        return d, d, 1

    def view(self, codes):
        """(M, parameters, positions): the affine unit's addressing of γ and β."""
        return codes.reshape(-1, self.channels, self.positions)

    def rows_of(self, codes):
        """(rows, D): the statistics unit's addressing, a row's values consecutive."""
        return codes.reshape(-1, self.d)

    def from_rows(self, rows):
        """Row-ordered codes (x̂, dx) in the affine unit's addressing."""
        return self.view(rows)

    def gamma_beta(self) -> tuple:
        return self.params["scale"], self.params["B"]

    def sums(self, rows) -> list:
        """S1 per row (the mean's numerator); none without the mean."""
        return rows.sum(axis=1).tolist() if self.centred else [0] * rows.shape[0]

    def _row_scalars(self, acc, x2, x_fmt):
        """Per row: mean (F_x + G) and the inverse standard deviation as a gain; the divider's cycles."""
        n, f_x = self.d, x_fmt.frac_bits
        if max(2 * x_fmt.width - 2, self.num.err_bits + 8 + self.xh.width - 2) + leading_one(n - 1) > 62:
            raise EdgeDFAError(f"hdl_models: node {self.name!r}: {n} features need sums beyond 62 bits")
        r, L, div = acc.norm.reciprocal(n)
        e = rne(self.eps * n * n, EPS_FRAC - 2 * f_x)
        mean, gains = [], []
        for a, b in zip(self.sums(x2), (x2 * x2).sum(axis=1).tolist()):
            mean.append(rne(a * r, 32 + L - GUARD))
            t, f = rsqrt(n * b - a * a + e, 0)
            gains.append((n * t, f - f_x))
        return mean, gains, div

    def forward(self, acc, xs, train):
        x = xs[0]
        x2 = self.rows_of(x.codes)
        rows, n = x2.shape[0], x2.size
        cost = Cost()
        mean, gains, div = self._row_scalars(acc, x2, x.fmt)
        cost.use("norm", acc.norm.cycles(n) + div + rows * SCALAR_CYCLES)
        cost.macs += n
        cost.adds += (2 if self.centred else 1) * n
        acc.read(cost, "act", n * nbytes(x.fmt.width))
        xhat, units = normalise_groups(x2[None], mean, gains, x.fmt.frac_bits, self.xh, self.num.act_rounding)
        xhat = xhat[0]
        out, a, f_acc = affine_pass(self, acc, cost, x, self.from_rows(xhat), (1, self.channels, 1), self.gamma_beta())
        if not train:
            return out, None, cost
        acc.write(cost, "act", n * nbytes(self.xh.width))  # x̂ kept for the backward pass
        self.track("out", a, f_acc)
        return out, {"xhat": xhat, "live": live_mask(a, f_acc, self.out_fmt), "units": units}, cost

    def backward(self, acc, cache, dy, need):
        xhat, num = cache["xhat"], self.num
        d = self.view(dy.codes) * cache["live"]
        f_dy, f_xh = dy.fmt.frac_bits, self.xh.frac_bits
        grads = {}
        if "B" in self.params:
            grads["B"] = T(d.sum(axis=(0, 2)).reshape(self.params["B"].codes.shape), acc_fmt(num.acc_bits, f_dy))
        if "scale" in self.params:
            grads["scale"] = T((d * self.from_rows(xhat)).sum(axis=(0, 2)).reshape(self.params["scale"].codes.shape),
                               acc_fmt(num.acc_bits, f_dy + f_xh))
        size, rows = d.size, d.size // self.d
        gcost = Cost().use("norm", acc.norm.cycles(size))
        gcost.adds, gcost.macs = size, size
        acc.read(gcost, "err", size * nbytes(dy.fmt.width))
        acc.read(gcost, "act", size * nbytes(self.xh.width))
        ecost = Cost()
        if not need[0]:
            return [None], grads, ecost, gcost
        g = self.gamma_beta()[0]
        e, f_e = top_bits(d * g.codes.reshape(1, -1, 1), f_dy + g.fmt.frac_bits, num.err_bits + 8, num.err_rounding)
        e = self.rows_of(e)
        r, L, div = acc.norm.reciprocal(self.d)
        codes, fmt = input_error(e[None], xhat[None], self.sums(e), (e * xhat).sum(axis=1).tolist(), (r, L),
                                 f_e, f_xh, one_block([(iota, f_i) for iota, _, f_i in cache["units"]]), f_dy, num)
        ecost.use("norm", 3 * acc.norm.cycles(size) + div + BACKWARD_SCALAR_CYCLES * rows)
        ecost.use("requant", acc.requant.cycles(size))
        ecost.macs, ecost.adds = 3 * size, 3 * size
        acc.read(ecost, "err", size * nbytes(dy.fmt.width))
        acc.read(ecost, "act", size * nbytes(self.xh.width))
        acc.write(ecost, "err", size * nbytes(num.err_bits))
        return [T(self.from_rows(codes[0]).reshape(dy.codes.shape), fmt)], grads, ecost, gcost


@register("GroupNorm")
class GroupNormHw(LayerNormHw):
    """§8.9: a row per sample and group of C/G channels over the positions; γ, β per channel."""

    def rows(self) -> tuple:
        shape = self.in_shapes[0]
        c, p = int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
        return c // int(self.attrs["groups"]) * p, c, p


@register("RMSNorm")
class RMSNormHw(LayerNormHw):
    """§8.11: rows of the D values over the consecutive ``axes`` at each sample and position, no
    mean (S1 and μ held at 0); γ and β per feature when the graph has them, else the constant
    registers γ = 1 (fraction 0) and β = 0."""

    centred = False
    ONE = FixedFormat(2, 2)

    def rows(self) -> tuple:
        shape = [int(d) for d in self.in_shapes[0]]
        axes = sorted(int(a) for a in self.attrs["axes"])
        lo, hi = axes[0] - 1, axes[-1]
        d, p = int(np.prod(shape[lo:hi], dtype=np.int64)), int(np.prod(shape[hi:], dtype=np.int64))
        return d, d, p

    def rows_of(self, codes):
        """A row's D values lie P apart in memory: the address generator strides by P."""
        return self.view(codes).transpose(0, 2, 1).reshape(-1, self.d)

    def from_rows(self, rows):
        return rows.reshape(-1, self.positions, self.d).transpose(0, 2, 1)

    def gamma_beta(self) -> tuple:
        unit = T(np.ones(self.d, dtype=np.int64), self.ONE), T(np.zeros(self.d, dtype=np.int64), self.ONE)
        return self.params.get("scale", unit[0]), self.params.get("B", unit[1])
