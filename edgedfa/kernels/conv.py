"""Integer convolution: forward, weight gradient and input gradient, dispatched to a backend.

Layout is ONNX's: x (B, C_in, *spatial), w (C_out, C_in/group, *kernel), 1-d or 2-d.
A 1-d convolution is run as a 2-d one of height 1. Accumulation orders are those of
docs/datapath.md §8; every backend gives identical bits:

- ``reference``: direct loops over the reduction index, numpy over the rest (slow, obvious);
- ``fast``: 8-bit codes on the int8 dot-product units (``conv_int8.py``) where a bound
  proves it exact and the product is large enough to pay for the call; otherwise im2col +
  ``kernels.gemm`` (exact BLAS under a checked bound, numba otherwise), or the direct numba
  loops when a group has a single input channel (first layer, depthwise);
- ``int8``: as ``fast``, the int8 route at any size (tests; small products);
- ``numba``: direct loops compiled with numba (measured against ``fast`` in benchmarks.md);
- ``im2col`` / ``im2col-reference``: im2col + the fast / reference GEMM, always.

A zero product added to an accumulator is a no-op under every overflow mode (the register
is always in range after a step), so padded taps may be skipped or multiplied by zero.
Geometry lives in ``geometry.py``, patches in ``im2col.py``, the backends in
``conv_reference.py``, ``conv_gemm.py``, ``conv_numba.py`` and ``conv_int8.py``; this module
is their public face.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import Overflow
from . import conv_gemm, conv_int8, conv_numba, conv_reference, default_backend, int8
from .geometry import ConvGeometry, check_shapes, conv_macs, from4d, make_geometry, to4d
from .im2col import col2im, im2col, pad4, patches, tap_slice, transposed_im2col

CONV_BACKENDS = ("reference", "fast", "int8", "numba", "im2col", "im2col-reference")

__all__ = ["CONV_BACKENDS", "ConvGeometry", "block_diagonal", "col2im", "conv_forward", "conv_input_grad",
           "conv_macs", "conv_weight_grad", "from4d", "im2col", "make_geometry", "pad4", "patches", "tap_slice",
           "to4d", "transposed_im2col"]


def _run(op: str, backend, channels_per_group: int, *args):
    """``op`` of the backend named ``backend`` (im2col names run the GEMM backend of that name)."""
    name = backend or default_backend()
    if name in ("fast", "int8"):
        out = getattr(conv_int8, op)(*args, min_macs=0 if name == "int8" else int8.MIN_MACS)
        if out is not None:
            return out
        # direct loops beat im2col + GEMM when a group has one input channel (docs/benchmarks.md)
        name = "numba" if channels_per_group == 1 else "im2col"
    if name == "reference":
        return getattr(conv_reference, op)(*args)
    if name == "numba":
        return getattr(conv_numba, op)(*args)
    gemm_backend = {"im2col-reference": "reference", "im2col": "fast"}.get(name, name)
    return getattr(conv_gemm, op)(*args, gemm_backend)


def conv_forward(x, w, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP, init=None,
                 backend=None) -> np.ndarray:
    """y[b, o, oh, ow] = init[o] + sum over (c, kh, kw) ascending of x * w (§8), int64."""
    overflow = Overflow.parse(overflow)
    x4, w4 = to4d(x, geo), to4d(w, geo)
    check_shapes(x4, w4, geo)
    init = None if init is None else np.asarray(init, dtype=np.int64).reshape(-1)
    y = _run("forward", backend, w4.shape[1], x4, w4, geo, acc_bits, overflow, init)
    return from4d(y, geo)


def conv_weight_grad(x, dy, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP,
                     backend=None) -> np.ndarray:
    """dw[o, c, kh, kw] = sum over (b, oh, ow) ascending of dy * x under the tap (§8)."""
    overflow = Overflow.parse(overflow)
    x4, dy4 = to4d(x, geo), to4d(dy, geo)
    cout = dy4.shape[1]
    w_shape = (cout, x4.shape[1] // geo.groups) + geo.kernel
    check_shapes(x4, np.zeros(w_shape, np.int8), geo)
    dw = _run("weight_grad", backend, w_shape[1], x4, dy4, geo, acc_bits, overflow)
    return dw[:, :, 0, :] if geo.ndim == 1 else dw


def conv_input_grad(dy, w, geo: ConvGeometry, acc_bits=32, overflow=Overflow.AP_WRAP,
                    backend=None) -> np.ndarray:
    """dx[b, c, ih, iw] = sum over (o, kh, kw) ascending of dy[b, o, oh, ow] * w[o, c, kh, kw]
    where ih = oh*sh - top + kh*dh (likewise w): the true transposed convolution (§8)."""
    overflow = Overflow.parse(overflow)
    dy4, w4 = to4d(dy, geo), to4d(w, geo)
    cin = w4.shape[1] * geo.groups
    check_shapes(np.zeros((1, cin) + tuple(geo.in_hw), np.int8), w4, geo)
    if tuple(dy4.shape[2:]) != geo.out_hw or dy4.shape[1] != w4.shape[0]:
        raise EdgeDFAError(f"conv backward: error {dy4.shape} does not match output (B, {w4.shape[0]}, {geo.out_hw})")
    dx = _run("input_grad", backend, w4.shape[1], dy4, w4, geo, acc_bits, overflow)
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
