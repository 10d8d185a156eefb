"""``int`` export: the engine's integer inference as an ONNX graph of integer ops.

Every activation is an int64 tensor of codes. Accumulation is exact (MatMulInteger or
ConvInteger with int8 operands when the sum provably fits int32, int64 MatMul otherwise);
when an accumulator could overflow, a saturating one is reproduced step by step (a Scan
over k in ascending order, datapath §4) and a wrapping one by one wrap of the exact sum.
Requantization is an arithmetic shift built from Mod and exact Div (floor semantics, any
opset >= 13) with the rounding of datapath §2, then the overflow of §3 (Clip, Where or
Mod). RNN/GRU/LSTM are unrolled over time (``export_recurrent.py``). So onnxruntime's
outputs equal ``model.run(x)`` bit for bit for float32 inputs.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, Overflow, Rounding, acc_format, acc_limits, acc_step, requantize
from ..layers.batchnorm import EPS_FRAC, MANT, RECIP_BITS, RSQRT_TABLE, SHIFT_MAX, gain_unit
from ..layers.batchnorm import GUARD as BN_GUARD
from ..layers.batchnorm import reciprocal as ln_reciprocal
from ..layers.batchnorm import shift as ln_shift
from ..layers.pad import constant_code
from ..layers.softmax import RECIP_FRAC as SOFTMAX_RECIP_FRAC
from ..loss import EXP2_FRAC_BITS, EXP2_LUT, LOG2E_Q14, MAX_EXP_SHIFT
from ..lut import (COEF_FRAC, ERF_TABLE, EXPM1_TABLE, INTERP_BITS, INTERP_FRAC, LUT_IN_FMT, SOFTPLUS_TABLE, TANH_TABLE,
                   elu_format, softplus_format)
from ..graph import MOVES, RECURRENT
from ..registry import Registry
from .export_graph import Builder, emit_move, float_type, tensor_info, window_attrs
from .export_recurrent import emit_recurrent

OPSET = 17
INT8 = (-128, 127)
INT32_MAX = 2**31 - 1
INT64_SAFE = 2**62  # exact sums stay below this in int64


class IntOps:
    """Integer primitives (int64 tensors) emitted into ``b``; constants go to ``consts``."""

    def __init__(self, b: Builder, consts: Builder | None = None):
        self.b, self.c = b, consts or b

    def k(self, v) -> str:
        """An int64 constant (scalars named by value)."""
        v = np.asarray(v, dtype=np.int64)
        return self.c.i64(v, f"i64_{int(v)}" if v.ndim == 0 else "i64")

    def op(self, op, ins, base, **attrs) -> str:
        return self.b.node(op, ins, base, **attrs)

    def cast(self, x, to, base) -> str:
        return self.op("Cast", [x], base, to=to)

    def pow2(self, s, base: str) -> str:
        """2^s: a constant for constant ``s``; for a tensor ``s`` (int64 in [0, 62]) a Gather."""
        if isinstance(s, str):
            return self.op("Gather", [self.c.i64(np.int64(1) << np.arange(63, dtype=np.int64), "pow2"), s],
                           f"{base}/pow2")
        return self.k(np.int64(1) << np.asarray(s, dtype=np.int64))

    def floor_shift(self, x, s, base: str):
        """(floor(x / 2^s), x mod 2^s): Mod is a floor modulo for integers, so x - r divides exactly.
        ``s`` is one shift or, broadcast over the codes, one per channel, or an int64 tensor of
        shifts in [0, 62] (computed by the graph)."""
        m = self.pow2(s, base)
        r = self.op("Mod", [x, m], f"{base}/residual")
        q = self.op("Div", [self.op("Sub", [x, r], f"{base}/sub"), m], f"{base}/shift")
        return q, r

    def round_shift(self, x, s: int, rounding: Rounding, base: str) -> str:
        """x * 2^-s rounded by ``rounding`` (datapath §2); s <= 0 is an exact left shift."""
        if s <= 0:
            return x if s == 0 else self.op("Mul", [x, self.k(1 << -s)], f"{base}/shl")
        if s > 62:
            raise EdgeDFAError(f"{base}: right shift of {s} bits is beyond 62")
        return self.round_right(x, np.int64(s), rounding, base)

    def round_shift_channels(self, x, shifts, rounding: Rounding, base: str) -> str:
        """x · 2^-s with one right shift s in [0, 62] per channel (a constant broadcast over axis 1)."""
        shifts = np.asarray(shifts, dtype=np.int64)
        return self.round_right(x, shifts, rounding, base) if shifts.any() else x

    def round_right(self, x, s, rounding: Rounding, base: str) -> str:
        """x * 2^-s rounded by ``rounding`` for right shifts s >= 0 (a scalar or per channel, or
        an int64 tensor of shifts in [0, 62])."""
        R, rounding = Rounding, Rounding.parse(rounding)
        if isinstance(s, str):
            h = self.pow2(self.op("Max", [self.op("Sub", [s, self.k(1)], f"{base}/s_1"), self.k(0)],
                                  f"{base}/s_half"), f"{base}/half")
            if rounding in (R.AP_TRN, R.AP_RND, R.AP_RND_MIN_INF):
                if rounding is R.AP_RND:
                    x = self.op("Add", [x, self.op("Where", [self.op("Greater", [s, self.k(0)], f"{base}/s_pos"), h,
                                                             self.k(0)], f"{base}/offset")], f"{base}/half")
                elif rounding is R.AP_RND_MIN_INF:
                    x = self.op("Add", [x, self.op("Sub", [h, self.k(1)], f"{base}/offset")], f"{base}/half")
                return self.floor_shift(x, s, base)[0]
        else:
            h = np.int64(1) << np.maximum(s - 1, 0)  # half; 1 where s = 0 (the residual is then 0)
            if rounding in (R.AP_TRN, R.AP_RND, R.AP_RND_MIN_INF):
                offset = {R.AP_TRN: 0 * h, R.AP_RND: np.where(s > 0, h, 0), R.AP_RND_MIN_INF: h - 1}[rounding]
                if np.any(offset):
                    x = self.op("Add", [x, self.k(offset)], f"{base}/half")
                return self.floor_shift(x, s, base)[0]
            h = self.k(h)
        q, r = self.floor_shift(x, s, base)
        if rounding is R.AP_TRN_ZERO:
            up = self.op("And", [self.op("Greater", [r, self.k(0)], f"{base}/inexact"),
                                 self.op("Less", [x, self.k(0)], f"{base}/negative")], f"{base}/up")
        else:
            tie = self.tie_breaker(x, q, rounding, base)
            up = self.op("Greater", [self.op("Add", [r, tie], f"{base}/tie"), h], f"{base}/up")
        return self.op("Add", [q, self.cast(up, TensorProto.INT64, f"{base}/up_int")], f"{base}/round")

    def tie_breaker(self, x, q, rounding, base) -> str:
        """1 where a residual of exactly half should round up, else 0 (then up = r + t > h)."""
        R = Rounding
        if rounding is R.AP_RND_CONV:
            return self.op("Mod", [q, self.k(2)], f"{base}/odd")
        if rounding is R.AP_RND_INF:
            cond = self.op("GreaterOrEqual", [x, self.k(0)], f"{base}/nonnegative")
        elif rounding is R.AP_RND_ZERO:
            cond = self.op("Less", [x, self.k(0)], f"{base}/negative")
        else:
            raise EdgeDFAError(f"{base}: rounding {rounding.value} cannot be exported (it needs random words)")
        return self.cast(cond, TensorProto.INT64, f"{base}/tie_int")

    def overflow(self, x, lo: int, hi: int, width: int, mode: Overflow, base: str) -> str:
        """Bring x into [lo, hi] by the overflow mode (datapath §3)."""
        mode = Overflow.parse(mode)
        if mode is Overflow.AP_WRAP:
            shifted = self.op("Sub", [x, self.k(lo)], f"{base}/offset")
            return self.op("Add", [self.op("Mod", [shifted, self.k(1 << width)], f"{base}/wrap"),
                                   self.k(lo)], f"{base}/wrapped")
        if mode is Overflow.AP_SAT_ZERO:
            out = self.op("Or", [self.op("Less", [x, self.k(lo)], f"{base}/below"),
                                 self.op("Greater", [x, self.k(hi)], f"{base}/above")], f"{base}/outside")
            return self.op("Where", [out, self.k(0), x], f"{base}/zeroed")
        if mode is Overflow.AP_SAT_SYM and lo < 0:
            lo = -hi
        return self.op("Clip", [x, self.k(lo), self.k(hi)], f"{base}/saturate")

    def saturate(self, x, fmt: FixedFormat, mode: Overflow, base: str) -> str:
        return self.overflow(x, fmt.min_code, fmt.max_code, fmt.width, mode, base)

    def requantize(self, x, src_frac: int, dst: FixedFormat, rounding, overflow, base) -> str:
        """fixed.requantize on int64 codes: shift with rounding (or a bounded left shift), overflow."""
        shift, overflow = src_frac - dst.frac_bits, Overflow.parse(overflow)
        if shift >= 0:
            return self.saturate(self.round_shift(x, shift, rounding, base), dst, overflow, base)
        s, w = -shift, dst.width
        if overflow is Overflow.AP_WRAP:  # only the bits landing in the low W matter
            if s >= w:
                return self.op("Mul", [x, self.k(0)], f"{base}/zero")
            x = self.op("Mod", [x, self.k(1 << (w - s))], f"{base}/low_bits")
        else:  # the saturating modes only need the side: cap the magnitude first
            s = min(s, w + 1)
            cap = ((1 << w) >> s) + 1
            x = self.op("Clip", [x, self.k(-cap), self.k(cap)], f"{base}/cap")
        return self.saturate(self.op("Mul", [x, self.k(1 << s)], f"{base}/shl"), dst, overflow, base)


    # ---------------------------------------------------------------- table functions (§9)
    def tanh_magnitude(self, mag, mag_frac: int, base: str, table=TANH_TABLE, name="tanh") -> str:
        """Interpolated tanh (or another §9 table) of non-negative codes: T[k]*2^9 + (T[k+1]-T[k])*r."""
        u = self.requantize(mag, mag_frac, LUT_IN_FMT, Rounding.AP_RND, Overflow.AP_SAT, f"{base}/lut_in")
        k, r = self.floor_shift(u, INTERP_BITS, f"{base}/segment")
        lo = self.op("Gather", [self.c.i64(table[:-1], f"{name}_table"), k], f"{base}/table")
        step = self.op("Gather", [self.c.i64(np.diff(table), f"{name}_steps"), k], f"{base}/steps")
        return self.op("Add", [self.op("Mul", [lo, self.k(1 << INTERP_BITS)], f"{base}/base"),
                               self.op("Mul", [step, r], f"{base}/interpolate")], f"{base}/{name}")

    def tanh(self, x, in_frac: int, out: FixedFormat, rounding, base: str) -> str:
        """lut.tanh_codes: |x| through the table, rounded to ``out``, sign restored (odd)."""
        y = self.tanh_magnitude(self.op("Abs", [x], f"{base}/abs"), in_frac, base)
        m = self.requantize(y, INTERP_FRAC, out, rounding, Overflow.AP_SAT, f"{base}/out")
        neg = self.op("Less", [x, self.k(0)], f"{base}/negative")
        return self.op("Where", [neg, self.op("Neg", [m], f"{base}/neg"), m], f"{base}/signed")

    def sigmoid(self, x, in_frac: int, out: FixedFormat, rounding, base: str) -> str:
        """lut.sigmoid_codes: (1 + tanh(x/2)) / 2 from the same table."""
        return self.half_one_plus(x, in_frac + 1, out, rounding, base, TANH_TABLE, "tanh")

    def normal_cdf(self, x, in_frac: int, out: FixedFormat, rounding, base: str) -> str:
        """lut.normal_cdf_codes: (1 + erf(x/sqrt 2)) / 2 from the erf table (§9.8)."""
        return self.half_one_plus(x, in_frac, out, rounding, base, ERF_TABLE, "erf")

    def elu(self, x, in_frac: int, out: FixedFormat, coefs: tuple, rounding, base: str) -> str:
        """lut.elu_codes: x·gamma above zero, -(1 - exp(x))·gamma·alpha from the expm1 table at |x|/2."""
        c_pos, c_neg = coefs
        v = self.tanh_magnitude(self.op("Abs", [x], f"{base}/abs"), in_frac + 1, base, EXPM1_TABLE, "expm1")
        neg = self.op("Mul", [v, self.k(-c_neg)], f"{base}/times_gamma_alpha")
        neg = self.requantize(neg, INTERP_FRAC + COEF_FRAC, out, rounding, Overflow.AP_SAT, f"{base}/negative")
        pos = self.requantize(self.op("Mul", [x, self.k(c_pos)], f"{base}/times_gamma"), in_frac + COEF_FRAC, out,
                              rounding, Overflow.AP_SAT, f"{base}/positive")
        return self.op("Where", [self.op("Greater", [x, self.k(0)], f"{base}/above_zero"), pos, neg], base)

    def softplus(self, x, in_frac: int, out: FixedFormat, rounding, base: str) -> str:
        """lut.softplus_codes: max(x, 0) plus the log(1 + exp(-t)) table at |x|/2, one rounding."""
        v = self.tanh_magnitude(self.op("Abs", [x], f"{base}/abs"), in_frac + 1, base, SOFTPLUS_TABLE, "softplus")
        frac = max(in_frac, INTERP_FRAC)
        pos = self.round_shift(self.op("Max", [x, self.k(0)], f"{base}/relu"), in_frac - frac, Rounding.AP_TRN,
                               f"{base}/pos")
        v = self.round_shift(v, INTERP_FRAC - frac, Rounding.AP_TRN, f"{base}/table_aligned")
        total = self.op("Add", [pos, v], f"{base}/sum")
        return self.requantize(total, frac, out, rounding, Overflow.AP_SAT, base)

    def half_one_plus(self, x, in_frac: int, out: FixedFormat, rounding, base: str, table, name) -> str:
        """(1 ± table(|x|)) / 2 by the sign of x, one rounding into ``out``."""
        y = self.tanh_magnitude(self.op("Abs", [x], f"{base}/abs"), in_frac, base, table, name)
        one = self.k(1 << INTERP_FRAC)
        neg = self.op("Less", [x, self.k(0)], f"{base}/negative")
        w = self.op("Where", [neg, self.op("Sub", [one, y], f"{base}/below"),
                              self.op("Add", [one, y], f"{base}/above")], f"{base}/one_plus")
        return self.requantize(w, INTERP_FRAC + 1, out, rounding, Overflow.AP_SAT, f"{base}/out")


# --------------------------------------------------------------------------- accumulation

def fits_int8(lo: int, hi: int) -> bool:
    return INT8[0] <= lo and hi <= INT8[1]


def accumulator_init(layer, frac: int):
    """The bias as the accumulator's initial value (datapath §7), or None."""
    b, num = layer.params.get("B"), layer.num
    if b is None:
        return None
    init = requantize(b.codes, b.fmt, acc_format(num.acc_bits, frac), num.act_rounding, num.acc_overflow)
    return acc_step(init, num.acc_bits, num.acc_overflow)


