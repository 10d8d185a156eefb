"""Pooling layers (MaxPool, AveragePool, GlobalAveragePool; 1-d/2-d): forward and backward
side by side (§8.2-8.3). Max pooling keeps the input's format; average pooling requantizes
into a format of its own under adaptive scaling (the input's under static); nothing is trained.

Average pooling divides by the window count ``n`` in integers: the exact window sum is
multiplied by ``r_n = round(2^(16+L) / n)`` with ``L = ceil(log2 n)`` (a 17-bit unsigned
constant in [2^16, 2^17), exact when ``n`` is a power of two) and requantized once.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor, narrow_dynamic, requantize
from ..kernels import conv as K
from ..kernels.pool import max_forward, max_backward
from ..scaling import observe
from .base import Layer, register
from .dense import calibrated_format

RECIP_BITS = 16  # fraction bits of the normalised reciprocal 2^(16+L)/n, §8.3
WIDE_BITS = 48  # width of the exact product register of the average unit


def reciprocal(n):
    """(r, L): r = round_half_up(2^(RECIP_BITS+L) / n), L = ceil(log2 n); 1/n ~ r * 2^-(16+L).

    >>> reciprocal(np.array([1, 2, 3, 9]))
    (array([ 65536,  65536,  87381, 116508]), array([0, 1, 2, 4]))
    """
    n = np.asarray(n, dtype=np.int64)
    if n.size and n.min() < 1:
        raise EdgeDFAError("average pooling over an empty window")
    L = np.array([int(v - 1).bit_length() for v in n.reshape(-1)], dtype=np.int64).reshape(n.shape)
    r = ((np.int64(1) << (RECIP_BITS + L)) + n // 2) // n
    return r, L


def pool_geometry(node, in_shape, kernel=None) -> K.ConvGeometry:
    """Window geometry of a pooling node (ONNX attrs; ceil_mode supported)."""
    a = node.attrs
    kernel = a.get("kernel_shape") if kernel is None else kernel
    if kernel is None:
        raise EdgeDFAError(f"node {node.name!r} ({node.op}): kernel_shape is required")
    try:
        geo = K.make_geometry(tuple(in_shape[1:]), kernel, a.get("strides"), a.get("pads"),
                              a.get("dilations"), 1, a.get("auto_pad", "NOTSET"), bool(a.get("ceil_mode", 0)))
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"node {node.name!r} ({node.op}): {exc}") from None
    pads = given_pads(node, geo)
    eff = [geo.dilations[i] * (geo.kernel[i] - 1) + 1 for i in range(2)]
    if any(pads[i] >= eff[i] or pads[i + 2] >= eff[i] for i in range(2)):
        raise EdgeDFAError(f"node {node.name!r} ({node.op}): pads {list(a.get('pads'))} must be smaller"
                           " than the window")
    if (window_counts(geo, pads, False) == 0).any():
        raise EdgeDFAError(f"node {node.name!r} ({node.op}): a window covers only padding"
                           f" (kernel {list(kernel)}, dilations {a.get('dilations')}, pads {a.get('pads')})")
    return geo


def given_pads(node, geo):
    """The explicit pads (top, left, bottom, right), without ceil_mode's extra end padding."""
    if not node.attrs.get("ceil_mode", 0):
        return geo.pads
    plain = node.attrs.copy()
    plain["ceil_mode"] = 0
    g0 = K.make_geometry(geo.in_hw[1:] if geo.ndim == 1 else geo.in_hw, plain.get("kernel_shape"),
                         plain.get("strides"), plain.get("pads"), plain.get("dilations"), 1,
                         plain.get("auto_pad", "NOTSET"))
    return g0.pads


def window_counts(geo: K.ConvGeometry, pads, include_pad: bool) -> np.ndarray:
    """(OH, OW) number of taps of each window that are counted by the average."""
    counts = []
    for i in range(2):
        lo = -pads[i] if include_pad else 0
        hi = geo.in_hw[i] + (pads[i + 2] if include_pad else 0)
        pos = (np.arange(geo.out_hw[i])[:, None] * geo.strides[i] - geo.pads[i]
               + np.arange(geo.kernel[i])[None, :] * geo.dilations[i])
        counts.append(((pos >= lo) & (pos < hi)).sum(axis=1))
    return counts[0][:, None] * counts[1][None, :]


class _Pool(Layer):
    """Shared shape handling: per-sample (C, *spatial) in, (C, *out_spatial) out."""

    def __init__(self, node, spec):
        self.geo = self.make_geometry(node, spec.in_shapes[0])
        super().__init__(node, spec)

    def make_geometry(self, node, in_shape):
        return pool_geometry(node, in_shape)

    def infer_shape(self):
        return (self.in_shapes[0][0],) + self.geo.out_spatial()

    def _scatter(self, per_tap, b, c):
        """Exact sum of (B, C, KH, KW, OH, OW) tap values back onto (B, C, H, W)."""
        geo = self.geo
        t, lf, bo, r = geo.pads
        h, w = geo.in_hw
        xp = np.zeros((b, c, h + t + bo, w + lf + r), dtype=np.int64)
        for kh in range(geo.kernel[0]):
            for kw in range(geo.kernel[1]):
                xp[K.tap_slice(geo, kh, kw)] += per_tap[:, :, kh, kw]
        return K.from4d(xp[:, :, t:t + h, lf:lf + w], geo)


