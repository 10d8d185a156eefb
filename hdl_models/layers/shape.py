"""Data movement and merges on the accelerator (§7): Flatten, Reshape, Squeeze, Unsqueeze,
Transpose, Add, Mul, Concat.

- **Add**: the aligners left-shift every input to the finest fraction (exact), the adders
  sum them (numpy broadcasting = the address generator re-reading a broadcast operand), the
  requantization unit brings the sum to the calibrated ``out_fmt``. The error goes back
  unchanged to every input (summed over the axes an input was broadcast along).
- **Mul**: the multipliers of the activation unit form the exact product of two activations
  (fraction bits add), the requantization unit brings it to the layer's own ``out_fmt``.
  Each input's error is dy times the other input (exact; summed over the axes it was
  broadcast along), narrowed to err_bits by the leading-one detector (§9.4).
- **Concat**: each input requantized to ``out_fmt`` = ``ap_fixed<A, max I>`` and written
  at its offset; the error is split.
- **Flatten / Reshape / Squeeze / Unsqueeze / Transpose**: the address generator reads the
  buffer in another order; no unit works (free), the error goes back by the inverse
  rearrangement.
"""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat

from ..accounting import Cost, nbytes
from ..requant_unit import align_sum, narrow, requant
from .base import HwLayer, T, register


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
class FlattenHw(HwLayer):
    """Data movement: the address generator reads the same buffer in another order (free)."""

    def forward(self, acc, xs, train):
        x = xs[0]
        return T(x.codes.reshape((x.codes.shape[0],) + tuple(np.atleast_1d(self.out_shape))), x.fmt), \
            (x.codes.shape if train else None), Cost()

    def backward(self, acc, cache, dy, need):
        return [T(dy.codes.reshape(cache), dy.fmt)], {}, Cost(), Cost()


@register("Add")
class AddHw(HwLayer):
    own_format = True
    def _signs(self, n):
        """+1 per operand added, -1 per operand subtracted (the adder's subtract input)."""
        return list(self.attrs.get("signs") or [1] * n)

    def forward(self, acc, xs, train):
        wide, f = align_sum([(x.codes if s > 0 else np.negative(x.codes, dtype=np.int64), x.fmt.frac_bits, x.fmt.width)
                             for x, s in zip(xs, self._signs(len(xs)))])
        y = requant(wide, f, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            self.track("out", wide, f)
        c = Cost().use("act", acc.act.cycles(y.size * max(len(xs) - 1, 1))).use("requant", acc.requant.cycles(y.size))
        c.adds += y.size * (len(xs) - 1)
        for x in xs:
            acc.read(c, "act", x.codes.size * nbytes(x.fmt.width))
        acc.write(c, "act", y.size * nbytes(self.out_fmt.width))
        return T(y, self.out_fmt), ([x.codes.shape for x in xs] if train else None), c

    def backward(self, acc, cache, dy, need):
        outs = []
        c = Cost()
        for shape, s in zip(cache, self._signs(len(cache))):
            g = _unbroadcast(dy.codes, shape)
            if g.size != dy.codes.size:
                c.adds += dy.codes.size
            outs.append(T(g if s > 0 else -g, dy.fmt))
        c.use("act", acc.act.cycles(dy.codes.size))
        acc.read(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        return outs, {}, c, Cost()


def _unbroadcast(g, shape):
    """The address generator's accumulation of an error over a broadcast input's axes."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, s in enumerate(shape):
        if s == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


@register("Mul")
class MulHw(HwLayer):
    own_format = True

    def forward(self, acc, xs, train):
        a, b = xs
        f = a.fmt.frac_bits + b.fmt.frac_bits
        wide = np.asarray(a.codes, dtype=np.int64) * np.asarray(b.codes, dtype=np.int64)
        y = requant(wide, f, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            self.track("out", wide, f)
        c = Cost().use("act", acc.act.cycles(y.size)).use("requant", acc.requant.cycles(y.size))
        c.macs += y.size
        for x in xs:
            acc.read(c, "act", x.codes.size * nbytes(x.fmt.width))
        acc.write(c, "act", y.size * nbytes(self.out_fmt.width))
        return T(y, self.out_fmt), (list(xs) if train else None), c

    def backward(self, acc, cache, dy, need):
        outs = []
        c = Cost()
        for i, x in enumerate(cache):
            if not need[i]:
                outs.append(None)
                continue
            other = cache[1 - i]
            g = _unbroadcast(dy.codes * np.asarray(other.codes, dtype=np.int64), x.codes.shape)
            codes, fmt = narrow(g, dy.fmt.frac_bits + other.fmt.frac_bits, self.num.err_bits, self.num.err_rounding)
            c.macs += dy.codes.size
            c.use("act", acc.act.cycles(dy.codes.size))
            acc.write(c, "err", codes.size * nbytes(fmt.width))
            outs.append(T(codes, fmt))
        acc.read(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        return outs, {}, c, Cost()


@register("Concat")
class ConcatHw(HwLayer):
    def _axis(self):
        return int(self.attrs.get("axis", 1))

    def forward(self, acc, xs, train):
        # §7: the common format ap_fixed<A, max I of the inputs>, from the inputs' exponents
        self.out_fmt = FixedFormat(self.num.act_bits, max(x.fmt.int_bits for x in xs))
        parts = [requant(x.codes, x.fmt.frac_bits, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
                 for x in xs]
        y = np.concatenate(parts, axis=self._axis())
        c = Cost().use("requant", acc.requant.cycles(y.size))
        for x in xs:
            acc.read(c, "act", x.codes.size * nbytes(x.fmt.width))
        acc.write(c, "act", y.size * nbytes(self.out_fmt.width))
        return T(y, self.out_fmt), ([x.codes.shape for x in xs] if train else None), c

    def backward(self, acc, cache, dy, need):
        ax = self._axis()
        bounds = np.cumsum([s[ax] for s in cache])[:-1]
        return [T(p, dy.fmt) for p in np.split(dy.codes, bounds, axis=ax)], {}, Cost(), Cost()


@register("Gather")
class GatherHw(HwLayer):
    """Data movement: the address generator reads the given places of one axis (free); the
    error is written back to them, zeros elsewhere."""

    def forward(self, acc, xs, train):
        x = xs[0]
        sel = [slice(None)] * x.codes.ndim
        sel[int(self.attrs["axis"])] = self.attrs["indices"]
        return T(x.codes[tuple(sel)], x.fmt), ((x.codes.shape, tuple(sel)) if train else None), Cost()

    def backward(self, acc, cache, dy, need):
        shape, sel = cache
        dx = np.zeros(shape, dtype=np.int64)
        dx[sel] = dy.codes
        return [T(dx, dy.fmt)], {}, Cost(), Cost()


@register("Transpose")
class TransposeHw(HwLayer):
    def _perm(self, ndim):
        perm = [int(p) for p in self.attrs.get("perm", list(range(ndim))[::-1])]
        if perm[0] != 0:
            raise EdgeDFAError(f"hdl_models: node {self.name!r}: Transpose perm {perm} moves the batch axis")
        return perm

    def forward(self, acc, xs, train):
        x = xs[0]
        return T(x.codes.transpose(self._perm(x.codes.ndim)), x.fmt), None, Cost()

    def backward(self, acc, cache, dy, need):
        return [T(dy.codes.transpose(np.argsort(self._perm(dy.codes.ndim))), dy.fmt)], {}, Cost(), Cost()
