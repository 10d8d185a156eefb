"""Pad (constant, reflect, edge, wrap) on the non-batch axes: a gather of input codes, no
arithmetic; the error scatters back to the positions read, summed exactly (docs/datapath.md §8.5.1).

A constant is quantized into the input's format as the host quantizes inputs (AP_RND_CONV,
AP_SAT) at every forward, so it follows the input's format when that moves (§13).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, Overflow, QTensor, Rounding, narrow_dynamic, quantize
from .base import Layer, register

PAD_MODES = ("constant", "reflect", "edge", "wrap")
WIDE_BITS = 48  # the scatter's adders: at most 3 reads per axis of one input, exact


def pad_sources(n: int, begin: int, end: int, mode: str) -> np.ndarray:
    """The input position each output position of one axis reads; -1 reads the constant.

    >>> pad_sources(3, 2, 2, "reflect").tolist(), pad_sources(3, 1, 1, "constant").tolist()
    ([2, 1, 0, 1, 2, 1, 0], [-1, 0, 1, 2, -1])
    """
    j = np.arange(-begin, n + end, dtype=np.int64)
    if mode == "constant":
        return np.where((j >= 0) & (j < n), j, -1)
    if mode == "edge":
        return np.clip(j, 0, n - 1)
    if mode == "wrap":
        return j % n
    period = 2 * (n - 1)  # reflect: 0 1 .. n-1 n-2 .. 1 0 1 ..
    m = j % period
    return np.where(m < n, m, period - m)


def check_pads(mode: str, in_shape, pads, where: str) -> None:
    """Refuse what the layer cannot represent, naming it (``pads``: begin..., end... per sample axis)."""
    rank = len(in_shape)
    if mode not in PAD_MODES:
        raise EdgeDFAError(f"{where}: Pad mode {mode!r} (supported: {', '.join(PAD_MODES)})")
    if len(pads) != 2 * rank:
        raise EdgeDFAError(f"{where}: {len(pads)} pads for {rank} axes besides the batch")
    if min(pads, default=0) < 0:
        raise EdgeDFAError(f"{where}: negative pads {list(pads)} (cropping) are not supported")
    for a, n in enumerate(in_shape):
        b, e = pads[a], pads[a + rank]
        if mode == "reflect" and max(b, e) > n - 1:
            raise EdgeDFAError(f"{where}: reflect pads ({b}, {e}) on an axis of {n}: each must be below {n}")
        if mode == "wrap" and max(b, e) > n:
            raise EdgeDFAError(f"{where}: wrap pads ({b}, {e}) on an axis of {n}: each must be at most {n}")


def constant_code(value: float, fmt: FixedFormat) -> int:
    """The pad constant in ``fmt``: AP_RND_CONV, AP_SAT, as an input is quantized (§2)."""
    return int(quantize(np.float64(value), fmt, rounding=Rounding.AP_RND_CONV, overflow=Overflow.AP_SAT))


@register("Pad")
class Pad(Layer):
    """attrs ``mode``, ``pads`` (begin..., end... over the sample axes), ``value`` (constant)."""

    def __init__(self, node, spec):
        self.mode = str(node.attrs.get("mode", "constant"))
        self.pads = [int(p) for p in node.attrs["pads"]]
        check_pads(self.mode, spec.in_shapes[0], self.pads, f"node {node.name!r}")
        super().__init__(node, spec)

    def infer_shape(self):
        r = len(self.in_shapes[0])
        return tuple(n + self.pads[a] + self.pads[a + r] for a, n in enumerate(self.in_shapes[0]))

    @cached_property
    def axes(self) -> list:
        """(axis with the batch at 0, sources) of every padded axis (fixed by the geometry)."""
        r = len(self.in_shapes[0])
        return [(a + 1, pad_sources(n, self.pads[a], self.pads[a + r], self.mode))
                for a, n in enumerate(self.in_shapes[0]) if self.pads[a] or self.pads[a + r]]

    @cached_property
    def scatters(self) -> list:
        """Per padded axis, (axis, the 0/1 matrix output position -> input position read)."""
        out = []
        for axis, src in self.axes:
            scatter = np.zeros((len(src), self.in_shapes[0][axis - 1]), dtype=np.int64)
            inside = src >= 0
            scatter[np.nonzero(inside)[0], src[inside]] = 1
            out.append((axis, scatter))
        return out

    def forward(self, xs, train=False):
        x = xs[0]
        y = np.asarray(x.codes, dtype=np.int64)
        code = constant_code(self.node.attrs.get("value", 0.0), x.fmt) if self.mode == "constant" else 0
        for axis, src in self.axes:
            n = y.shape[axis]
            if self.mode == "constant":  # one more slot along the axis holds the constant
                slab = list(y.shape)
                slab[axis] = 1
                y = np.concatenate([y, np.full(slab, code, dtype=np.int64)], axis=axis)
            y = np.take(y, np.where(src < 0, n, src), axis=axis)
        return QTensor(y, x.fmt), None

    def overlapping(self) -> bool:
        """Some input is read by two outputs (any pad of a non-constant mode)."""
        return self.mode != "constant" and any(self.pads)

    def backward(self, cache, dy, need_dx):
        g = np.asarray(dy.codes, dtype=np.int64)
        for axis, scatter in reversed(self.scatters):
            g = np.moveaxis(np.moveaxis(g, axis, -1) @ scatter, -1, axis)
        if not self.overlapping():
            return [QTensor(g, dy.fmt)], {}
        if g.size and int(np.abs(g).max()) >= 1 << (WIDE_BITS - 1):
            raise EdgeDFAError(f"node {self.name!r} (Pad): error sum exceeds {WIDE_BITS} bits")
        wide = FixedFormat.with_frac(WIDE_BITS, dy.fmt.frac_bits)
        return [narrow_dynamic(g, wide, self.num.err_bits, self.num.err_rounding)], {}
