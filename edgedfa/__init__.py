"""edgedfa: fixed-point on-device training with direct feedback alignment."""

from .errors import EdgeDFAError
from .fixed import (
    FixedFormat,
    Overflow,
    Rounding,
    apply_overflow,
    dequantize,
    quantize,
    requantize,
    round_shift,
)

__version__ = "0.1.0"

__all__ = [
    "EdgeDFAError", "FixedFormat", "Overflow", "Rounding", "apply_overflow", "dequantize",
    "quantize", "requantize", "round_shift", "load_onnx", "load_checkpoint",
]


def load_onnx(path, data=None, **kwargs):
    """Import an ONNX file as an integer model (calibrated on ``data`` when given)."""
    from .api import load_onnx as _load

    return _load(path, data=data, **kwargs)


def load_checkpoint(path):
    """Load a trained model from ``checkpoint.npz``."""
    from .api import load_checkpoint as _load

    return _load(path)
