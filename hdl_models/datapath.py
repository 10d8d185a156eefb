"""The accelerator's units wired together, and each layer kind as a sequence of unit
operations (forward, error, gradient) with its cost.

Tensors are ``T(codes, fmt)``: int64 codes and an edgedfa FixedFormat (a type only).
Every integer here is computed by the units of this package from docs/datapath.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat

from . import activation_unit as act
from .accounting import Cost, nbytes
from .buffers import Buffer
from .dram import Dram
from .error_projection_unit import ErrorProjectionUnit
from .hwconfig import HwConfig
from .mac_array import GemmStats, MacArray
from .prng_unit import PrngUnit
from .requant_unit import RequantUnit, narrow, requant, shift_round
from .softmax_unit import SoftmaxUnit
from .update_unit import UpdateUnit, purpose_of

KIB = 1024


class T(NamedTuple):
    codes: np.ndarray
    fmt: FixedFormat


def acc_fmt(acc_bits: int, frac: int) -> FixedFormat:
    return FixedFormat.with_frac(acc_bits, frac)


class Accelerator:
    """Every unit, buffer and the DRAM port of one accelerator instance."""

    def __init__(self, hw: HwConfig):
        self.hw = hw
        self.array = MacArray(hw.rows, hw.cols, hw.pe_width)
        self.prng = PrngUnit(hw.lanes)
        self.requant = RequantUnit(hw.lanes)
        self.act = act.ActivationUnit(hw.lanes)
        self.update = UpdateUnit(hw.lanes, self.prng)
        self.epu = ErrorProjectionUnit(self.array, self.prng, hw.lanes)
        self.softmax = SoftmaxUnit(hw.lanes)
        mk = lambda name, kib: Buffer(name, kib * KIB, hw.buffer_width_bits, hw.buffer_banks)  # noqa: E731
        self.buffers = {"weight": mk("weight", hw.weight_buffer_kib), "act": mk("act", hw.act_buffer_kib),
                        "err": mk("err", hw.err_buffer_kib), "feedback": mk("feedback", hw.feedback_buffer_kib)}
        self.dram = Dram(hw.dram_bytes_per_cycle)
        self.offchip_tensors: set = set()  # tensors that did not fit their buffer

    # ------------------------------------------------------------- memory traffic
    def read(self, cost: Cost, buf: str, n: int, tensor: str | None = None) -> None:
        """Read n bytes of a tensor: from its buffer, or over the DRAM port if it lives off-chip."""
        if tensor is not None and tensor in self.offchip_tensors:
            cost.offchip += int(n)
            self.dram.read(n)
        else:
            cost.onchip_read += int(n)
            self.buffers[buf].read(n)

    def write(self, cost: Cost, buf: str, n: int, tensor: str | None = None) -> None:
        if tensor is not None and tensor in self.offchip_tensors:
            cost.offchip += int(n)
            self.dram.write(n)
        else:
            cost.onchip_write += int(n)
            self.buffers[buf].write(n)

    def gemm_cost(self, st: GemmStats, a: tuple, b: tuple, out: tuple | None, requant_out=True) -> Cost:
        """Cost of a GEMM: array cycles, operand reads (buf, bits, tensor), output writes."""
        c = Cost().use("array", st.cycles)
        c.macs, c.pe_busy = st.macs, st.macs * st.passes
        self.read(c, a[0], st.a_reads * nbytes(a[1]), a[2] if len(a) > 2 else None)
        self.read(c, b[0], st.b_reads * nbytes(b[1]), b[2] if len(b) > 2 else None)
        if out is not None:
            self.write(c, out[0], st.c_writes * nbytes(out[1]), out[2] if len(out) > 2 else None)
        if requant_out:
            c.use("requant", self.requant.cycles(st.c_writes))
        return c


# ============================================================================ layers

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

    def forward(self, acc: Accelerator, xs: list, train: bool):
        raise NotImplementedError(self.op)

    def backward(self, acc: Accelerator, cache, dy, need: list):
        """(dxs, grads {name: T}, error Cost, gradient Cost)."""
        raise NotImplementedError(self.op)

    def apply_update(self, acc: Accelerator, grads: dict, step: int, lr_shift: int,
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


def live_mask(acc_codes, f_acc: int, out_fmt: FixedFormat) -> np.ndarray:
    """§7 step 4: the accumulator lies inside out_fmt's range (output not clamped)."""
    s = f_acc - out_fmt.frac_bits
    lo, hi = out_fmt.min_code, out_fmt.max_code
    if s >= 0:
        return (acc_codes >= (lo << s)) & (acc_codes < ((hi + 1) << s))
    t = -s  # acc << t must lie in [lo, hi]
    return (acc_codes >= -((-lo) >> t)) & (acc_codes <= (hi >> t))


