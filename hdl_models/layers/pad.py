"""Pad on the accelerator (§8.5.1): the buffer's address generator maps every output address
to the input address it reads (or to the constant register); backward, the error of each
output address is added at the address it was read from, then narrowed when an address was
read twice."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError

from ..accounting import Cost, nbytes
from ..requant_unit import from_float, narrow
from .base import HwLayer, T, register


def source_address(j: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Address generator of one axis: output coordinate ``j`` (input coordinates, may lie
    outside 0..n-1) to the input coordinate read, -1 for the constant register."""
    if mode == "constant":
        return np.where((j < 0) | (j >= n), -1, j)
    if mode == "edge":
        return np.minimum(np.maximum(j, 0), n - 1)
    if mode == "wrap":
        return np.mod(j, n)
    if mode == "reflect":  # fold at 0 and at n-1 until inside (pads below n: at most once each)
        k = np.abs(j)
        return np.where(k > n - 1, 2 * (n - 1) - k, k)
    raise EdgeDFAError(f"hdl_models: Pad mode {mode!r}")


@register("Pad")
class PadHw(HwLayer):
    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.mode = str(self.attrs.get("mode", "constant"))
        shape, pads = self.in_shapes[0], [int(p) for p in self.attrs["pads"]]
        r = len(shape)
        coords = np.meshgrid(*[np.arange(-pads[a], shape[a] + pads[a + r]) for a in range(r)], indexing="ij")
        src = [source_address(c, shape[a], self.mode) for a, c in enumerate(coords)]
        outside = np.any([s < 0 for s in src], axis=0)
        flat = np.ravel_multi_index([np.maximum(s, 0) for s in src], shape)
        self.size = int(np.prod(shape))
        self.table = np.where(outside, self.size, flat).reshape(-1)  # address `size`: the constant register
        inside = self.table[self.table < self.size]
        self.reread = bool(inside.size != np.unique(inside).size)

    def forward(self, acc, xs, train):
        x = xs[0]
        b = x.codes.shape[0]
        value = from_float(np.array([float(self.attrs.get("value", 0.0))]), x.fmt) if self.mode == "constant" \
            else np.zeros(1, dtype=np.int64)  # the host loads the constant register in the input's format
        buf = np.concatenate([x.codes.reshape(b, -1), np.broadcast_to(value.astype(np.int64), (b, 1))], axis=1)
        y = buf[:, self.table].reshape((b,) + tuple(self.out_shape))
        return T(y, x.fmt), None, Cost()  # the reader of the buffer addresses it through the table

    def backward(self, acc, cache, dy, need):
        b = dy.codes.shape[0]
        dx = np.zeros((b, self.size + 1), dtype=np.int64)
        for i in range(b):  # read-modify-write per output address: repeated addresses add up
            np.add.at(dx[i], self.table, dy.codes[i].reshape(-1))
        dx = dx[:, :self.size].reshape((b,) + self.in_shapes[0])
        cost = Cost().use("act", acc.act.cycles(dy.codes.size))
        cost.adds += int(dy.codes.size)
        acc.read(cost, "err", dy.codes.size * nbytes(dy.fmt.width))
        acc.write(cost, "err", dx.size * nbytes(self.num.err_bits))
        if not self.reread:
            return [T(dx, dy.fmt)], {}, cost, Cost()
        codes, fmt = narrow(dx, dy.fmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        return [T(codes, fmt)], {}, cost, Cost()