@register("MaxPool")
class MaxPool(_Pool):
    """Window maximum; the error goes to the first maximal tap in (kh, kw) order."""

    def forward(self, xs, train=False):
        x = xs[0]
        y, arg = max_forward(K.to4d(x.codes, self.geo), self.geo)
        return QTensor(K.from4d(y, self.geo), x.fmt), arg if train else None

    def backward(self, cache, dy, need_dx):
        dx = K.from4d(max_backward(cache, K.to4d(dy.codes, self.geo), self.geo), self.geo)
        if not self.geo.overlapping():
            return [QTensor(dx, dy.fmt)], {}  # each input feeds at most one window: no growth
        wide = FixedFormat.with_frac(WIDE_BITS, dy.fmt.frac_bits)
        return [narrow_dynamic(dx, wide, self.num.err_bits, self.num.err_rounding)], {}


@register("AveragePool")
class AveragePool(_Pool):
    """Window mean: exact sum times the reciprocal of the count, one requantization."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        include = bool(node.attrs.get("count_include_pad", 0))
        n = window_counts(self.geo, given_pads(node, self.geo), include)
        r, L = reciprocal(n)
        self.counts = n
        self.scale_log2 = int(node.attrs.get("scale_log2", 0))  # the mean times 2^k: a sum's exponent
        # common fraction bits added by the multiply, less the free exponent shift 2^k
        self.shift = int(L.max()) + RECIP_BITS - self.scale_log2
        self.scale = r << (L.max() - L)  # (OH, OW) reciprocal codes aligned to 2^-(shift + k)

    @property
    def changes_scale(self) -> bool:
        """Adaptive scaling: the mean has a format of its own, calibrated and managed like a
        conv output's (a window's mean is often far below the peak of its inputs, whose format
        would leave it few levels: §8.3); static: the input's format, as before, unless the mean
        is scaled by 2^k (a sum, ``scale_log2``), which the input's format would not hold."""
        return self.num.adaptive or self.scale_log2 != 0

    def _mean(self, x: QTensor) -> QTensor:
        """Window sums times the reciprocal of the counts: the wide mean (B, C, OH, OW)."""
        s = K.patches(K.to4d(x.codes, self.geo), self.geo).sum(axis=(2, 3))
        prod = s * self.scale
        return QTensor(prod, self._wide(x.fmt, prod))

    def forward(self, xs, train=False):
        x = xs[0]
        wide = self._mean(x)
        fmt = self.out_fmt if self.changes_scale else x.fmt
        y = requantize(wide.codes, wide.fmt, fmt, self.num.act_rounding, self.num.act_overflow)
        if train and self.changes_scale:
            observe(self, "out", wide, fmt, y)
        return QTensor(K.from4d(y, self.geo), fmt), x.codes.shape[:2] if train else None

    def calibrate(self, xs):
        if not self.changes_scale:
            return super().calibrate(xs)
        self.out_fmt = calibrated_format(self._mean(xs[0]), self.num)

    def backward(self, cache, dy, need_dx):
        b, c = cache
        prod = K.to4d(dy.codes, self.geo) * self.scale
        per_tap = np.broadcast_to(prod[:, :, None, None], (b, c) + self.geo.kernel + self.geo.out_hw)
        dx = self._scatter(per_tap, b, c)
        return [narrow_dynamic(dx, self._wide(dy.fmt, dx), self.num.err_bits, self.num.err_rounding)], {}

    def _wide(self, fmt, codes):
        if codes.size and int(np.abs(codes).max()) >= 1 << (WIDE_BITS - 1):
            raise EdgeDFAError(f"node {self.name!r} ({self.op}): window sum exceeds {WIDE_BITS} bits")
        return FixedFormat.with_frac(WIDE_BITS, fmt.frac_bits + self.shift)

    def macs(self, batch: int = 1) -> dict:
        c = self.in_shapes[0][0]
        adds = batch * c * self.geo.out_hw[0] * self.geo.out_hw[1] * self.geo.k
        return {"forward": adds, "input_grad": adds}


@register("GlobalAveragePool")
class GlobalAveragePool(AveragePool):
    """Mean over all spatial positions: an AveragePool whose window is the whole map."""

    def make_geometry(self, node, in_shape):
        return K.make_geometry(tuple(in_shape[1:]), tuple(in_shape[1:]))