class AccPlan:
    """How one layer's dot products are reproduced, from a static bound on every partial sum."""

    def __init__(self, name, w_rows, x_fmt: FixedFormat, w_fmt: FixedFormat, init, num):
        xmax = max(-x_fmt.min_code, x_fmt.max_code)
        rows = [int(v) for v in np.abs(np.asarray(w_rows, dtype=np.int64)).astype(object).sum(axis=1)]
        init_abs = [0] * len(rows) if init is None else [abs(int(v)) for v in np.reshape(init, -1)]
        self.products = max(rows, default=0) * xmax  # bound on |sum of products|
        self.bound = max((r * xmax + i for r, i in zip(rows, init_abs)), default=0)
        hi = acc_limits(num.acc_bits)[1]
        self.acc_bits, self.mode = num.acc_bits, Overflow.parse(num.acc_overflow)
        if self.bound <= hi:
            self.kind = "sum"  # no partial sum can leave the register: every mode agrees
        elif self.mode is Overflow.AP_WRAP:
            self.kind = "wrap"  # arithmetic modulo 2^A: the exact sum, wrapped once
        else:
            self.kind = "scan"  # a saturating register: reproduce every step
        if self.kind != "scan" and self.bound >= INT64_SAFE:
            raise EdgeDFAError(f"node {name!r}: accumulator bound 2^{self.bound.bit_length()} exceeds int64")
        self.int8 = (fits_int8(x_fmt.min_code, x_fmt.max_code) and fits_int8(w_fmt.min_code, w_fmt.max_code)
                     and self.products <= INT32_MAX)

    def describe(self) -> str:
        how = {"sum": "exact int32 sum" if self.int8 else "exact int64 sum",
               "wrap": f"exact sum wrapped to {self.acc_bits} bits",
               "scan": f"step-by-step {self.mode.value} accumulator (Scan)"}[self.kind]
        return f"{how}, |acc| <= 2^{self.bound.bit_length()}"


