"""Each layer kind on the accelerator, one module per kind, registered by canonical op."""

from . import activation, batchnorm, conv, dense, layernorm, matmul, pad, pool, prelu, recurrent, shape, softmax  # noqa: F401  (each registers its ops)
from .base import HW_LAYERS, HwLayer, T, acc_fmt, make_hw_layer, register

__all__ = ["HW_LAYERS", "HwLayer", "T", "acc_fmt", "make_hw_layer", "register"]
