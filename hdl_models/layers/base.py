"""What every layer kind on the accelerator shares: tensors, the base class, the registry.

Tensors are ``T(codes, fmt)``: int64 codes and an edgedfa FixedFormat (a type only). A layer
is one graph node as a sequence of unit operations (forward, error, gradient) with its cost;
``params`` are this model's own copies. Every integer is computed by the units of this
package from docs/datapath.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgedfa.fixed import FixedFormat
from edgedfa.registry import Registry

from ..accounting import Cost, nbytes
from ..update_unit import purpose_of

HW_LAYERS = Registry("modelled op")
register = HW_LAYERS.register


class T(NamedTuple):
    codes: np.ndarray
    fmt: FixedFormat


def acc_fmt(acc_bits: int, frac: int) -> FixedFormat:
    return FixedFormat.with_frac(acc_bits, frac)


class HwLayer:
    """One graph node on the accelerator; ``params`` are this model's own copies."""

    trainable = False
    n_outputs = 1

    def __init__(self, node, layer):
        self.name, self.op = node.name, node.op
        self.attrs = dict(node.attrs)
        self.index = int(layer.index)
        self.num = layer.num
        self.seed = int(layer.seed)
        self.in_shapes = [tuple(s) for s in layer.in_shapes]
        self.out_shape = tuple(layer.out_shape) if self.n_outputs == 1 else layer.out_shape
        self.out_fmt = layer.out_fmt
        self.params = {k: T(np.array(v.codes, dtype=np.int64), v.fmt) for k, v in layer.params.items()}
        # §12 momentum: one velocity register file per parameter, as checkpointed
        self.velocity = {k[len("velocity_"):]: np.array(v, dtype=np.int64)
                         for k, v in getattr(layer, "state", {}).items() if k.startswith("velocity_")}

    def configure(self, opts: dict) -> None:
        """Per-module layer options of the plan (e.g. bptt_steps, backward groups)."""
        for k, v in opts.items():
            setattr(self, k, v)

    def param_bytes(self) -> int:
        return sum(t.codes.size * nbytes(t.fmt.width) for t in self.params.values())

    def forward(self, acc, xs: list, train: bool):
        raise NotImplementedError(self.op)

    def backward(self, acc, cache, dy, need: list):
        """(dxs, grads {name: T}, error Cost, gradient Cost)."""
        raise NotImplementedError(self.op)

    def apply_update(self, acc, grads: dict, step: int, lr_shift: int,
                     lr_base: int | None = None) -> Cost:
        """§12 SGD per parameter through the update unit; streams per §5/§12."""
        cost = Cost()
        frozen = set(getattr(self, "frozen", ()) or ())
        for pos, (name, g) in enumerate(sorted(grads.items())):
            if name in frozen:  # §12: a frozen parameter is never written
                continue
            p = self.params[name]
            new, _, vel = acc.update.apply(p.codes, p.fmt, g.codes, g.fmt.frac_bits, lr_shift,
                                           self.num.update_rounding, self.num.weight_overflow, self.seed,
                                           self.index, purpose_of(name, pos), step,
                                           getattr(self.num, "update_norm_bits", None), lr_base,
                                           getattr(self.num, "momentum_shift", None), self.velocity.get(name))
            if vel is not None:
                self.velocity[name] = vel
            self.params[name] = T(new, p.fmt)
            n = p.codes.size
            cost.use("update", acc.update.cycles(n))
            cost.prng_words += n
            acc.read(cost, "weight", n * nbytes(p.fmt.width), f"param/{self.name}/{name}")
            acc.write(cost, "weight", n * nbytes(p.fmt.width), f"param/{self.name}/{name}")
        return cost


def make_hw_layer(node, layer) -> HwLayer:
    """The accelerator's layer for a graph node (configuration read from the engine's layer)."""
    return HW_LAYERS.get(node.op, f"hdl_models: node {node.name!r}: ")(node, layer)