def data_plan(name, k: int, a_fmt: FixedFormat, b_fmt: FixedFormat, num) -> AccPlan:
    """The AccPlan of a product of two data tensors over ``k`` terms: each term may reach the
    product of the operands' peak codes."""
    peak = max(-b_fmt.min_code, b_fmt.max_code)
    return AccPlan(name, np.full((1, k), peak, np.int64), a_fmt, b_fmt, None, num)


class IntEmitter:
    """Canonical graph + integer state -> ONNX integer graph (float32 in, float out)."""

    def __init__(self, model):
        self.model, self.graph = model, model.graph
        self.b = Builder({self.graph.input_name, self.graph.output_name})
        self.ops = IntOps(self.b)
        self.env: dict = {}
        self.plans: dict = {}  # node name -> AccPlan

    def build(self):
        g, m = self.graph, self.model
        self.env[g.input_name] = (self.quantize_input(), m.in_fmt)
        for node, layer in zip(g.nodes, m.layers):
            outs = self.emit(node, layer, [self.env[i] for i in node.inputs if i])
            self.env.update({name: t for name, t in zip(node.outputs, outs) if name})
        out_type = self.dequantize_output()
        inputs = [tensor_info(g.input_name, TensorProto.FLOAT, g.input_shape)]
        outputs = [tensor_info(g.output_name, out_type, m.shapes[g.output_name])]
        return self.b.graph(g.name or "edgedfa", inputs, outputs), OPSET

    def emit(self, node, layer, ins):
        return INT_OPS.get(node.op, f"node {node.name!r}: ")(self, node, layer, ins)

    # ---------------------------------------------------------------- edges
    def quantize_input(self) -> str:
        """quantize(x, in_fmt, AP_RND_CONV, AP_SAT): the input stage's Mul and Add in float64 (the
        engine's two roundings), exact scaling, Round (half to even), Clip."""
        f, x = self.model.in_fmt, self.graph.input_name
        o = self.ops
        xd = o.cast(x, TensorProto.DOUBLE, "input/to_double")
        stage = self.model.input_stage
        if stage is not None:
            xd = o.op("Mul", [xd, self.b.const(stage[0], np.float64, "input/stage_scale")], "input/stage_scale")
            xd = o.op("Add", [xd, self.b.const(stage[1], np.float64, "input/stage_offset")], "input/stage_offset")
        y = o.op("Mul", [xd, self.b.const(np.ldexp(1.0, f.frac_bits), np.float64, "input/scale")], "input/scale")
        y = o.op("Round", [y], "input/round")
        lo, hi = (self.b.const(float(c), np.float64, f"input/{k}") for c, k in ((f.min_code, "lo"), (f.max_code, "hi")))
        y = o.op("Clip", [y, lo, hi], "input/saturate")
        return o.cast(y, TensorProto.INT64, "input/codes")

    def dequantize_output(self):
        """Codes times 2^-F in float32 (float64 for codes wider than 24 bits): exact."""
        codes, fmt = self.env[self.graph.output_name]
        tp, dt = float_type(fmt.width)
        y = self.ops.cast(codes, tp, "output/to_float")
        scale = self.b.const(np.ldexp(1.0, -fmt.frac_bits), dt, "output/scale")
        self.b.node("Mul", [y, scale], "output/dequantize", [self.graph.output_name])
        return tp

    # ---------------------------------------------------------------- accumulators
    def init_codes(self, layer, frac: int):
        return accumulator_init(layer, frac)

    def finish_sum(self, acc, init, plan: AccPlan, base: str) -> str:
        """Add the initial value to an exact sum of products; wrap once under AP_WRAP."""
        if init is not None and np.any(init):
            acc = self.ops.op("Add", [acc, self.ops.k(init)], f"{base}/bias")
        if plan.kind == "wrap":
            lo, hi = acc_limits(plan.acc_bits)
            acc = self.ops.overflow(acc, lo, hi, plan.acc_bits, Overflow.AP_WRAP, f"{base}/acc")
        return acc

    def matmul(self, x, xf: FixedFormat, W, init, num, base: str):
        """(acc, plan): x (..., K) times W (O, K) transposed through the engine's accumulator (§4)."""
        o, w = self.ops, W.codes
        plan = AccPlan(base, w, xf, W.fmt, init, num)
        n_out, k = w.shape
        if plan.kind == "scan":
            x2 = o.op("Reshape", [x, o.k([-1, k])], f"{base}/rows")
            xk = o.op("Transpose", [o.op("Unsqueeze", [x2, o.k([1])], f"{base}/rows3")], f"{base}/k_first",
                      perm=[2, 0, 1])  # (K, M, 1): every Scan runs over axis 0
            start = np.zeros(n_out, np.int64) if init is None else np.reshape(init, -1)
            acc = self.scan(self.expand(start, x2, 1, [n_out], base), [xk, o.k(w.T)], plan, base)
            shape = o.op("Concat", [o.op("Shape", [x], f"{base}/in_shape", end=-1), o.k([n_out])],
                         f"{base}/out_shape", axis=0)
            return o.op("Reshape", [acc, shape], f"{base}/unrows"), plan
        if plan.int8:
            x8 = o.cast(x, TensorProto.INT8, f"{base}/x_int8")
            w8 = self.b.const(w.T, np.int8, f"{base}/W_T")
            acc = o.cast(o.op("MatMulInteger", [x8, w8], f"{base}/matmul"), TensorProto.INT64, f"{base}/acc")
        else:
            acc = o.op("MatMul", [x, o.k(w.T)], f"{base}/matmul")
        return self.finish_sum(acc, init, plan, base), plan

    def scan(self, acc0, scans, plan: AccPlan, base: str) -> str:
        """acc = ovf(acc + a_k * b_k) for k ascending: a Scan over axis 0 of a and b."""
        body = Builder()
        ops = IntOps(body, self.b)  # constants live in the outer graph (lexical scope)
        names = [f"{base}/acc_in", f"{base}/a_k", f"{base}/b_k"]
        p = ops.op("Mul", names[1:], f"{base}/product")
        s = ops.op("Add", [names[0], p], f"{base}/add")
        lo, hi = acc_limits(plan.acc_bits)
        out = ops.overflow(s, lo, hi, plan.acc_bits, plan.mode, f"{base}/acc")
        body.node("Identity", [out], f"{base}/acc_out", [f"{base}/acc_out"])
        info = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in names]
        graph = body.graph(f"{base}/body", info,
                           [helper.make_tensor_value_info(f"{base}/acc_out", TensorProto.INT64, None)])
        return self.b.node("Scan", [acc0] + list(scans), f"{base}/scan", body=graph, num_scan_inputs=len(scans))

    def expand(self, init, like: str, end: int, tail, base: str) -> str:
        """``init`` broadcast to shape Shape(like)[:end] + tail (the register's start value)."""
        shape = self.ops.op("Concat", [self.ops.op("Shape", [like], f"{base}/shape", end=end),
                                        self.ops.k(list(tail))], f"{base}/acc_shape", axis=0)
        return self.ops.op("Expand", [self.ops.k(init), shape], f"{base}/acc0")


