"""Integer convolution kernels: im2col + GEMM, direct loops, and their backward pieces.

Layout is ONNX's: x (B, C_in, *spatial), w (C_out, C_in/group, *kernel), 1-d or 2-d.
A 1-d convolution is run as a 2-d one of height 1. Accumulation orders are those of
docs/datapath.md §8; every backend gives identical bits:

- ``reference``: direct loops over the reduction index, numpy over the rest (slow, obvious);
- ``fast``: im2col + ``kernels.gemm`` (exact BLAS under a checked bound, numba otherwise);
- ``numba``: direct loops compiled with numba (measured against ``fast`` in benchmarks.md);
  ``fast`` uses them when a group has a single input channel (first layer, depthwise);
- ``im2col`` / ``im2col-reference``: im2col + the fast / reference GEMM, always.

A zero product added to an accumulator is a no-op under every overflow mode (the register
is always in range after a step), so padded taps may be skipped or multiplied by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..errors import EdgeDFAError
from ..fixed import Overflow, acc_limits, acc_step
from . import default_backend, gemm
from .fast import _MODE_CODE, _step

CONV_BACKENDS = ("reference", "fast", "numba", "im2col", "im2col-reference")


# --------------------------------------------------------------------------- geometry

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


def _check(x4, w4, geo: ConvGeometry):
    if x4.ndim != 4 or w4.ndim != 4:
        raise EdgeDFAError(f"conv: input {x4.shape} and weight {w4.shape} must be rank {geo.ndim + 2}")
    cin, cout = x4.shape[1], w4.shape[0]
    g = geo.groups
    if cin % g or cout % g or w4.shape[1] != cin // g or tuple(w4.shape[2:]) != geo.kernel:
        raise EdgeDFAError(f"conv: input channels {cin}, weight {tuple(w4.shape)} and group {g} do not fit"
                           f" (weight must be (C_out, C_in/group, *kernel) = (*, {cin // max(g, 1)}, {geo.kernel}))")
    if tuple(x4.shape[2:]) != tuple(geo.in_hw):
        raise EdgeDFAError(f"conv: input spatial shape {x4.shape[2:]} differs from the geometry's {geo.in_hw}")


# --------------------------------------------------------------------------- patches

def pad4(x4, geo: ConvGeometry, value=0) -> np.ndarray:
    t, lf, b, r = geo.pads
    if not (t or lf or b or r):
        return x4
    return np.pad(x4, ((0, 0), (0, 0), (t, b), (lf, r)), constant_values=value)


def tap_slice(geo: ConvGeometry, kh: int, kw: int):
    """Index of the padded input seen by kernel tap (kh, kw) at every output position."""
    oh, ow = geo.out_hw
    sh, sw = geo.strides
    h0, w0 = kh * geo.dilations[0], kw * geo.dilations[1]
    return (slice(None), slice(None), slice(h0, h0 + sh * (oh - 1) + 1, sh),
            slice(w0, w0 + sw * (ow - 1) + 1, sw))


def patches(x4, geo: ConvGeometry, pad_value=0) -> np.ndarray:
    """(B, C, KH, KW, OH, OW): the input under every kernel tap at every output position."""
    xp = pad4(np.asarray(x4), geo, pad_value)
    kh_n, kw_n = geo.kernel
    out = np.empty(x4.shape[:2] + (kh_n, kw_n) + geo.out_hw, dtype=xp.dtype)
    for kh in range(kh_n):
        for kw in range(kw_n):
            out[:, :, kh, kw] = xp[tap_slice(geo, kh, kw)]
    return out


def im2col(x4, geo: ConvGeometry) -> np.ndarray:
    """(G, B*OH*OW, C_in/G*KH*KW); rows (b, oh, ow) and columns (c, kh, kw) in C order (§8)."""
    b, c = x4.shape[:2]
    g = geo.groups
    p = patches(x4, geo).reshape((b, g, c // g) + geo.kernel + geo.out_hw)
    p = p.transpose(1, 0, 5, 6, 2, 3, 4)
    return p.reshape(g, b * geo.out_hw[0] * geo.out_hw[1], (c // g) * geo.k)


def col2im(cols, geo: ConvGeometry, b: int, c: int) -> np.ndarray:
    """Exact int64 sum of (G, B*OH*OW, C/G*KH*KW) columns back onto (B, C, H, W)."""
    g = geo.groups
    oh, ow = geo.out_hw
    p = cols.reshape((g, b, oh, ow, c // g) + geo.kernel).transpose(1, 0, 4, 5, 6, 2, 3)
    p = p.reshape((b, c) + geo.kernel + (oh, ow))
    t, lf, _, _ = geo.pads
    h, w = geo.in_hw
    xp = np.zeros((b, c, h + geo.pads[0] + geo.pads[2], w + geo.pads[1] + geo.pads[3]), dtype=np.int64)
    for kh in range(geo.kernel[0]):
        for kw in range(geo.kernel[1]):
            xp[tap_slice(geo, kh, kw)] += p[:, :, kh, kw]
    return xp[:, :, t:t + h, lf:lf + w]


def transposed_im2col(dy4, geo: ConvGeometry) -> np.ndarray:
    """(G, B*H*W, C_out/G*KH*KW): for input (b, ih, iw) and column (o, kh, kw), the output
    error dy[b, o, oh, ow] with ih = oh*sh - top + kh*dh (likewise w), or 0 where none."""
    b, cout = dy4.shape[:2]
    g = geo.groups
    h, w = geo.in_hw
    out = np.zeros((b, cout) + geo.kernel + (h, w), dtype=np.int64)
    for kh in range(geo.kernel[0]):
        ih_to_oh, vh = _inverse_taps(h, geo.pads[0], kh * geo.dilations[0], geo.strides[0], geo.out_hw[0])
        for kw in range(geo.kernel[1]):
            iw_to_ow, vw = _inverse_taps(w, geo.pads[1], kw * geo.dilations[1], geo.strides[1], geo.out_hw[1])
            vals = dy4[:, :, ih_to_oh][:, :, :, iw_to_ow]
            out[:, :, kh, kw] = np.where(vh[:, None] & vw[None, :], vals, 0)
    out = out.reshape((b, g, cout // g) + geo.kernel + (h, w)).transpose(1, 0, 5, 6, 2, 3, 4)
    return out.reshape(g, b * h * w, (cout // g) * geo.k)


def _inverse_taps(n_in, pad, offset, stride, n_out):
    """For each input index: the output index whose tap at ``offset`` reads it, and validity."""
    t = np.arange(n_in) + pad - offset
    valid = (t >= 0) & (t % stride == 0) & (t // stride < n_out)
    return np.where(valid, t // stride, 0), valid


# --------------------------------------------------------------------------- public API

def _backend(backend, channels_per_group=None):
    """Backend name; ``fast`` runs the direct numba loops when a group has one input channel
    (first layers, depthwise), where they beat im2col + GEMM (docs/benchmarks.md)."""
    name = backend or default_backend()
    if name == "fast" and channels_per_group == 1:
        return "numba"
    return name


def conv_forward(x, w, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP, init=None,
                 backend=None) -> np.ndarray:
    """y[b, o, oh, ow] = init[o] + sum over (c, kh, kw) ascending of x * w (§8), int64."""
    overflow = Overflow.parse(overflow)
    x4, w4 = to4d(x, geo), to4d(w, geo)
    _check(x4, w4, geo)
    init = None if init is None else np.asarray(init, dtype=np.int64).reshape(-1)
    name = _backend(backend, w4.shape[1])
    if name == "reference":
        y = _ref_forward(x4, w4, geo, acc_bits, overflow, init)
    elif name == "numba":
        bound = w4[0].size * _maxabs(x4) * _maxabs(w4) + (_maxabs(init) if init is not None else 0)
        y = _nb_forward(pad4(x4, geo), w4, geo.out_hw, geo.strides, geo.dilations, geo.groups,
                        *_nb_mode(acc_bits, overflow, bound), init if init is not None else np.zeros(0, np.int64),
                        init is not None)
    else:
        y = _gemm_forward(x4, w4, geo, acc_bits, overflow, init, _gemm_backend(name))
    return from4d(y, geo)


def conv_weight_grad(x, dy, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP,
                     backend=None) -> np.ndarray:
    """dw[o, c, kh, kw] = sum over (b, oh, ow) ascending of dy * x under the tap (§8)."""
    overflow = Overflow.parse(overflow)
    x4, dy4 = to4d(x, geo), to4d(dy, geo)
    cout = dy4.shape[1]
    w_shape = (cout, x4.shape[1] // geo.groups) + geo.kernel
    _check(x4, np.zeros(w_shape, np.int8), geo)
    name = _backend(backend, w_shape[1])
    if name == "reference":
        dw = _ref_weight_grad(x4, dy4, geo, acc_bits, overflow)
    elif name == "numba":
        dw = _nb_weight_grad(pad4(x4, geo), dy4, geo.kernel, geo.strides, geo.dilations, geo.groups,
                             *_nb_mode(acc_bits, overflow, dy4[:, 0].size * _maxabs(x4) * _maxabs(dy4)))
    else:
        dw = _gemm_weight_grad(x4, dy4, geo, acc_bits, overflow, _gemm_backend(name))
    return dw[:, :, 0, :] if geo.ndim == 1 else dw


def conv_input_grad(dy, w, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP,
                    backend=None) -> np.ndarray:
    """dx[b, c, ih, iw] = sum over (o, kh, kw) ascending of dy[b, o, oh, ow] * w[o, c, kh, kw]
    where ih = oh*sh - top + kh*dh (likewise w): the true transposed convolution (§8)."""
    overflow = Overflow.parse(overflow)
    dy4, w4 = to4d(dy, geo), to4d(w, geo)
    cin = w4.shape[1] * geo.groups
    _check(np.zeros((1, cin) + tuple(geo.in_hw), np.int8), w4, geo)
    if tuple(dy4.shape[2:]) != geo.out_hw or dy4.shape[1] != w4.shape[0]:
        raise EdgeDFAError(f"conv backward: error {dy4.shape} does not match output (B, {w4.shape[0]}, {geo.out_hw})")
    name = _backend(backend, w4.shape[1])
    if name == "reference":
        dx = _ref_input_grad(dy4, w4, geo, acc_bits, overflow)
    elif name == "numba":
        mode = _nb_mode(acc_bits, overflow, w4.shape[0] // geo.groups * geo.k * _maxabs(dy4) * _maxabs(w4))
        if mode[2] == 4:  # no overflow possible: any order gives the exact sum, scatter is cheaper
            dx = _nb_input_grad_scatter(dy4, w4, geo.in_hw, geo.pads[:2], geo.strides, geo.dilations, geo.groups)
        else:
            dx = _nb_input_grad(dy4, w4, geo.in_hw, geo.pads[:2], geo.strides, geo.dilations, geo.groups, *mode)
    else:
        dx = _gemm_input_grad(dy4, w4, geo, acc_bits, overflow, _gemm_backend(name))
    return from4d(dx, geo)


def block_diagonal(w, groups: int, backward_groups: int) -> np.ndarray:
    """Weights of the grouped transposed convolution used by group error propagation.

    From w (C_out, C_in/groups, *k) keep only the entries whose output channel and input
    channel fall in the same of ``backward_groups`` equal channel blocks; result
    (C_out, C_in/backward_groups, *k), to be used with group = backward_groups (§8.4).
    """
    w = np.asarray(w)
    cout, cg = w.shape[:2]
    cin = cg * groups
    gb = int(backward_groups)
    if gb < 1 or cin % gb or cout % gb or gb % groups:
        raise EdgeDFAError(f"backward_groups {gb}: must divide C_in {cin} and C_out {cout}"
                           f" and be a multiple of the layer's group {groups}")
    cb, ob = cin // gb, cout // gb
    out = np.empty((cout, cb) + w.shape[2:], dtype=w.dtype)
    for j in range(gb):
        o = slice(j * ob, (j + 1) * ob)
        first_c = j * cb - (j * ob // (cout // groups)) * cg  # block's first channel, local to its layer group
        out[o] = w[o, first_c:first_c + cb]
    return out


def conv_macs(geo: ConvGeometry, batch: int, cin: int, cout: int) -> int:
    """Multiply-accumulates of one forward (equal for dW and for the transposed conv)."""
    return batch * cout * geo.out_hw[0] * geo.out_hw[1] * (cin // geo.groups) * geo.k


def _gemm_backend(name):
    return {"im2col-reference": "reference", "im2col": "fast"}.get(name, name)


# --------------------------------------------------------------------------- im2col + gemm

def _rows(t4):
    """(B, C, H, W) -> (B*H*W, C)."""
    return t4.transpose(0, 2, 3, 1).reshape(-1, t4.shape[1])


def _unrows(rows, b, hw):
    return rows.reshape((b,) + tuple(hw) + (-1,)).transpose(0, 3, 1, 2)


def group_gemm(a, b, acc_bits, overflow, init=None, backend=None):
    """``gemm`` of each group: a (G, M, K) @ b (G, K, N) (+ init (G, M, N)) -> (G, M, N).

    Many small groups (depthwise) go through one batched float product when the bound of
    §4 shows it exact and free of overflow; otherwise one ``gemm`` per group.
    """
    g = a.shape[0]
    if backend == "fast" and g > 1 and a.size and b.size:
        _, hi = acc_limits(acc_bits)
        bound = a.shape[2] * _maxabs(a) * _maxabs(b) + (_maxabs(init) if init is not None else 0)
        if bound <= hi and bound < (1 << 53):
            dt = np.float32 if bound < (1 << 24) else np.float64
            out = np.matmul(a.astype(dt), b.astype(dt))
            if init is not None:
                out = out + np.asarray(init, dtype=dt)
            return out.astype(np.int64)
    return np.stack([gemm(a[j], b[j], acc_bits, overflow, None if init is None else init[j], backend)
                     for j in range(g)])


def _gemm_forward(x4, w4, geo, acc_bits, overflow, init, backend):
    cols = im2col(x4, geo)
    g, cout = geo.groups, w4.shape[0]
    og = cout // g
    wt = w4.reshape(g, og, -1).transpose(0, 2, 1)
    i3 = None if init is None else np.broadcast_to(init.reshape(g, 1, og), (g, cols.shape[1], og))
    out = group_gemm(cols, wt, acc_bits, overflow, i3, backend)
    return _unrows(out.transpose(1, 0, 2).reshape(cols.shape[1], cout), x4.shape[0], geo.out_hw)


def _gemm_weight_grad(x4, dy4, geo, acc_bits, overflow, backend):
    cols = im2col(x4, geo)
    g, cout = geo.groups, dy4.shape[1]
    og = cout // g
    dyt = _rows(dy4).reshape(-1, g, og).transpose(1, 2, 0)  # (G, Og, B*OH*OW)
    out = group_gemm(dyt, cols, acc_bits, overflow, None, backend)
    return out.reshape((cout, x4.shape[1] // g) + geo.kernel)


def _gemm_input_grad(dy4, w4, geo, acc_bits, overflow, backend):
    g, cout, cg = geo.groups, w4.shape[0], w4.shape[1]
    og = cout // g
    b = dy4.shape[0]
    _, hi = acc_limits(acc_bits)
    bound = og * geo.k * _maxabs(dy4) * _maxabs(w4)
    if backend != "reference" and bound <= hi:
        # no partial sum in any order can leave the register: col2im of the exact products is exact
        rows = _rows(dy4).reshape(-1, g, og).transpose(1, 0, 2)  # (G, B*OH*OW, Og)
        cols = group_gemm(rows, w4.reshape(g, og, -1), acc_bits, overflow, None, backend)
        return col2im(cols, geo, b, cg * g)
    t = transposed_im2col(dy4, geo)
    wt = w4.reshape(g, og, cg, geo.k).transpose(0, 1, 3, 2).reshape(g, og * geo.k, cg)
    out = group_gemm(t, wt, acc_bits, overflow, None, backend)
    return _unrows(out.transpose(1, 0, 2).reshape(t.shape[1], cg * g), b, geo.in_hw)


# --------------------------------------------------------------------------- reference loops

def _ref_forward(x4, w4, geo, acc_bits, overflow, init):
    b, cin = x4.shape[:2]
    cout, cg = w4.shape[:2]
    og = cout // geo.groups
    xp = pad4(x4, geo)
    acc = np.zeros((b, cout) + geo.out_hw, dtype=np.int64)
    if init is not None:
        acc = acc_step(acc + init[None, :, None, None], acc_bits, overflow)
    for j in range(geo.groups):
        o = slice(j * og, (j + 1) * og)
        for c in range(cg):
            for kh in range(geo.kernel[0]):
                for kw in range(geo.kernel[1]):
                    xs = xp[tap_slice(geo, kh, kw)][:, j * cg + c]
                    prod = xs[:, None] * w4[o, c, kh, kw][None, :, None, None]
                    acc[:, o] = acc_step(acc[:, o] + prod, acc_bits, overflow)
    return acc


def _ref_weight_grad(x4, dy4, geo, acc_bits, overflow):
    b, cin = x4.shape[:2]
    cout = dy4.shape[1]
    g = geo.groups
    cg, og = cin // g, cout // g
    p = patches(x4, geo)  # (B, C, KH, KW, OH, OW)
    group_of_o = np.arange(cout) // og
    acc = np.zeros((cout, cg) + geo.kernel, dtype=np.int64)
    for n in range(b):
        for oh in range(geo.out_hw[0]):
            for ow in range(geo.out_hw[1]):
                xs = p[n, :, :, :, oh, ow].reshape(g, cg, *geo.kernel)[group_of_o]
                acc = acc_step(acc + dy4[n, :, oh, ow][:, None, None, None] * xs, acc_bits, overflow)
    return acc


def _ref_input_grad(dy4, w4, geo, acc_bits, overflow):
    b = dy4.shape[0]
    cout, cg = w4.shape[:2]
    g = geo.groups
    og = cout // g
    h, w = geo.in_hw
    acc = np.zeros((b, cg * g, h, w), dtype=np.int64)
    for j in range(g):
        c = slice(j * cg, (j + 1) * cg)
        for o in range(j * og, (j + 1) * og):
            for kh in range(geo.kernel[0]):
                oh_of, vh = _inverse_taps(h, geo.pads[0], kh * geo.dilations[0], geo.strides[0], geo.out_hw[0])
                for kw in range(geo.kernel[1]):
                    ow_of, vw = _inverse_taps(w, geo.pads[1], kw * geo.dilations[1], geo.strides[1], geo.out_hw[1])
                    e = np.where(vh[:, None] & vw[None, :], dy4[:, o][:, oh_of][:, :, ow_of], 0)  # (B, H, W)
                    prod = e[:, None] * w4[o, :, kh, kw][None, :, None, None]
                    acc[:, c] = acc_step(acc[:, c] + prod, acc_bits, overflow)
    return acc


# --------------------------------------------------------------------------- numba loops

def _nb_mode(acc_bits, overflow, bound=None):
    """(lo, hi, mode, bits) for the numba loops; mode 4 when ``bound`` fits (no check needed)."""
    lo, hi = acc_limits(acc_bits)
    if overflow is Overflow.AP_SAT_SYM:
        lo = -hi
    mode = 4 if bound is not None and bound <= hi else _MODE_CODE[overflow]
    return np.int64(lo), np.int64(hi), mode, np.int64(acc_bits)


@numba.njit(cache=True, inline="always")
def _acc(acc, lo, hi, mode, bits):
    if mode == 4:
        return acc
    return _step(acc, lo, hi, mode, bits)


def _maxabs(a) -> int:
    return int(np.abs(a).max()) if a.size else 0


@numba.njit(cache=True, parallel=True)
def _nb_forward(xp, w, out_hw, strides, dilations, groups, lo, hi, mode, bits, init, has_init):
    b_n = xp.shape[0]
    cout, cg, kh_n, kw_n = w.shape
    og = cout // groups
    oh_n, ow_n = out_hw
    out = np.empty((b_n, cout, oh_n, ow_n), dtype=np.int64)
    for bo in numba.prange(b_n * cout):
        b = bo // cout
        o = bo % cout
        c0 = (o // og) * cg
        for oh in range(oh_n):
            for ow in range(ow_n):
                acc = np.int64(0)
                if has_init:
                    acc = _step(init[o], lo, hi, mode, bits)
                for c in range(cg):
                    for kh in range(kh_n):
                        ih = oh * strides[0] + kh * dilations[0]
                        for kw in range(kw_n):
                            iw = ow * strides[1] + kw * dilations[1]
                            acc = _acc(acc + xp[b, c0 + c, ih, iw] * w[o, c, kh, kw], lo, hi, mode, bits)
                out[b, o, oh, ow] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_weight_grad(xp, dy, kernel, strides, dilations, groups, lo, hi, mode, bits):
    b_n, cout, oh_n, ow_n = dy.shape
    cg = xp.shape[1] // groups
    og = cout // groups
    kh_n, kw_n = kernel
    out = np.empty((cout, cg, kh_n, kw_n), dtype=np.int64)
    for oc in numba.prange(cout * cg):
        o = oc // cg
        c = (o // og) * cg + oc % cg
        for kh in range(kh_n):
            for kw in range(kw_n):
                acc = np.int64(0)
                for b in range(b_n):
                    for oh in range(oh_n):
                        ih = oh * strides[0] + kh * dilations[0]
                        for ow in range(ow_n):
                            iw = ow * strides[1] + kw * dilations[1]
                            acc = _acc(acc + dy[b, o, oh, ow] * xp[b, c, ih, iw], lo, hi, mode, bits)
                out[o, oc % cg, kh, kw] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_input_grad(dy, w, in_hw, pads, strides, dilations, groups, lo, hi, mode, bits):
    b_n, cout, oh_n, ow_n = dy.shape
    cg, kh_n, kw_n = w.shape[1], w.shape[2], w.shape[3]
    og = cout // groups
    h_n, w_n = in_hw
    out = np.empty((b_n, cg * groups, h_n, w_n), dtype=np.int64)
    for bc in numba.prange(b_n * cg * groups):
        b = bc // (cg * groups)
        ci = bc % (cg * groups)
        j = ci // cg
        c = ci % cg
        for ih in range(h_n):
            for iw in range(w_n):
                acc = np.int64(0)
                for o in range(j * og, (j + 1) * og):
                    for kh in range(kh_n):
                        th = ih + pads[0] - kh * dilations[0]
                        if th < 0 or th % strides[0] != 0 or th // strides[0] >= oh_n:
                            continue
                        for kw in range(kw_n):
                            tw = iw + pads[1] - kw * dilations[1]
                            if tw < 0 or tw % strides[1] != 0 or tw // strides[1] >= ow_n:
                                continue
                            acc = _acc(acc + dy[b, o, th // strides[0], tw // strides[1]] * w[o, c, kh, kw],
                                        lo, hi, mode, bits)
                out[b, ci, ih, iw] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _nb_input_grad_scatter(dy, w, in_hw, pads, strides, dilations, groups):
    b_n, cout, oh_n, ow_n = dy.shape
    cg, kh_n, kw_n = w.shape[1], w.shape[2], w.shape[3]
    og = cout // groups
    h_n, w_n = in_hw
    out = np.zeros((b_n, cg * groups, h_n, w_n), dtype=np.int64)
    for b in numba.prange(b_n):
        for o in range(cout):
            c0 = (o // og) * cg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    e = dy[b, o, oh, ow]
                    if e == 0:
                        continue
                    for c in range(cg):
                        for kh in range(kh_n):
                            ih = oh * strides[0] - pads[0] + kh * dilations[0]
                            if ih < 0 or ih >= h_n:
                                continue
                            for kw in range(kw_n):
                                iw = ow * strides[1] - pads[1] + kw * dilations[1]
                                if 0 <= iw < w_n:
                                    out[b, c0 + c, ih, iw] += e * w[o, c, kh, kw]
    return out
