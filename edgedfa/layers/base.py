"""What every integer layer shares: tensors with a format, numeric settings, the registry.

Conventions (docs/datapath.md §7):
- a tensor is a ``QTensor(codes, fmt)``: int64 codes and their FixedFormat;
- activations have a **static** format per layer (``layer.out_fmt``), chosen by calibration
  and kept in the checkpoint, so training-time forward == exported inference;
- errors and gradients have a **dynamic** power-of-two format per batch (a block exponent):
  ``narrow_dynamic`` keeps the top ``bits`` of a wide accumulator;
- a layer's ``backward(cache, dy, need_dx)`` returns ``(dxs, grads)``; ``dxs[i]`` is None
  where ``need_dx[i]`` is False; ``grads`` maps parameter names to wide QTensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ..errors import EdgeDFAError
from ..registry import Registry
from ..fixed import FixedFormat, Overflow, Rounding, apply_overflow, requantize, round_shift


class QTensor(NamedTuple):
    """Integer codes with their format."""

    codes: np.ndarray
    fmt: FixedFormat

    def value(self) -> np.ndarray:
        """Dequantized float64 view (edges and tests only)."""
        return np.ldexp(self.codes.astype(np.float64), -self.fmt.frac_bits)


@dataclass(frozen=True)
class Numerics:
    """Word widths, rounding and overflow for one layer (defaults from ``--bits``)."""

    weight_bits: int = 8
    act_bits: int = 8
    err_bits: int = 8
    bias_bits: int = 16
    acc_bits: int = 32
    acc_overflow: Overflow = Overflow.AP_SAT
    act_rounding: Rounding = Rounding.AP_RND
    act_overflow: Overflow = Overflow.AP_SAT
    err_rounding: Rounding = Rounding.AP_RND
    update_rounding: Rounding = Rounding.STOCHASTIC
    weight_overflow: Overflow = Overflow.AP_SAT
    weight_headroom: int = 1  # spare integer bits above the initial |w| max
    weight_int_bits: int | None = None  # fixed I of the weight format (None: from init)
    act_int_bits: int | None = None  # fixed I of the activation format (None: calibrate)
    momentum_shift: int | None = None  # momentum 1 - 2^-m (None: plain SGD)
    logit_headroom: int = 3  # extra integer bits of the output layer's format
    update_norm_bits: int | None = None  # normalized update: largest step 2^(m-1)..2^m-1 LSBs

    @classmethod
    def from_bits(cls, bits: int, **kw) -> "Numerics":
        if not 2 <= int(bits) <= 24:
            raise EdgeDFAError(f"--bits {bits}: supported word widths are 2..24")
        b = int(bits)
        return cls(weight_bits=b, act_bits=b, err_bits=b, bias_bits=min(2 * b, 32), **kw)

    def with_overrides(self, overrides: dict, where: str = "config") -> "Numerics":
        """Copy with keys from a config table; unknown keys or bad values name the key."""
        kw = {}
        for key, val in overrides.items():
            if key not in self.__dataclass_fields__:
                valid = ", ".join(self.__dataclass_fields__)
                raise EdgeDFAError(f"{where}: unknown key {key!r}; expected one of {valid}")
            cur = getattr(self, key)
            if isinstance(cur, Rounding):
                val = Rounding.parse(val)
            elif isinstance(cur, Overflow):
                val = Overflow.parse(val)
            elif not isinstance(val, int) or isinstance(val, bool):
                if not (val is None and (key.endswith("int_bits") or key in ("momentum_shift", "update_norm_bits"))):
                    raise EdgeDFAError(f"{where}: {key} must be an integer, got {val!r}")
            kw[key] = val
        return replace(self, **kw)


def bit_length(maxabs: int) -> int:
    """Bits needed for the magnitude ``maxabs`` (0 for 0)."""
    return int(maxabs).bit_length()


def narrow_dynamic(codes, fmt: FixedFormat, bits: int, rounding=Rounding.AP_RND,
                   rng=None, step=0) -> QTensor:
    """Keep the top ``bits`` of a wide signed tensor: shift = bitlen(max|x|) - (bits - 1)."""
    codes = np.asarray(codes, dtype=np.int64)
    maxabs = int(np.abs(codes).max()) if codes.size else 0
    shift = max(0, bit_length(maxabs) - (bits - 1))
    out_fmt = FixedFormat.with_frac(bits, fmt.frac_bits - shift)
    q = round_shift(codes, shift, rounding, rng, step)
    return QTensor(apply_overflow(q, out_fmt, Overflow.AP_SAT), out_fmt)


def align_add(a: QTensor, b: QTensor, bits: int = 40) -> QTensor:
    """Exact sum of two tensors in the finer of their formats (wide result)."""
    f = max(a.fmt.frac_bits, b.fmt.frac_bits)
    ca = a.codes << (f - a.fmt.frac_bits)
    cb = b.codes << (f - b.fmt.frac_bits)
    return QTensor(ca + cb, FixedFormat.with_frac(bits, f))


def to_format(t: QTensor, fmt: FixedFormat, rounding, overflow=Overflow.AP_SAT) -> QTensor:
    """Requantize a tensor to a fixed format."""
    return QTensor(requantize(t.codes, t.fmt, fmt, rounding, overflow), fmt)


def int_bits_for(maxabs: float, headroom: int = 0) -> int:
    """Integer bits (sign included) of a signed format holding ``maxabs`` with headroom."""
    if maxabs <= 0:
        return 1
    return int(np.floor(np.log2(maxabs))) + 2 + headroom


@dataclass
class LayerSpec:
    """Construction arguments shared by all layer kinds."""

    index: int
    numerics: Numerics
    seed: int
    in_shapes: list  # per-sample input shapes
    backend: str | None = None
    extra: dict = field(default_factory=dict)


class Layer:
    """Base class: a graph node made integer. Subclasses set ``op`` and override methods."""

    op = ""
    trainable = False
    changes_scale = False  # True when the output format must be calibrated

    def __init__(self, node, spec: LayerSpec):
        self.node = node
        self.name = node.name
        self.index = spec.index
        self.num = spec.numerics
        self.seed = spec.seed
        self.backend = spec.backend
        self.in_shapes = [tuple(s) for s in spec.in_shapes]
        self.params: dict = {}  # name -> QTensor (integer state, trained)
        self.state: dict = {}  # extra integer optimizer state (e.g. momentum), checkpointed
        self.lr_base: int | None = None  # the run's epoch-0 learning-rate shift (set by the trainer)
        self.out_fmt: FixedFormat | None = None
        self.out_shape = self.infer_shape()

    # ---- structure
    def infer_shape(self) -> tuple:
        return self.in_shapes[0]

    def param_formats(self) -> dict:
        return {k: v.fmt for k, v in self.params.items()}

    # ---- forward
    def forward(self, xs: list, train: bool = False):
        """(output QTensor, cache for backward)."""
        raise NotImplementedError(self.op)

    def calibrate(self, xs: list) -> None:
        """Choose ``out_fmt`` from a calibration batch (layers that change scale)."""
        self.out_fmt = xs[0].fmt

    # ---- backward
    def backward(self, cache, dy: QTensor, need_dx: list):
        """(list of input errors or None, dict of wide gradient QTensors)."""
        raise NotImplementedError(self.op)

    # ---- update
    def weight_update(self, grads: dict, step: int, lr_shift: int) -> dict:
        """Apply gradients in place; return per-parameter saturation counts."""
        return {}

    def float_params(self) -> dict:
        """Dequantized parameters for export (float64)."""
        return {k: v.value() for k, v in self.params.items()}


_LAYERS = Registry("layer op", "op")
register = _LAYERS.register


def layer_class(op: str, node_name: str = "?"):
    from . import ensure_loaded

    ensure_loaded()
    return _LAYERS.get(op, f"node {node_name!r}: ")


def supported_ops() -> list:
    from . import ensure_loaded

    ensure_loaded()
    return _LAYERS.names()
