"""What every integer layer shares: construction arguments, the base class, the registry.

Conventions (docs/datapath.md §7):
- a tensor is a ``QTensor(codes, fmt)`` (``edgedfa.fixed``): int64 codes and their format;
- activations have a **static** format per layer (``layer.out_fmt``), chosen by calibration
  and kept in the checkpoint, so training-time forward == exported inference;
- errors and gradients have a **dynamic** power-of-two format per batch (a block exponent):
  ``fixed.narrow_dynamic`` keeps the top ``bits`` of a wide accumulator;
- a layer's ``backward(cache, dy, need_dx)`` returns ``(dxs, grads)``; ``dxs[i]`` is None
  where ``need_dx[i]`` is False; ``grads`` maps parameter names to wide QTensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..fixed import FixedFormat, QTensor
from ..numerics import Numerics
from ..registry import Registry


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
        self.lr_shift0: int | None = None  # the run's base shift, without the batch term (Adam)
        self.out_fmt: FixedFormat | None = None
        self.peaks: dict = {}  # this step's largest wide values by managed format (§13)
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

    def calibration_output(self, xs: list):
        """What the layers above are calibrated on: the output training would give."""
        return self.forward(xs, train=False)[0]

    # ---- formats that move while training (§13)
    def managed_formats(self) -> dict:
        """The static formats this layer chooses itself and the exponent unit moves."""
        return {"out": self.out_fmt} if self.changes_scale and self.num.adaptive else {}

    def set_managed_format(self, key: str, fmt: FixedFormat) -> None:
        self.out_fmt = fmt

    def refresh_format(self, in_fmts: list) -> None:
        """A layer that does not change scale keeps its input's format, whatever it became."""
        if not self.changes_scale and in_fmts and in_fmts[0] is not None:
            self.out_fmt = in_fmts[0]

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
    """The layer class of canonical op ``op`` (every kind is registered by ``edgedfa.layers``)."""
    return _LAYERS.get(op, f"node {node_name!r}: ")


def supported_ops() -> list:
    return _LAYERS.names()