# --------------------------------------------------------------------------- layers

INT_OPS = Registry("op of the int export")


@INT_OPS.register(*MOVES)
def _move(em: IntEmitter, node, layer, ins):
    x, fmt = ins[0]
    value = em.ops.k(constant_code(node.attrs.get("value", 0.0), fmt)) if node.op == "Pad" else None
    return [(emit_move(em.b, node, x, em.b.unique(f"{node.outputs[0]}/q"), em.model.shapes[node.inputs[0]], value), fmt)]


@INT_OPS.register(*RECURRENT)
def _recurrent(em: IntEmitter, node, layer, ins):
    return emit_recurrent(em, node, layer, ins)

@INT_OPS.register("Dense")
def _dense(em: IntEmitter, node, layer, ins):
    (x, xf), = ins
    W, num = layer.params["W"], layer.num
    frac = xf.frac_bits + W.fmt.frac_bits
    acc, plan = em.matmul(x, xf, W, accumulator_init(layer, frac), num, node.name)
    em.plans[node.name] = plan
    y = em.ops.requantize(acc, frac, layer.out_fmt, num.act_rounding, num.act_overflow, f"{node.name}/requantize")
    return [(y, layer.out_fmt)]


def im2col(em: IntEmitter, x: str, geo, channels: int, base: str) -> str:
    """(N, C, KH*KW, OH*OW) int64: the input under every tap of every window (zero padding)."""
    o = em.ops
    t, l, b, r = geo.pads
    if any(geo.pads):
        pads = [0, 0, t, l, 0, 0, b, r] if geo.ndim == 2 else [0, 0, l, 0, 0, r]
        x = o.op("Pad", [x, o.k(pads), o.k(0)], f"{base}/pad")
    hp, wp = geo.in_hw[0] + t + b, geo.in_hw[1] + l + r
    flat = o.op("Reshape", [x, o.k([0, channels, hp * wp])], f"{base}/flat")
    oh, ow = np.meshgrid(np.arange(geo.out_hw[0]), np.arange(geo.out_hw[1]), indexing="ij")
    taps = [((oh * geo.strides[0] + kh * geo.dilations[0]) * wp + ow * geo.strides[1] + kw * geo.dilations[1])
            .reshape(-1) for kh in range(geo.kernel[0]) for kw in range(geo.kernel[1])]
    return o.op("Gather", [flat, o.k(np.stack(taps))], f"{base}/im2col", axis=2)