class DenseHw(HwLayer):
    trainable = True

    def forward(self, acc, xs, train):
        x = xs[0]
        n_in = x.codes.shape[-1]
        x2 = x.codes.reshape(-1, n_in)
        w = self.params["W"]
        f_acc = x.fmt.frac_bits + w.fmt.frac_bits
        init = None
        if "B" in self.params:
            b = self.params["B"]
            init = requant(b.codes, b.fmt.frac_bits, acc_fmt(self.num.acc_bits, f_acc),
                           self.num.act_rounding, self.num.acc_overflow)[None, :]
        a, st = acc.array.gemm(x2, w.codes.T, init, self.num.acc_bits, self.num.acc_overflow,
                               x.fmt.width, w.fmt.width)
        y = requant(a, f_acc, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        cost = acc.gemm_cost(st, ("act", x.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                             ("act", self.out_fmt.width))
        out = T(y.reshape(x.codes.shape[:-1] + (-1,)), self.out_fmt)
        cache = (x, live_mask(a, f_acc, self.out_fmt).reshape(out.codes.shape)) if train else None
        return out, cache, cost

    def backward(self, acc, cache, dy, need):
        x, live = cache
        num = self.num
        x2 = x.codes.reshape(-1, x.codes.shape[-1])
        d = np.where(live, dy.codes, 0).reshape(-1, live.shape[-1])
        w = self.params["W"]
        ecost, gcost = Cost().use("act", acc.act.cycles(d.size)), Cost()
        gw, st = acc.array.gemm(d.T, x2, None, num.acc_bits, num.acc_overflow, dy.fmt.width, x.fmt.width)
        gcost.add(acc.gemm_cost(st, ("err", dy.fmt.width), ("act", x.fmt.width), None, requant_out=False))
        grads = {"W": T(gw, acc_fmt(num.acc_bits, dy.fmt.frac_bits + x.fmt.frac_bits))}
        if "B" in self.params:
            grads["B"] = T(d.sum(axis=0), acc_fmt(num.acc_bits, dy.fmt.frac_bits))
            gcost.adds += d.size
        dx = None
        if need[0]:
            a, st = acc.array.gemm(d, w.codes, None, num.acc_bits, num.acc_overflow, dy.fmt.width, w.fmt.width)
            codes, fmt = narrow(a, dy.fmt.frac_bits + w.fmt.frac_bits, num.err_bits, num.err_rounding)
            dx = T(codes.reshape(x.codes.shape), fmt)
            ecost.add(acc.gemm_cost(st, ("err", dy.fmt.width), ("weight", w.fmt.width, f"param/{self.name}/W"),
                                    ("err", num.err_bits)))
        return [dx], grads, ecost, gcost


class ReluHw(HwLayer):
    def forward(self, acc, xs, train):
        x = xs[0]
        y, mask = act.relu(x.codes)
        c = Cost().use("act", acc.act.cycles(y.size))
        acc.read(c, "act", y.size * nbytes(x.fmt.width))
        acc.write(c, "act", y.size * nbytes(x.fmt.width))
        return T(y, x.fmt), (mask if train else None), c

    def backward(self, acc, cache, dy, need):
        c = Cost().use("act", acc.act.cycles(dy.codes.size))
        acc.read(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        acc.write(c, "err", dy.codes.size * nbytes(dy.fmt.width))
        return [T(np.where(cache, dy.codes, 0), dy.fmt)], {}, c, Cost()


class ClipHw(ReluHw):
    def forward(self, acc, xs, train):
        x = xs[0]
        lo = act.quantize_bound(float(self.attrs.get("min", -np.inf)), x.fmt)
        hi = act.quantize_bound(float(self.attrs.get("max", np.inf)), x.fmt)
        y, mask = act.clip(x.codes, lo, hi)
        return T(y, x.fmt), (mask if train else None), Cost().use("act", acc.act.cycles(y.size))


class LeakyReluHw(HwLayer):
    ALPHA_FRAC = 16

    def forward(self, acc, xs, train):
        x = xs[0]
        self.alpha = act.quantize_bound(float(self.attrs.get("alpha", 0.01)), FixedFormat(self.ALPHA_FRAC + 1, 1))
        y, mask = act.leaky(x.codes, self.alpha, self.ALPHA_FRAC, self.num.act_rounding)
        return T(y, x.fmt), (mask if train else None), Cost().use("act", acc.act.cycles(y.size))

    def backward(self, acc, cache, dy, need):
        neg = shift_round(dy.codes * self.alpha, self.ALPHA_FRAC, self.num.err_rounding)
        return [T(np.where(cache, dy.codes, neg), dy.fmt)], {}, Cost().use("act", acc.act.cycles(dy.codes.size)), Cost()


class FlattenHw(HwLayer):
    """Data movement: the address generator reads the same buffer in another order (free)."""

    def forward(self, acc, xs, train):
        x = xs[0]
        return T(x.codes.reshape((x.codes.shape[0],) + tuple(np.atleast_1d(self.out_shape))), x.fmt), \
            (x.codes.shape if train else None), Cost()

    def backward(self, acc, cache, dy, need):
        return [T(dy.codes.reshape(cache), dy.fmt)], {}, Cost(), Cost()


class TanhHw(HwLayer):
    """§9.2/§9.4 through the activation unit's ROM; output ap_fixed<act_bits,1>."""

    func, deriv = staticmethod(act.tanh), staticmethod(act.tanh_deriv)

    def forward(self, acc, xs, train):
        x = xs[0]
        fmt = FixedFormat(self.num.act_bits, 1)
        y = type(self).func(x.codes, x.fmt.frac_bits, fmt, self.num.act_rounding)
        c = Cost().use("act", acc.act.cycles(y.size))
        c.lut_lookups = int(y.size)
        return T(y, fmt), (y if train else None), c

    def backward(self, acc, cache, dy, need):
        fmt = FixedFormat(self.num.act_bits, 1)
        d, dfmt = type(self).deriv(cache, fmt)
        codes, efmt = narrow(dy.codes * d, dy.fmt.frac_bits + dfmt.frac_bits, self.num.err_bits, self.num.err_rounding)
        return [T(codes, efmt)], {}, Cost().use("act", acc.act.cycles(codes.size)), Cost()


class SigmoidHw(TanhHw):
    func, deriv = staticmethod(act.sigmoid), staticmethod(act.sigmoid_deriv)


HW_LAYERS = {"Tanh": TanhHw, "Sigmoid": SigmoidHw, "Dense": DenseHw, "Relu": ReluHw, "Clip": ClipHw, "LeakyRelu": LeakyReluHw,
             "Flatten": FlattenHw, "Reshape": FlattenHw}


def make_hw_layer(node, layer) -> HwLayer:
    from . import datapath_conv, datapath_merge, datapath_recurrent  # noqa: F401  (register the other layer kinds)
    cls = HW_LAYERS.get(node.op)
    if cls is None:
        raise EdgeDFAError(f"hdl_models: node {node.name!r}: op {node.op!r} is not modelled;"
                           f" modelled ops: {', '.join(sorted(HW_LAYERS))}")
    return cls(node, layer)
