"""edgedfa: fixed-point on-device training with direct feedback alignment."""

import os as _os

# Our GEMMs are small: BLAS threads cost far more than they give (measured: 36 ms vs
# 0.014 ms for a 32x64x256 product on 2 busy cores). Users can still override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

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

from .version import __version__

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
    from .checkpoint import load_checkpoint as _load

    return _load(path)