@INT_OPS.register("Conv")
def _conv(em: IntEmitter, node, layer, ins):
    (x, xf), = ins
    W, num, geo, o = layer.params["W"], layer.num, layer.geo, em.ops
    frac = xf.frac_bits + W.fmt.frac_bits
    init = em.init_codes(layer, frac)
    n_out, g = W.codes.shape[0], geo.groups
    plan = em.plans[node.name] = AccPlan(node.name, W.codes.reshape(n_out, -1), xf, W.fmt, init, num)
    base = node.name
    out_shape = [0, n_out] + list(geo.out_spatial())
    if plan.kind != "scan" and plan.int8:
        x8 = o.cast(x, TensorProto.INT8, f"{base}/x_int8")
        w8 = em.b.const(W.codes, np.int8, f"{base}/W")
        acc = o.op("ConvInteger", [x8, w8], f"{base}/conv", group=g, **window_attrs(geo))
        acc = o.cast(acc, TensorProto.INT64, f"{base}/acc")
        bias = None if init is None else init.reshape((n_out,) + (1,) * geo.ndim)
        return [_conv_out(em, layer, em.finish_sum(acc, bias, plan, base), frac, base)]
    cols = im2col(em, x, geo, layer.in_shapes[0][0], base)
    p = int(np.prod(geo.out_hw))
    kg = W.codes[0].size
    cols = o.op("Reshape", [cols, o.k([0, g, kg, p])], f"{base}/groups")
    w3 = W.codes.reshape(g, n_out // g, kg)
    start = (np.zeros(n_out, np.int64) if init is None else init).reshape(g, n_out // g, 1)
    if plan.kind == "scan":
        cols5 = o.op("Unsqueeze", [cols, o.k([2])], f"{base}/cols5")  # (N, g, 1, Kg, P)
        colk = o.op("Transpose", [cols5], f"{base}/k_first", perm=[3, 0, 1, 2, 4])
        acc0 = em.expand(start, cols, 1, [g, n_out // g, p], base)
        acc = em.scan(acc0, [colk, o.k(w3.transpose(2, 0, 1)[..., None])], plan, base)
    else:
        acc = o.op("MatMul", [o.k(w3), cols], f"{base}/matmul")
        acc = em.finish_sum(acc, start, plan, base)
    acc = o.op("Reshape", [acc, o.k(out_shape)], f"{base}/unfold")
    return [_conv_out(em, layer, acc, frac, base)]


def _conv_out(em, layer, acc, frac, base):
    num = layer.num
    y = em.ops.requantize(acc, frac, layer.out_fmt, num.act_rounding, num.act_overflow, f"{base}/requantize")
    return y, layer.out_fmt


@INT_OPS.register("MaxPool")
def _maxpool(em: IntEmitter, node, layer, ins):
    """MaxPool on int8 codes when they fit, else on float64 (every code < 2^53 is exact)."""
    (x, xf), = ins
    o, base = em.ops, node.name
    narrow = fits_int8(xf.min_code, xf.max_code)
    tp = TensorProto.INT8 if narrow else TensorProto.DOUBLE
    y = o.op("MaxPool", [o.cast(x, tp, f"{base}/in")], base, **window_attrs(layer.geo))
    return [(o.cast(y, TensorProto.INT64, f"{base}/codes"), xf)]


@INT_OPS.register("AveragePool", "GlobalAveragePool")
def _avgpool(em: IntEmitter, node, layer, ins):
    """Exact window sum times the integer reciprocal r_n, one requantization (datapath §8.5)."""
    (x, xf), = ins
    o, base, geo, num = em.ops, node.name, layer.geo, layer.num
    channels = layer.in_shapes[0][0]
    if node.op == "GlobalAveragePool":
        axes = list(range(2, 2 + len(layer.in_shapes[0]) - 1))
        s = o.op("ReduceSum", [x, o.k(axes)], f"{base}/sum", keepdims=1)
        p = o.op("Mul", [s, o.k(int(layer.scale.reshape(-1)[0]))], f"{base}/times_reciprocal")
    else:
        s = o.op("ReduceSum", [im2col(em, x, geo, channels, base), o.k([2])], f"{base}/sum", keepdims=0)
        p = o.op("Mul", [s, o.k(layer.scale.reshape(-1))], f"{base}/times_reciprocal")
        p = o.op("Reshape", [p, o.k([0, channels] + list(geo.out_spatial()))], f"{base}/unfold")
    yf = layer.out_fmt if layer.changes_scale else xf  # the mean's own format under adaptive scaling
    y = o.requantize(p, xf.frac_bits + layer.shift, yf, num.act_rounding, num.act_overflow, f"{base}/requantize")
    return [(y, yf)]


@INT_OPS.register("BatchNorm")
def _batch_norm(em, node, layer, ins):
    """Inference with the running statistics (datapath §8.7): x̂ by a per-channel multiply and
    shift, then γ·x̂ + β in the accumulator and one requantization."""
    (x, xf), = ins
    o, base, num = em.ops, node.name, layer.num
    rank = len(layer.in_shapes[0])
    shape = (layer.channels,) + (1,) * (rank - 1)
    stats = layer.running_statistics(xf)
    units = [gain_unit(v, phi, xf.frac_bits, layer.xhat_fmt.frac_bits) for v, phi in stats["gains"]]
    d = o.op("Sub", [o.op("Mul", [x, o.k(1 << BN_GUARD)], f"{base}/align"),
                     o.k(np.reshape(stats["mu"], shape))], f"{base}/centre")
    p = o.op("Mul", [d, o.k(np.reshape([u[0] for u in units], shape))], f"{base}/times_inv")
    xhat = o.saturate(o.round_shift_channels(p, np.reshape([u[1] for u in units], shape), num.act_rounding,
                                             f"{base}/xhat"), layer.xhat_fmt, Overflow.AP_SAT, f"{base}/xhat")
    g, b = layer.params["scale"], layer.params["B"]
    frac = g.fmt.frac_bits + layer.xhat_fmt.frac_bits
    init = accumulator_init(layer, frac)
    acc = o.op("Add", [o.op("Mul", [xhat, o.k(g.codes.reshape(shape))], f"{base}/scale"),
                       o.k(init.reshape(shape))], f"{base}/bias")
    lo, hi = acc_limits(num.acc_bits)
    top = int(np.abs(init).max(initial=0)) + int(np.abs(g.codes).max(initial=0)) * (1 << (layer.xhat_fmt.width - 1))
    if top > hi:  # one addition into the register: its overflow once
        acc = o.overflow(acc, lo, hi, num.acc_bits, num.acc_overflow, f"{base}/acc")
    y = o.requantize(acc, frac, layer.out_fmt, num.act_rounding, num.act_overflow, f"{base}/requantize")
    return [(y, layer.out_fmt)]


def _bit_length(o: IntOps, v: str, base: str) -> str:
    """bitlen(v) of non-negative int64 codes (the leading-one detector): #{i < 63: v >= 2^i}."""
    ge = o.op("GreaterOrEqual", [v, o.c.i64(np.int64(1) << np.arange(63, dtype=np.int64), "pow2")], f"{base}/ge")
    return o.op("ReduceSum", [o.cast(ge, TensorProto.INT64, f"{base}/ge_int"), o.k([-1])], f"{base}/bitlen",
                keepdims=1)


def _rsqrt(o: IntOps, v: str, base: str) -> tuple:
    """(t, f) of datapath §8.7's rsqrt(v, 0) on int64 codes >= 0 (0 where v = 0)."""
    e = o.op("Sub", [_bit_length(o, v, base), o.k(1)], f"{base}/e")
    k = o.op("Sub", [e, o.op("Mod", [e, o.k(2)], f"{base}/e_odd")], f"{base}/k")
    s = o.op("Sub", [k, o.k(16)], f"{base}/s")
    down = o.op("Div", [v, o.pow2(o.op("Clip", [s, o.k(0), o.k(62)], f"{base}/s_right"), f"{base}/right")],
                f"{base}/down")
    up = o.op("Mul", [v, o.pow2(o.op("Clip", [o.op("Neg", [s], f"{base}/neg_s"), o.k(0), o.k(62)],
                                      f"{base}/s_left"), f"{base}/left")], f"{base}/up")
    u = o.op("Where", [o.op("GreaterOrEqual", [s, o.k(0)], f"{base}/s_nonneg"), down, up], f"{base}/u")
    j = o.op("Sub", [o.op("Div", [u, o.k(512)], f"{base}/u_hi"), o.k(128)], f"{base}/j")
    lo = o.op("Gather", [o.c.i64(np.array(RSQRT_TABLE), "rsqrt_table"), j], f"{base}/lo")
    hi = o.op("Gather", [o.c.i64(np.array(RSQRT_TABLE), "rsqrt_table"), o.op("Add", [j, o.k(1)], f"{base}/j1")],
              f"{base}/hi")
    y = o.op("Sub", [o.op("Mul", [lo, o.k(512)], f"{base}/lo_512"),
                     o.op("Mul", [o.op("Sub", [lo, hi], f"{base}/step"), o.op("Mod", [u, o.k(512)], f"{base}/r")],
                          f"{base}/interp")], f"{base}/y")
    t = o.round_shift(y, 6, Rounding.AP_RND_CONV, f"{base}/t")
    f = o.op("Add", [o.op("Div", [k, o.k(2)], f"{base}/half_k"), o.k(MANT)], f"{base}/f")
    pos = o.op("Greater", [v, o.k(0)], f"{base}/positive")
    return (o.op("Where", [pos, t, o.k(0)], f"{base}/t0"), o.op("Where", [pos, f, o.k(0)], f"{base}/f0"))


def _norm_rows(o, x, layer, base: str):
    """(rows, D) of a normalisation's codes: consecutive, or (§8.11, positions after the
    normalised axes) each position's D values gathered by a Transpose."""
    if not layer.centred and layer.positions > 1:
        x = o.op("Transpose", [o.op("Reshape", [x, o.k([-1, layer.features, layer.positions])], f"{base}/blocks")],
                 f"{base}/features_last", perm=[0, 2, 1])
    return o.op("Reshape", [x, o.k([-1, layer.features])], f"{base}/rows")


def _from_norm_rows(o, rows, layer, base: str):
    """Row-ordered x̂ in the affine's view (M, parameters, positions)."""
    if not layer.centred and layer.positions > 1:
        blocks = o.op("Reshape", [rows, o.k([-1, layer.positions, layer.features])], f"{base}/row_blocks")
        return o.op("Transpose", [blocks], f"{base}/per_parameter", perm=[0, 2, 1])
    return o.op("Reshape", [rows, o.k([-1, layer.channels, layer.positions])], f"{base}/per_parameter")


@INT_OPS.register("LayerNorm", "GroupNorm", "RMSNorm")
def _layer_norm(em, node, layer, ins):
    """Per row (datapath §8.8, §8.9, §8.11, as training and inference compute it): exact sums, μ and Q,
    the rsqrt by a leading-one count, the ROM and its interpolation, the gain unit, x̂ by a
    per-row multiply and data-dependent shift, γ·x̂ + β in the accumulator (γ, β per feature or
    per channel), one requantization."""
    (x, xf), = ins
    o, base, num = em.ops, node.name, layer.num
    n, f_x, xh = layer.features, xf.frac_bits, layer.xhat_fmt
    r, L = ln_reciprocal(n)
    eps = ln_shift(layer.eps_code * n * n, EPS_FRAC - 2 * xf.frac_bits)
    top = (1 << (xf.width - 1)) * n
    if top * r >= INT64_SAFE or n * top * (1 << (xf.width - 1)) + eps >= INT64_SAFE:
        raise EdgeDFAError(f"node {node.name!r}: {node.op}'s sums at {xf.width} bits over {n} values per row could"
                           " pass int64 in the int export")
    rows = _norm_rows(o, x, layer, base)
    s2 = o.op("ReduceSum", [o.op("Mul", [rows, rows], f"{base}/square"), o.k([1])], f"{base}/s2", keepdims=1)
    q = o.op("Mul", [s2, o.k(n)], f"{base}/n_s2")
    if layer.centred:  # §8.11 has μ = 0 and Q = D·S2
        s1 = o.op("ReduceSum", [rows, o.k([1])], f"{base}/s1", keepdims=1)
        mu = o.round_shift(o.op("Mul", [s1, o.k(r)], f"{base}/s1_r"), RECIP_BITS + L - BN_GUARD, Rounding.AP_RND_CONV,
                           f"{base}/mean")
        q = o.op("Sub", [q, o.op("Mul", [s1, s1], f"{base}/s1_sq")], f"{base}/q")
    t, f = _rsqrt(o, o.op("Add", [q, o.k(eps)], f"{base}/q_eps"), f"{base}/rsqrt")
    # the gain unit (§8.7) on V = n·t, Φ = f − F_x
    v = o.op("Mul", [t, o.k(n)], f"{base}/gain")
    z = o.op("Max", [o.op("Sub", [_bit_length(o, v, f"{base}/gain"), o.k(MANT)], f"{base}/excess"), o.k(0)],
             f"{base}/z")
    phi_z = o.op("Sub", [o.op("Sub", [f, o.k(f_x)], f"{base}/phi"), z], f"{base}/phi_z")
    k = o.op("Clip", [o.op("Add", [phi_z, o.k(f_x + BN_GUARD - xh.frac_bits)], f"{base}/k_raw"), o.k(0),
                      o.k(SHIFT_MAX)], f"{base}/k")
    sh = o.op("Sub", [o.op("Sub", [f, o.k(f_x)], f"{base}/phi2"),
                      o.op("Add", [k, o.k(xh.frac_bits - f_x - BN_GUARD)], f"{base}/f_iota")], f"{base}/iota_shift")
    right = o.round_right(v, o.op("Clip", [sh, o.k(0), o.k(62)], f"{base}/sh_right"), Rounding.AP_RND_CONV,
                          f"{base}/iota_right")
    left = o.op("Mul", [o.op("Min", [v, o.k(1 << (MANT + 1))], f"{base}/v_cap"),
                        o.pow2(o.op("Clip", [o.op("Neg", [sh], f"{base}/neg_sh"), o.k(0), o.k(MANT + 1)],
                                    f"{base}/sh_left"), f"{base}/iota_left")], f"{base}/iota_up")
    iota = o.op("Min", [o.op("Where", [o.op("GreaterOrEqual", [sh, o.k(0)], f"{base}/sh_nonneg"), right, left],
                             f"{base}/iota_any"), o.k(1 << MANT)], f"{base}/iota")
    d = o.op("Mul", [rows, o.k(1 << BN_GUARD)], f"{base}/align")
    if layer.centred:
        d = o.op("Sub", [d, mu], f"{base}/centre")
    xhat = o.saturate(o.round_right(o.op("Mul", [d, iota], f"{base}/times_iota"), k, num.act_rounding,
                                    f"{base}/xhat"), xh, Overflow.AP_SAT, f"{base}/xhat")
    g, view = layer.gamma(), (1, layer.channels, 1)
    frac = g.fmt.frac_bits + xh.frac_bits
    init = accumulator_init(layer, frac)
    init = np.zeros(view, dtype=np.int64) if init is None else init.reshape(view)
    xhat = _from_norm_rows(o, xhat, layer, base)
    acc = o.op("Add", [o.op("Mul", [xhat, o.k(g.codes.reshape(view))], f"{base}/scale"), o.k(init)], f"{base}/bias")
    lo, hi = acc_limits(num.acc_bits)
    if int(np.abs(init).max(initial=0)) + int(np.abs(g.codes).max(initial=0)) * (1 << (xh.width - 1)) > hi:
        acc = o.overflow(acc, lo, hi, num.acc_bits, num.acc_overflow, f"{base}/acc")
    y = o.requantize(acc, frac, layer.out_fmt, num.act_rounding, num.act_overflow, f"{base}/requantize")
    return [(o.op("Reshape", [y, o.op("Shape", [x], f"{base}/shape")], f"{base}/unrows"), layer.out_fmt)]


@INT_OPS.register("Softmax")
def _softmax(em, node, layer, ins):
    """§8.10 (§11's exponent): (x − max)·log2(e) in Q14 rounded to 2^-8, the EXP2 table at its low
    8 bits shifted right by the rest (a Div by a Gathered power of two: every operand >= 0), the
    exact row sum S, r = (2^46 + S div 2) div S, then e·r requantized once."""
    (x, xf), = ins
    o, base, num, ax = em.ops, node.name, layer.num, layer.axis
    d = o.op("Mul", [o.op("Sub", [x, o.op("ReduceMax", [x], f"{base}/max", axes=[ax], keepdims=1)],
                          f"{base}/centre"), o.k(LOG2E_Q14)], f"{base}/times_log2e")
    shift = xf.frac_bits + 14 - EXP2_FRAC_BITS
    if shift < 0:  # the clamp of §11 step 1 before a left shift
        d = o.op("Max", [d, o.k(-(1 << max(13 + shift, 0)))], f"{base}/clamp")
    u = o.op("Neg", [o.round_shift(d, shift, Rounding.AP_RND, f"{base}/t")], f"{base}/minus_t")
    n, f = o.floor_shift(u, EXP2_FRAC_BITS, f"{base}/split")
    e = o.op("Div", [o.op("Gather", [o.c.i64(EXP2_LUT, "exp2_table"), f], f"{base}/table"),
                     o.pow2(o.op("Min", [n, o.k(MAX_EXP_SHIFT)], f"{base}/n"), f"{base}/shift")], f"{base}/exp2")
    total = o.op("ReduceSum", [e, o.k([ax])], f"{base}/sum", keepdims=1)
    r = o.op("Div", [o.op("Add", [o.k(1 << SOFTMAX_RECIP_FRAC), o.op("Div", [total, o.k(2)], f"{base}/half_sum")],
                          f"{base}/rounded"), total], f"{base}/reciprocal")
    y = o.requantize(o.op("Mul", [e, r], f"{base}/times_reciprocal"), SOFTMAX_RECIP_FRAC, layer.out_fmt,
                     num.act_rounding, num.act_overflow, f"{base}/requantize")
    return [(y, layer.out_fmt)]


@INT_OPS.register("Relu")
def _relu(em, node, layer, ins):
    (x, xf), = ins
    return [(em.ops.op("Max", [x, em.ops.k(0)], node.name), xf)]


@INT_OPS.register("Clip")
def _clip(em, node, layer, ins):
    (x, xf), = ins
    lo, hi = layer._bounds(xf)
    return [(em.ops.op("Clip", [x, em.ops.k(lo), em.ops.k(hi)], node.name), xf)]


@INT_OPS.register("LeakyRelu")
def _leaky(em, node, layer, ins):
    """x >= 0 ? x : round_shift(x * alpha_code, 16, act_rounding) (datapath §7)."""
    (x, xf), = ins
    o, base = em.ops, node.name
    scaled = o.op("Mul", [x, o.k(layer.alpha_code)], f"{base}/times_alpha")
    neg = o.round_shift(scaled, 16, layer.num.act_rounding, f"{base}/shift")
    keep = o.op("GreaterOrEqual", [x, o.k(0)], f"{base}/nonnegative")
    return [(o.op("Where", [keep, x, neg], base), xf)]


@INT_OPS.register("PRelu")
def _prelu(em, node, layer, ins):
    """x > 0 ? x : requantize(x * slope, F_x + F_a -> F_x, act_rounding, act_overflow) (datapath §7.1)."""
    (x, xf), = ins
    o, base, a = em.ops, node.name, layer.params["slope"]
    scaled = o.op("Mul", [x, o.k(a.codes)], f"{base}/times_slope")
    neg = o.requantize(scaled, xf.frac_bits + a.fmt.frac_bits, xf, layer.num.act_rounding, layer.num.act_overflow,
                       f"{base}/requantize")
    return [(o.op("Where", [o.op("Greater", [x, o.k(0)], f"{base}/positive"), x, neg], base), xf)]


@INT_OPS.register("HardSigmoid")
def _hard_sigmoid(em, node, layer, ins):
    """max(0, requantize(x * alpha_code + beta_code)) into ap_fixed<act_bits,1> (datapath §7)."""
    (x, xf), = ins
    o, base = em.ops, node.name
    beta, frac = layer.beta_code(xf)
    s = o.op("Add", [o.op("Mul", [x, o.k(layer.alpha_code)], f"{base}/times_alpha"), o.k(beta)], f"{base}/plus_beta")
    y = o.requantize(s, frac, layer.out_fmt, layer.num.act_rounding, Overflow.AP_SAT, f"{base}/requantize")
    return [(o.op("Max", [y, o.k(0)], base), layer.out_fmt)]


@INT_OPS.register("Add")
def _add(em, node, layer, ins):
    """Inputs aligned exactly to the finest fraction, summed, requantized to out_fmt."""
    o, base, num = em.ops, node.name, layer.num
    frac = max(f.frac_bits for _, f in ins)
    signs = node.attrs.get("signs") or [1] * len(ins)
    parts = [o.round_shift(x if s > 0 else o.op("Neg", [x], f"{base}/negate{i}"), f.frac_bits - frac,
                           Rounding.AP_TRN, f"{base}/align{i}") for i, ((x, f), s) in enumerate(zip(ins, signs))]
    s = parts[0]
    for i, p in enumerate(parts[1:]):
        s = o.op("Add", [s, p], f"{base}/sum{i}")
    y = o.requantize(s, frac, layer.out_fmt, num.act_rounding, num.act_overflow, f"{base}/requantize")
    return [(y, layer.out_fmt)]


@INT_OPS.register("Mul")
def _mul(em, node, layer, ins):
    """The exact product of the codes (fraction bits add), requantized to out_fmt."""
    o, base, num = em.ops, node.name, layer.num
    (a, af), (b, bf) = ins
    p = o.op("Mul", [a, b], f"{base}/product")
    y = o.requantize(p, af.frac_bits + bf.frac_bits, layer.out_fmt, num.act_rounding, num.act_overflow,
                     f"{base}/requantize")
    return [(y, layer.out_fmt)]


@INT_OPS.register("MatMul")
def _matmul(em, node, layer, ins):
    """The batched product through the accumulator (an exact MatMul, MatMulInteger on int8
    codes, wrapped once under AP_WRAP, or a Scan over k when a saturating register may
    clip), requantized to out_fmt."""
    o, base, num = em.ops, node.name, layer.num
    (a, af), (b, bf) = ins
    plan = em.plans[node.name] = data_plan(base, layer.in_shapes[0][-1], af, bf, num)
    if plan.kind == "scan":  # a_k (K, ..., M, 1) times b_k (K, ..., 1, P), k ascending
        r = len(layer.in_shapes[0]) + 1
        lead = list(range(r - 1))
        ak = o.op("Transpose", [o.op("Unsqueeze", [a, o.k([r])], f"{base}/a_col")], f"{base}/a_k_first",
                  perm=[r - 1] + lead + [r])
        bk = o.op("Transpose", [o.op("Unsqueeze", [b, o.k([r - 2])], f"{base}/b_row")], f"{base}/b_k_first",
                  perm=[r - 1] + lead[:-1] + [r - 2, r])
        p = layer.in_shapes[1][-1]  # the register starts at 0 in every output [..., M, P]
        acc = em.scan(em.expand(np.zeros(p, np.int64), a, -1, [p], base), [ak, bk], plan, base)
    elif plan.int8:
        acc = o.cast(o.op("MatMulInteger", [o.cast(a, TensorProto.INT8, f"{base}/a_int8"),
                                            o.cast(b, TensorProto.INT8, f"{base}/b_int8")], f"{base}/matmul"),
                     TensorProto.INT64, f"{base}/acc")
        acc = em.finish_sum(acc, None, plan, base)
    else:
        acc = em.finish_sum(o.op("MatMul", [a, b], f"{base}/matmul"), None, plan, base)
    y = o.requantize(acc, af.frac_bits + bf.frac_bits, layer.out_fmt, num.act_rounding, num.act_overflow,
                     f"{base}/requantize")
    return [(y, layer.out_fmt)]


@INT_OPS.register("Concat")
def _concat(em, node, layer, ins):
    o, base, num, fmt = em.ops, node.name, layer.num, layer.out_fmt
    parts = [o.requantize(x, f.frac_bits, fmt, num.act_rounding, num.act_overflow, f"{base}/in{i}")
             for i, (x, f) in enumerate(ins)]
    return [(o.op("Concat", parts, base, axis=int(node.attrs.get("axis", 1))), fmt)]


@INT_OPS.register("Tanh", "Sigmoid")
def _table(em, node, layer, ins):
    """Tanh / Sigmoid layers: the §9 table unit to ap_fixed<act_bits,1>."""
    (x, xf), = ins
    func = em.ops.tanh if node.op == "Tanh" else em.ops.sigmoid
    return [(func(x, xf.frac_bits, layer.out_fmt, layer.num.act_rounding, node.name), layer.out_fmt)]


@INT_OPS.register("NormalCdf")
def _normal_cdf(em, node, layer, ins):
    """(1 + erf(x/sqrt 2)) / 2 from the §9.8 erf table, as sigmoid reads tanh's."""
    (x, xf), = ins
    return [(em.ops.normal_cdf(x, xf.frac_bits, layer.out_fmt, layer.num.act_rounding, node.name), layer.out_fmt)]


@INT_OPS.register("Elu")
def _elu(em, node, layer, ins):
    """gamma * ELU_alpha(x) by §9.9, into the input's format with the integer bits gamma needs."""
    (x, xf), = ins
    out = elu_format(xf, layer.c_pos, layer.c_neg)
    return [(em.ops.elu(x, xf.frac_bits, out, (layer.c_pos, layer.c_neg), layer.num.act_rounding, node.name), out)]


@INT_OPS.register("Softplus")
def _softplus(em, node, layer, ins):
    """max(x, 0) + log(1 + exp(-|x|)) by §9.10, into the input's width with max(I, 1) + 1 integer bits."""
    (x, xf), = ins
    out = softplus_format(xf)
    return [(em.ops.softplus(x, xf.frac_bits, out, layer.num.act_rounding, node.name), out)]
