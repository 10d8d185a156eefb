"""Convolution layer (1-d/2-d, stride, pads, dilation, group, bias): forward, backward (BP,
or error propagation through a group convolution), weight update side by side (§8).

Conventions are Dense's: a static calibrated output format, errors narrowed to
``err_bits`` with a per-batch exponent, gradients as wide accumulator QTensors.

Options (node attrs, ``LayerSpec.extra`` from ``[layers.<name>]``, or a plan's
``layer_options``): ``backward_mode`` = ``"full"`` (true transposed convolution, default) or
``"group"`` with ``backward_groups`` = G: dx uses only the block-diagonal part of W over G
channel blocks (Han & Yoo 2020), so ``G / group`` times fewer MACs and no cross-block weight
reads. Node attributes and ``[layers]`` also accept the older spelling ``backward``.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import QTensor, acc_format, narrow_dynamic, requantize
from ..kernels import conv as K
from ..scaling import observe
from ..update import update_params
from .base import Layer, register
from .dense import calibrated_format, quantize_weight_and_bias

BACKWARD_MODES = ("full", "group")


def backward_options(*tables) -> tuple:
    """(mode, groups) from option tables, later ones winning; ``backward`` is the older
    spelling of ``backward_mode``."""
    opts = {}
    for t in tables:
        t = dict(t)
        if "backward" in t:
            t.setdefault("backward_mode", t.pop("backward"))
        opts.update(t)
    return opts.get("backward_mode", "full"), opts.get("backward_groups")


def conv_geometry(node, in_shape, w_shape) -> K.ConvGeometry:
    """Geometry of a Conv node from its ONNX attributes and per-sample input shape."""
    a = node.attrs
    spatial = tuple(in_shape[1:])
    kernel = a.get("kernel_shape", tuple(w_shape[2:]))
    try:
        geo = K.make_geometry(spatial, kernel, a.get("strides"), a.get("pads"), a.get("dilations"),
                              int(a.get("group", 1)), a.get("auto_pad", "NOTSET"))
        if tuple(kernel) != tuple(w_shape[2:]):
            raise EdgeDFAError(f"kernel_shape {list(kernel)} differs from the weight's {list(w_shape[2:])}")
        if in_shape[0] != w_shape[1] * geo.groups or w_shape[0] % geo.groups:
            raise EdgeDFAError(f"input channels {in_shape[0]}, weight {list(w_shape)} and group {geo.groups}"
                               " do not fit")
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"node {node.name!r} (Conv): {exc}") from None
    return geo


def conv_linear(x: QTensor, w: QTensor, b: QTensor | None, geo, num, backend=None) -> QTensor:
    """Wide accumulator of x * w (+ b aligned to the product format), as a QTensor."""
    afmt = acc_format(num.acc_bits, x.fmt.frac_bits + w.fmt.frac_bits)
    init = None
    if b is not None:
        init = requantize(b.codes, b.fmt, afmt, num.act_rounding, num.acc_overflow)
    acc = K.conv_forward(x.codes, w.codes, geo, num.acc_bits, num.acc_overflow, init, backend)
    return QTensor(acc, afmt)


def conv_backward(x: QTensor, w: QTensor, dy: QTensor, geo, num, need_dx: bool, backend=None,
                  backward_groups: int | None = None):
    """(dx narrowed to err_bits or None, dW wide, dB wide); dx through the block-diagonal
    W of ``backward_groups`` blocks when given (group error propagation)."""
    gw = K.conv_weight_grad(x.codes, dy.codes, geo, num.acc_bits, num.acc_overflow, backend)
    dw = QTensor(gw, acc_format(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))
    axes = (0,) + tuple(range(2, dy.codes.ndim))
    db = QTensor(dy.codes.sum(axis=axes), acc_format(num.acc_bits, dy.fmt.frac_bits))
    dx = None
    if need_dx:
        wc, bgeo = w.codes, geo
        if backward_groups is not None:
            wc = K.block_diagonal(w.codes, geo.groups, backward_groups)
            bgeo = _regroup(geo, backward_groups)
        acc = K.conv_input_grad(dy.codes, wc, bgeo, num.acc_bits, num.acc_overflow, backend)
        dx = narrow_dynamic(acc, acc_format(num.acc_bits, dy.fmt.frac_bits + w.fmt.frac_bits),
                            num.err_bits, num.err_rounding)
    return dx, dw, db


def _regroup(geo: K.ConvGeometry, groups: int) -> K.ConvGeometry:
    return K.ConvGeometry(geo.ndim, geo.in_hw, geo.kernel, geo.strides, geo.pads, geo.dilations, int(groups))


@register("Conv")
class Conv(Layer):
    trainable = True
    changes_scale = True

    def __init__(self, node, spec):
        if "W" not in node.params:
            raise EdgeDFAError(f"node {node.name!r} (Conv): no weight parameter W")
        self.geo = conv_geometry(node, spec.in_shapes[0], np.shape(node.params["W"]))
        super().__init__(node, spec)
        quantize_weight_and_bias(self, node)
        self.configure_backward(*backward_options(node.attrs, spec.extra))

    def configure_backward(self, mode="full", backward_groups=None) -> None:
        """Choose how dx is computed: "full" (BP) or "group" with ``backward_groups`` blocks."""
        mode = str(mode).lower()
        where = f"node {self.name!r} (Conv)"
        if mode not in BACKWARD_MODES:
            raise EdgeDFAError(f"{where}: backward {mode!r}; expected one of {', '.join(BACKWARD_MODES)}")
        groups = None
        if mode == "group":
            if backward_groups is None:
                raise EdgeDFAError(f"{where}: backward 'group' needs backward_groups")
            groups = int(backward_groups)
            try:
                K.block_diagonal(self.params["W"].codes, self.geo.groups, groups)
            except EdgeDFAError as exc:
                raise EdgeDFAError(f"{where}: {exc}") from None
        self.backward_mode, self.backward_groups = mode, groups

    def infer_shape(self):
        return (int(np.shape(self.node.params["W"])[0]),) + self.geo.out_spatial()

    def forward(self, xs, train=False):
        x = xs[0]
        if self.out_fmt is None:
            raise EdgeDFAError(f"node {self.name!r} (Conv): forward before calibrate (no output format)")
        acc = conv_linear(x, self.params["W"], self.params.get("B"), self.geo, self.num, self.backend)
        y = requantize(acc.codes, acc.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            observe(self, "out", acc, self.out_fmt, y)
        return QTensor(y, self.out_fmt), x

    def calibrate(self, xs):
        acc = conv_linear(xs[0], self.params["W"], self.params.get("B"), self.geo, self.num, self.backend)
        self.out_fmt = calibrated_format(acc, self.num)

    def backward(self, cache, dy, need_dx):
        dx, dw, db = conv_backward(cache, self.params["W"], dy, self.geo, self.num, need_dx[0],
                                   self.backend, self.backward_groups)
        grads = {"W": dw}
        if "B" in self.params:
            grads["B"] = db
        return [dx], grads

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)

    # ---- cost figures for reports and the hardware model
    def macs(self, batch: int = 1) -> dict:
        """Multiply-accumulates per phase: forward, dW, and dx (full or grouped)."""
        cin, cout = self.in_shapes[0][0], int(np.shape(self.node.params["W"])[0])
        fwd = K.conv_macs(self.geo, batch, cin, cout)
        g = self.backward_groups or self.geo.groups
        return {"forward": fwd, "weight_grad": fwd, "input_grad": K.conv_macs(_regroup(self.geo, g), batch, cin, cout)}
