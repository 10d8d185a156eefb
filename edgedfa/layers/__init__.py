"""Integer layers, one module per layer kind, registered by canonical op name."""

from . import activations, batchnorm, conv, dense, groupnorm, layernorm, matmul, nonlinear, pad, pool, prelu, recurrent, rmsnorm, shape, softmax  # noqa: F401  (each registers its ops)
from .base import Layer, LayerSpec, layer_class, register, supported_ops

__all__ = ["Layer", "LayerSpec", "layer_class", "register", "supported_ops"]
