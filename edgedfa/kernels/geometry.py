"""Shape arithmetic of convolution and pooling windows (docs/datapath.md §8.1).

A geometry is always held as 2-d; a 1-d one has height 1 (``to4d``/``from4d`` move arrays
between the model's rank and that form).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgeDFAError


@dataclass(frozen=True)
class ConvGeometry:
    """Shape arithmetic of one convolution or pooling window, always held as 2-d.

    ``pads`` are (top, left, bottom, right); a 1-d geometry has height 1 and ``ndim`` 1.

    >>> g = make_geometry((8, 8), (3, 3), pads=(1, 1, 1, 1))
    >>> g.out_hw, g.k
    ((8, 8), 9)
    """

    ndim: int
    in_hw: tuple
    kernel: tuple
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    groups: int = 1

    @property
    def k(self) -> int:
        """Kernel taps per input channel."""
        return self.kernel[0] * self.kernel[1]

    @property
    def out_hw(self) -> tuple:
        return tuple(
            (self.in_hw[i] + self.pads[i] + self.pads[i + 2] - self.dilations[i] * (self.kernel[i] - 1) - 1)
            // self.strides[i] + 1
            for i in range(2)
        )

    def out_spatial(self) -> tuple:
        """Output spatial shape in the model's own rank (1-d or 2-d)."""
        return self.out_hw[1:] if self.ndim == 1 else self.out_hw

    def overlapping(self) -> bool:
        """True when some input element lies in more than one window."""
        return any(self.dilations[i] * (self.kernel[i] - 1) + 1 > self.strides[i] for i in range(2))


def _ints(v, n, default, what):
    if v is None:
        return (default,) * n
    v = tuple(int(a) for a in np.atleast_1d(v))
    if len(v) != n:
        raise EdgeDFAError(f"{what} {list(v)} needs {n} values")
    return v


def _auto_pads(auto_pad, in_spatial, eff, strides, pads) -> list:
    """Explicit pads (begins, then ends) for an ONNX auto_pad setting."""
    n = len(in_spatial)
    auto_pad = str(auto_pad or "NOTSET").upper()
    if auto_pad == "NOTSET":
        return list(pads)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise EdgeDFAError(f"auto_pad {auto_pad!r}; expected NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    out = [0] * (2 * n)
    for i in range(n):
        total = max(0, (-(-in_spatial[i] // strides[i]) - 1) * strides[i] + eff[i] - in_spatial[i])
        small, big = total // 2, total - total // 2
        out[i], out[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    return out


def _ceil_mode_pads(in_spatial, eff, strides, pads) -> list:
    """End pads grown so that floor division gives ONNX's ceil_mode output size."""
    n = len(in_spatial)
    pads = list(pads)
    for i in range(n):
        span = in_spatial[i] + pads[i] + pads[i + n] - eff[i]
        out = -(-span // strides[i]) + 1
        if (out - 1) * strides[i] >= in_spatial[i] + pads[i]:
            out -= 1  # the last window must start inside the input or its begin padding
        pads[i + n] += max(0, (out - 1) * strides[i] + eff[i] - (in_spatial[i] + pads[i] + pads[i + n]))
    return pads


def make_geometry(in_spatial, kernel, strides=None, pads=None, dilations=None, groups=1,
                  auto_pad="NOTSET", ceil_mode=False) -> ConvGeometry:
    """Geometry from ONNX attributes (pads as begin..., end...); 1-d or 2-d."""
    in_spatial = tuple(int(s) for s in in_spatial)
    n = len(in_spatial)
    if n not in (1, 2):
        raise EdgeDFAError(f"convolution/pooling over {n} spatial dims (only 1-d and 2-d)")
    kernel = _ints(kernel, n, 1, "kernel_shape")
    strides = _ints(strides, n, 1, "strides")
    dilations = _ints(dilations, n, 1, "dilations")
    pads = _ints(pads, 2 * n, 0, "pads")
    if min(kernel + strides + dilations) < 1 or min(pads) < 0 or int(groups) < 1:
        raise EdgeDFAError(f"kernel {kernel}, strides {strides}, dilations {dilations}, pads {pads},"
                           f" group {groups}: sizes must be >= 1 and pads >= 0")
    eff = [dilations[i] * (kernel[i] - 1) + 1 for i in range(n)]
    pads = _auto_pads(auto_pad, in_spatial, eff, strides, pads)
    if ceil_mode:
        pads = _ceil_mode_pads(in_spatial, eff, strides, pads)
    if n == 1:
        geo = ConvGeometry(1, (1,) + in_spatial, (1,) + kernel, (1,) + strides,
                           (0, pads[0], 0, pads[1]), (1,) + dilations, int(groups))
    else:
        geo = ConvGeometry(2, in_spatial, kernel, strides, tuple(pads), dilations, int(groups))
    if min(geo.out_hw) < 1:
        raise EdgeDFAError(f"window {kernel} (dilation {dilations}) larger than the padded input {in_spatial}")
    return geo


def to4d(x, geo: ConvGeometry) -> np.ndarray:
    """(B, C, L) -> (B, C, 1, L) for 1-d geometries; 2-d arrays pass through."""
    x = np.asarray(x, dtype=np.int64)
    return x[:, :, None, :] if geo.ndim == 1 and x.ndim == 3 else x


def from4d(y, geo: ConvGeometry) -> np.ndarray:
    return y[:, :, 0, :] if geo.ndim == 1 else y


def check_shapes(x4, w4, geo: ConvGeometry):
    if x4.ndim != 4 or w4.ndim != 4:
        raise EdgeDFAError(f"conv: input {x4.shape} and weight {w4.shape} must be rank {geo.ndim + 2}")
    cin, cout = x4.shape[1], w4.shape[0]
    g = geo.groups
    if cin % g or cout % g or w4.shape[1] != cin // g or tuple(w4.shape[2:]) != geo.kernel:
        raise EdgeDFAError(f"conv: input channels {cin}, weight {tuple(w4.shape)} and group {g} do not fit"
                           f" (weight must be (C_out, C_in/group, *kernel) = (*, {cin // max(g, 1)}, {geo.kernel}))")
    if tuple(x4.shape[2:]) != tuple(geo.in_hw):
        raise EdgeDFAError(f"conv: input spatial shape {x4.shape[2:]} differs from the geometry's {geo.in_hw}")


def conv_macs(geo: ConvGeometry, batch: int, cin: int, cout: int) -> int:
    """Multiply-accumulates of one forward (equal for dW and for the transposed conv)."""
    return batch * cout * geo.out_hw[0] * geo.out_hw[1] * (cin // geo.groups) * geo.k
