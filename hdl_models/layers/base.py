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
from ..exponent_unit import leading_one, moved
from ..lanes import maxabs
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
    own_format = False  # True: the layer requantizes into an output format of its own (§13)

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
        state = getattr(layer, "state", {})
        # §12 momentum: one velocity register file per parameter, as checkpointed
        self.velocity = {k[len("velocity_"):]: np.array(v, dtype=np.int64)
                         for k, v in state.items() if k.startswith("velocity_")}
        # §12 Adam: two moment register files per parameter, each (codes, fraction bits)
        self.moments = {name: {w: (np.array(state[f"adam_{w}:{name}"], dtype=np.int64),
                                   int(state[f"adam_{w}_frac:{name}"]))
                               for w in ("m", "v") if f"adam_{w}:{name}" in state} for name in self.params}
        # §13: the exponent unit's counters and the parameters' floors, as checkpointed
        self.low = {k.split(":", 1)[1]: int(v) for k, v in state.items() if k.startswith("exp_low:")}
        self.floor = {k.split(":", 1)[1]: int(v) for k, v in state.items() if k.startswith("exp_floor:")}
        self.peaks = {}

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
                     lr_base: int | None = None, lr0: int | None = None) -> Cost:
        """§12 update per parameter through the update unit (streams per §5/§12), then §13:
        the exponent unit reads the parameter's max and may rescale it."""
        cost = Cost()
        frozen = set(getattr(self, "frozen", ()) or ())
        num = self.num
        for pos, (name, g) in enumerate(sorted(grads.items())):
            if name in frozen:  # §12: a frozen parameter is never written
                continue
            p, peak = self.params[name], None
            if num.rule == "adam":
                lr = lr_shift if lr0 is None or lr_base is None else lr0 + lr_shift - lr_base
                new, _ = acc.update.adam(p.codes, p.fmt, g.codes, g.fmt.frac_bits, lr, num.update_rounding,
                                         num.weight_overflow, self.seed, self.index, purpose_of(name, pos),
                                         step, num, self.moments.setdefault(name, {}))
                peak = acc.update.peak
                cost.use("update", acc.update.cycles(p.codes.size))  # m, v and p in one pass
            else:
                new, _, vel = acc.update.apply(p.codes, p.fmt, g.codes, g.fmt.frac_bits, lr_shift,
                                               num.update_rounding, num.weight_overflow, self.seed,
                                               self.index, purpose_of(name, pos), step,
                                               num.update_norm_bits, lr_base, num.momentum_shift,
                                               self.velocity.get(name))
                if vel is not None:
                    self.velocity[name] = vel
            self.params[name] = T(new, p.fmt)
            n = p.codes.size
            cost.use("update", acc.update.cycles(n))
            cost.prng_words += n
            acc.read(cost, "weight", n * nbytes(p.fmt.width), f"param/{self.name}/{name}")
            acc.write(cost, "weight", n * nbytes(p.fmt.width), f"param/{self.name}/{name}")
            if num.adaptive:
                cost.add(self._manage_param(acc, name, peak))
        return cost

    def _manage_param(self, acc, name: str, top: int | None = None) -> Cost:
        """§13 on a parameter just written: decide, and rescale it when its exponent moves
        (``top``: its max |code|, when the update unit tracked it on the way out)."""
        p, unit, cost = self.params[name], acc.exponent, Cost()
        top = maxabs(p.codes) if top is None else top
        delta, self.low[name] = unit.decide(leading_one(top), p.fmt, self.low.get(name, 0),
                                            self.num.exp_patience, self.floor.get(name, p.fmt.frac_bits))
        if delta:
            self.params[name] = T(unit.rescale(p.codes, delta), moved(p.fmt, delta))
            if name in self.velocity:  # SGD momentum lives in the parameter's LSBs
                self.velocity[name] = unit.rescale(self.velocity[name], delta)
            cost.use("update", unit.cycles(p.codes.size))
            n = p.codes.size * nbytes(p.fmt.width)
            acc.read(cost, "weight", n, f"param/{self.name}/{name}")
            acc.write(cost, "weight", n, f"param/{self.name}/{name}")
        return cost

    # ---- §13 outputs: a max tracker on the requantizer's input while training
    def track(self, key: str, codes, frac: int, top: int | None = None) -> None:
        """Record the largest magnitude of a wide value bound for a managed format (``top``:
        already measured on the way through the requantizer)."""
        codes = np.asarray(codes)
        if not codes.size:
            return
        top = maxabs(codes) if top is None else int(top)
        if key in self.peaks:
            t0, f0 = self.peaks[key]
            f = max(f0, int(frac))
            top = max(t0 << (f - f0), top << (f - int(frac)))
            frac = f
        self.peaks[key] = (top, int(frac))

    def managed(self) -> dict:
        """The output formats this layer's exponent registers hold (key -> format)."""
        return {"out": self.out_fmt} if self.own_format and self.num.adaptive else {}

    def set_managed(self, key: str, fmt: FixedFormat) -> None:
        self.out_fmt = fmt

    def manage_outputs(self, acc) -> None:
        """End of step: move the managed output formats by the peaks seen while training."""
        unit = acc.exponent
        for key, fmt in self.managed().items():
            if key in self.peaks and fmt is not None:
                top, frac = self.peaks[key]
                delta, self.low[key] = unit.decide(unit.in_lsbs(top, frac, fmt), fmt, self.low.get(key, 0),
                                                   self.num.exp_patience, frac)
                if delta:
                    self.set_managed(key, moved(fmt, delta))
        self.peaks = {}


def make_hw_layer(node, layer) -> HwLayer:
    """The accelerator's layer for a graph node (configuration read from the engine's layer)."""
    return HW_LAYERS.get(node.op, f"hdl_models: node {node.name!r}: ")(node, layer)
