"""Recurrent layers on the accelerator (§9.6, §9.7): RNN (tanh/sigmoid/relu), GRU (both
``linear_before_reset``), LSTM; forward and backward through time (full, truncated
``bptt_steps = k``, local ``bptt_steps = 0``), every direction.

Dataflow per direction (docs/hardware.md, "Recurrent layers"):

- **input GEMM**: ``X = x W^T + Wb`` for all T steps at once on the PE array (rows
  ``t·N + n``); the wide accumulators wait in the activation buffer;
- **per step** (sequential: step t+1 needs h_t): the recurrent GEMM ``h R^T + Rb`` on the
  array (GRU lbr 0: the z/r rows, then the h rows with ``r ⊗ h``), then the **cell unit**
  on the vector lanes: exact sums ``⊕`` (aligners), exact products ``⊗``, the gates
  through the activation unit's tanh ROM (§9.2/§9.3), the state requantized (§9.6); the
  new state is written to the state buffer (the activation buffer) and, in training, the
  gate values of the step are kept for BPTT;
- **backward**: per chain, one step at a time from the last processed step: derivative
  codes from the stored outputs (§9.4, multipliers, no ROM), the gate errors narrowed by
  the block-exponent unit, the carried error ``dA R`` on the array; then the weight
  gradients ``dA^T x``, ``dR^T h_{t-1}`` and the input error ``dA W`` as three GEMMs over
  all steps (k = processing step, then sample).

Every integer is computed here from docs/datapath.md; the engine's layer object is read
only for its configuration (attributes, calibrated formats, the parameters' start values).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, Overflow, Rounding

from .. import activation_unit as act
from .. import lanes
from ..lanes import WIDE_BITS
from ..accounting import Cost, nbytes
from ..mac_array import operand_dtype
from ..requant_unit import ERR_FRAC_MAX, narrow, requant, shift_round
from .base import HwLayer, T, acc_fmt, register

CELL_BITS_MIN = 16  # LSTM cell state width: max(16, act_bits) (§9.6)


# ============================================================ the cell unit's arithmetic

class V(NamedTuple):
    """A wide intermediate of the cell unit: exact integer codes with ``frac`` fraction bits."""

    codes: np.ndarray
    frac: int


def of(t) -> V | None:
    return None if t is None else V(np.asarray(t.codes, dtype=np.int64), int(t.fmt.frac_bits))


def _maxabs(c) -> int:
    return int(np.abs(c).max()) if c.size else 0


def _live(vs):
    return [v for v in vs if v is not None and v.codes.size and v.codes.any()]


def common_frac(vs, terms_summed: int = 1) -> int:
    """§9.6 ⊕: the finest fraction among the terms, unless a term aligned there reaches the
    adder's bound: 2^60, halved for every doubling of the terms summed from eight on, so that
    k terms below it add up within int64."""
    bound = WIDE_BITS - max(0, terms_summed.bit_length() - 3)
    return min([max(v.frac for v in vs)] + [v.frac + bound - _maxabs(v.codes).bit_length() for v in vs])


def align(v: V, frac: int, rounding) -> np.ndarray:
    s = v.frac - frac
    return v.codes if s == 0 else shift_round(v.codes, s, rounding)


def oplus(vs, rounding) -> V | None:
    """a ⊕ b ⊕ ...: exact sum of the non-zero terms; None when every term is zero. Two terms of
    one matrix shape go through the compiled aligners and adder (``lanes.oplus2``)."""
    vs = [v for v in vs if v is not None]
    if len(vs) == 2 and vs[0].codes.ndim == 2 and vs[0].codes.shape == vs[1].codes.shape:
        got = lanes.oplus2(vs[0].codes, vs[0].frac, vs[1].codes, vs[1].frac, lanes.ROUNDING[Rounding.parse(rounding)])
        if got is not None:
            return None if got[0] is None else V(*got)
    return oplus_reference(vs, rounding)


def oplus_reference(vs, rounding) -> V | None:
    """``oplus`` in numpy, term by term."""
    vs = _live(vs)
    if not vs:
        return None
    f = common_frac(vs, len(vs))
    return V(sum(align(v, f, rounding) for v in vs), f)


def total(vs, rounding) -> V:
    """⊕ for forward values: zero codes instead of 'no value'."""
    return oplus(vs, rounding) or V(np.zeros_like(vs[0].codes), vs[0].frac)


def otimes(*vs) -> V | None:
    """a ⊗ b ⊗ ...: exact product, fraction bits add (None if a factor is None)."""
    if any(v is None for v in vs):
        return None
    codes, frac = vs[0].codes, vs[0].frac
    for v in vs[1:]:
        codes, frac = codes * v.codes, frac + v.frac
    return V(codes, frac)


def one_minus(v: V) -> V:
    return V((1 << v.frac) - v.codes, v.frac)


def cols(v: V | None, lo: int, hi: int) -> V | None:
    return None if v is None else V(v.codes[..., lo:hi], v.frac)


def cat(parts, shape, rounding) -> V | None:
    """[a | b | ...]: gate blocks aligned to one fraction (⊕'s rule); None parts are zeros."""
    live = _live(parts)
    if not live:
        return None
    f = common_frac(live)
    out = [np.zeros(shape, np.int64) if p is None else align(p, f, rounding) for p in parts]
    return V(np.concatenate(out, axis=-1), f)


def N(v: V | None, num, width=None) -> V | None:
    """§9.7 N(v): block-exponent narrowing to the state error width (or ``width``), no finer
    than 2^-32; None if zero."""
    if v is None or not v.codes.any():
        return None
    width = num.state_err_width if width is None else width
    codes, fmt = narrow(v.codes, v.frac, width, num.err_rounding)
    return V(codes, fmt.frac_bits) if codes.any() else None


def common_stack(vs, shape, num) -> V | None:
    """Per-step errors stacked in the coarsest step exponent (state error width, err rounding,
    AP_SAT)."""
    live = [v for v in vs if v is not None]
    if not live:
        return None
    f = min(v.frac for v in live)
    fmt = FixedFormat.with_frac(num.state_err_width, f)
    out = np.zeros((len(vs),) + tuple(shape), np.int64)
    for i, v in enumerate(vs):
        if v is not None:
            out[i] = requant(v.codes, v.frac, fmt, num.err_rounding, Overflow.AP_SAT)
    return V(out, f)


def grad_width(num) -> int:
    """Accumulators of the backward GEMMs: a DSP48's 48 bits when the errors carried through
    time are wider than the layer's errors, else acc_bits."""
    return max(num.acc_bits, 48) if num.state_err_width > num.err_bits else num.acc_bits


def align_grads(vs, num) -> V:
    """Wide gradients brought to the coarsest fraction among the non-zero ones (the backward
    accumulator width, err rounding, AP_SAT), stacked."""
    f = min((v.frac for v in _live(vs)), default=vs[0].frac)
    fmt = acc_fmt(grad_width(num), f)
    return V(np.stack([requant(v.codes, v.frac, fmt, num.err_rounding, Overflow.AP_SAT) for v in vs]), f)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ============================================================ the layers

class RecurrentHw(HwLayer):
    """Shared recurrence: input GEMM, one cell per step, BPTT chains, gradient GEMMs."""

    trainable = True
    n_outputs = 2
    gates = 1
    default_acts = ("Tanh",)
    lookups = 1  # ROM lookups per hidden unit per step
    eltwise = 1  # cell-unit element operations per hidden unit per step (sums, products, requant)
    keep = 1  # values per hidden unit per step kept for BPTT (besides h)

    def __init__(self, node, layer):
        super().__init__(node, layer)
        a = self.attrs
        direction = _text(a.get("direction", "forward"))
        self.n_dirs = 2 if direction == "bidirectional" else 1
        self.reverse = [direction == "reverse" or (direction == "bidirectional" and d == 1)
                        for d in range(self.n_dirs)]
        self.hidden = int(a.get("hidden_size", self.params["R"].codes.shape[-1]))
        self.layout = int(a.get("layout", 0))
        acts = [_text(s) for s in a.get("activations", [])] or list(self.default_acts) * self.n_dirs
        k = len(self.default_acts)
        self.acts = [acts[i * k:(i + 1) * k] for i in range(self.n_dirs)]
        self.gate_fmt = FixedFormat(self.num.gate_width, 1)
        self._inits = {}  # _bias: (d, half, frac, B's format) -> (B's codes, the init row)
        self._operands = {}  # _operand: (param, d, rows, transposed) -> (its codes, operand, max)
        self.h_fmt = layer.out_fmt
        self.bptt_steps = getattr(layer, "bptt_steps", None)
        self.lbr = int(a.get("linear_before_reset", 0))

    def state_fmts(self) -> dict:
        return {"h": self.h_fmt}

    # ------------------------------------------------------------ array operations
    def _gemm(self, acc, cost, a: V, what: str, d: int, rows=slice(None), transpose=False, init=None, a_width=None,
              out=None):
        """a @ (rows of parameter ``what``, direction d, transposed or not) on the array."""
        num, b_fmt = self.num, self.params[what].fmt
        b, b_max = self._operand(what, d, rows, transpose)
        width = grad_width(num) if out == "err" else num.acc_bits
        r, st = acc.array.gemm(a.codes.reshape(-1, a.codes.shape[-1]), b, init, width,
                               num.acc_overflow, a_width or num.act_bits, b_fmt.width, b_max=b_max)
        cost.add(acc.gemm_cost(st, ("act" if out != "err" else "err", a_width or num.act_bits),
                               ("weight", b_fmt.width, f"param/{self.name}/{what}"), None, requant_out=False))
        self._seq += st.cycles
        return V(r.reshape(a.codes.shape[:-1] + (b.shape[1],)), a.frac + b_fmt.frac_bits)

    def _operand(self, what: str, d: int, rows: slice, transpose: bool) -> tuple:
        """(B operand, its max |code|) of a parameter's rows as the array reads them, laid out
        once per parameter version (every time step and sample reuses it)."""
        p = self.params[what]
        key = (what, d, rows.start, rows.stop, transpose)
        held = self._operands.get(key)
        if held is not None and held[0] is p.codes:
            return held[1], held[2]
        view = p.codes[d, rows].T if transpose else p.codes[d, rows]
        top = lanes.maxabs(view)
        op = np.ascontiguousarray(view, dtype=operand_dtype(top))
        op.flags.writeable = False
        self._operands[key] = (p.codes, op, top)
        return op, top

    def _bias(self, d: int, half: int, frac: int):
        """The bias half (0: W's, 1: R's) of direction d in the accumulator's format, read once
        per parameter version like the accumulator's init register (every time step reuses it)."""
        b = self.params.get("B")
        if b is None:
            return None
        key = (d, half, frac, b.fmt)
        held = self._inits.get(key)
        if held is not None and held[0] is b.codes:
            return held[1]
        gh = self.gates * self.hidden
        init = requant(b.codes[d, half * gh:(half + 1) * gh], b.fmt.frac_bits, acc_fmt(self.num.acc_bits, frac),
                       self.num.act_rounding, self.num.acc_overflow)[None, :]
        init.flags.writeable = False
        self._inits[key] = (b.codes, init)
        return init

    def hg(self, acc, cost, d: int, v: V, rows: slice) -> V:
        """Hg(rows, v) = gemm(v, R[rows]^T, init = Rb[rows]) (§9.6)."""
        R = self.params["R"]
        init = self._bias(d, 1, v.frac + R.fmt.frac_bits)
        return self._gemm(acc, cost, v, "R", d, rows, True, None if init is None else init[:, rows])

    # ------------------------------------------------------------ cell-unit operations
    def gate(self, pre: V, func: str) -> V:
        num = self.num
        if func == "Sigmoid":
            return V(act.sigmoid(pre.codes, pre.frac, self.gate_fmt, num.act_rounding), self.gate_fmt.frac_bits)
        if func == "Tanh":
            return V(act.tanh(pre.codes, pre.frac, self.gate_fmt, num.act_rounding), self.gate_fmt.frac_bits)
        if func == "Relu":
            q = requant(pre.codes, pre.frac, self.h_fmt, num.act_rounding, num.act_overflow)
            return V(np.maximum(q, 0), self.h_fmt.frac_bits)
        raise EdgeDFAError(f"node {self.name!r}: activation {func!r} is not modelled")

    def S(self, v: V, fmt: FixedFormat) -> V:
        return V(requant(v.codes, v.frac, fmt, self.num.act_rounding, self.num.act_overflow), fmt.frac_bits)

    @staticmethod
    def dtanh(t: V, fmt: FixedFormat) -> V:
        c, f = act.tanh_deriv(t.codes, fmt)
        return V(c, f.frac_bits)

    @staticmethod
    def dsig(s: V, fmt: FixedFormat) -> V:
        c, f = act.sigmoid_deriv(s.codes, fmt)
        return V(c, f.frac_bits)

    # ------------------------------------------------------------ forward
    def _steps_first(self, codes):
        return np.moveaxis(codes, 0, 1) if self.layout == 1 else codes

    def forward(self, acc, xs, train):
        x = xs[0]
        num, H = self.num, self.hidden
        xc = self._steps_first(np.asarray(x.codes, dtype=np.int64))
        steps, n = xc.shape[:2]
        Y = np.zeros((steps, self.n_dirs, n, H), np.int64)
        cost, caches, finals = Cost(), [], []
        self._seq, self._train = 0, train
        W = self.params["W"]
        state_bytes = 0
        for d in range(self.n_dirs):
            order = np.arange(steps)[::-1] if self.reverse[d] else np.arange(steps)
            xd = V(xc[order], x.fmt.frac_bits)
            init = self._bias(d, 0, xd.frac + W.fmt.frac_bits)
            xg = self._gemm(acc, cost, xd, "W", d, transpose=True, init=init, a_width=x.fmt.width)
            acc.write(cost, "act", xg.codes.size * nbytes(num.acc_bits))  # X for every step
            state = {k: V(np.zeros((n, H), np.int64), f.frac_bits) for k, f in self.state_fmts().items()}
            recs = []
            for s in range(steps):
                state, rec = self.cell(acc, cost, d, V(xg.codes[s], xg.frac), state)
                Y[order[s], d] = state["h"].codes
                recs.append(rec if train else None)
                # per step: read X_t and the state, write the new state (and the kept gates)
                sb = n * H * nbytes(self.h_fmt.width) * (len(state) + (self.keep if train else 0))
                acc.read(cost, "act", n * self.gates * H * nbytes(num.acc_bits))
                acc.write(cost, "act", sb, f"state/{self.name}")
                state_bytes += sb
            finals.append(state)
            caches.append({"order": order, "x": xd, "recs": recs})
        elems = self.n_dirs * steps * n * H
        cost.lut_lookups += elems * self.lookups
        act_cycles = acc.act.cycles(elems * (self.lookups + self.eltwise))
        cost.use("act", act_cycles).use("requant", acc.requant.cycles(elems * len(self.state_fmts())))
        cost.state_bytes += state_bytes
        cost.use("sequencer", self._seq + act_cycles)  # steps are sequential: GEMM, then cell
        outs = [Y] + [np.stack([f[k].codes for f in finals]) for k in self.state_fmts()]
        if self.layout == 1:
            outs = [np.moveaxis(outs[0], 2, 0)] + [np.moveaxis(o, 1, 0) for o in outs[1:]]
        fmts = [self.h_fmt] + list(self.state_fmts().values())
        ys = [T(o, f) for o, f in zip(outs, fmts)]
        return ys, ({"caches": caches, "x_shape": x.codes.shape, "x_width": x.fmt.width} if train else None), cost

    # ------------------------------------------------------------ backward
    def _split_dy(self, dy):
        if not isinstance(dy, (list, tuple)):
            dy = [dy, None] if dy.codes.ndim == 4 else [None, dy]
        dy = list(dy) + [None] * (3 - len(dy))
        out = []
        for i, e in enumerate(dy[:3]):
            v = of(e)
            if v is not None and self.layout == 1:
                v = V(np.moveaxis(v.codes, 0, 2 if i == 0 else 1), v.frac)
            if v is not None and v.frac > ERR_FRAC_MAX:
                v = N(v, self.num)
            out.append(v)
        return out

    def _injections(self, d, order, dY, dYh, dYc):
        rnd, steps = self.num.err_rounding, len(order)
        inj_h, inj_c = {}, {}
        for s in range(steps):
            terms = [None if dY is None else V(dY.codes[order[s], d], dY.frac)]
            if s == steps - 1 and dYh is not None:
                terms.append(V(dYh.codes[d], dYh.frac))
            e = oplus(terms, rnd)
            if e is not None:
                inj_h[s] = e
        if dYc is not None and dYc.codes[d].any():
            inj_c[steps - 1] = V(dYc.codes[d], dYc.frac)
        return inj_h, inj_c

    def _chains(self, steps, inj_h, inj_c):
        """(first step, last step, injected steps, carry) of every chain (§9.7 truncation)."""
        k = self.bptt_steps
        hit = sorted(set(inj_h) | set(inj_c), reverse=True)
        if not hit:
            return []
        if k is None or int(k) >= steps - 1:
            return [(hit[0], 0, set(hit), True)]
        if int(k) == 0:
            return [(hit[0], hit[-1], set(hit), False)]
        return [(s, max(0, s - int(k)), {s}, True) for s in hit]

    def _deltas(self, acc, cost, d, recs, inj_h, inj_c):
        num, rnd = self.num, self.num.err_rounding
        parts = [[] for _ in recs]
        for start, stop, injected, carry in self._chains(len(recs), inj_h, inj_c):
            ch = cc = None
            for s in range(start, stop - 1, -1):
                hin = inj_h.get(s) if s in injected else None
                cin = inj_c.get(s) if s in injected else None
                dh = N(oplus([hin, ch], rnd), num)
                dc = oplus([cin, cc], rnd)
                if dh is None and dc is None:
                    ch = cc = None
                    continue
                dA, dR, ch, cc = self.cell_back(acc, cost, d, recs[s], dh, dc, carry and s > stop)
                parts[s].append((dA, dR))
                self._steps_run += 1
        dA, dR = [], []
        for p in parts:
            if len(p) <= 1:
                dA.append(p[0][0] if p else None)
                dR.append(p[0][1] if p else None)
            else:  # several truncated chains reach this step: ⊕, then N
                dA.append(N(oplus([q[0] for q in p], rnd), num))
                dR.append(N(oplus([q[1] for q in p], rnd), num))
        return dA, dR

    def backward(self, acc, cache, dy, need):
        num = self.num
        dY, dYh, dYc = self._split_dy(dy)
        gh, H = self.gates * self.hidden, self.hidden
        grads = {k: [] for k in self.params}
        dxs = []
        ecost, gcost = Cost(), Cost()
        self._seq, self._steps_run = 0, 0
        for d, c in enumerate(cache["caches"]):
            inj_h, inj_c = self._injections(d, c["order"], dY, dYh, dYc)
            dA, dR = self._deltas(acc, ecost, d, c["recs"], inj_h, inj_c)
            n = c["x"].codes.shape[1]
            A = common_stack(dA, (n, gh), num)
            Rs = common_stack(dR, (n, gh), num)
            for k, g in self._param_grads(acc, gcost, d, c, A, Rs).items():
                grads[k].append(g)
            if need and need[0] and A is not None:
                seq0 = self._seq
                a = self._gemm(acc, ecost, A, "W", d, a_width=num.state_err_width, out="err")
                self._seq = seq0  # after the chain, not on its critical path per step
                codes = np.zeros(a.codes.shape, np.int64)
                codes[c["order"]] = a.codes
                dxs.append(V(codes, a.frac))
        # the kept gate values are read back once per step reached; errors written per step
        elems = self._steps_run * cache["caches"][0]["x"].codes.shape[1] * H
        kb = elems * (nbytes(self.h_fmt.width) + nbytes(self.gate_fmt.width) * self.keep)
        acc.read(ecost, "act", kb, f"state/{self.name}")
        ecost.state_bytes += kb
        acc.write(ecost, "err", elems * self.gates * nbytes(num.state_err_width))
        act_cycles = acc.act.cycles(elems * (self.eltwise + 2 * self.gates))
        ecost.use("act", act_cycles).use("requant", acc.requant.cycles(elems * self.gates))
        ecost.use("sequencer", self._seq + act_cycles)
        out = {}
        for k, v in grads.items():
            g = align_grads(v, num)
            out[k] = T(g.codes, acc_fmt(grad_width(num), g.frac))
        dx = None
        if need and need[0]:
            v = N(oplus(dxs, num.err_rounding), num, num.err_bits)  # the layer's own error width out
            if v is None:
                dx = T(np.zeros(cache["x_shape"], np.int64), FixedFormat.with_frac(num.err_bits, ERR_FRAC_MAX))
            else:
                codes = np.moveaxis(v.codes, 1, 0) if self.layout == 1 else v.codes
                dx = T(codes, FixedFormat.with_frac(num.err_bits, v.frac))
            ecost.use("requant", acc.requant.cycles(dx.codes.size))
        return [dx], out, ecost, gcost

    def recurrent_operands(self, recs):
        return [(slice(None), np.stack([r["h_prev"].codes for r in recs]), recs[0]["h_prev"].frac)]

    def _param_grads(self, acc, cost, d, c, A, Rs):
        num, x = self.num, c["x"]
        steps, n, n_in = x.codes.shape
        gh, H = self.gates * self.hidden, self.hidden
        if A is None:
            return {k: V(np.zeros_like(p.codes[d]), 0) for k, p in self.params.items()}
        a2 = A.codes.reshape(steps * n, gh)
        r2 = None if Rs is None else Rs.codes.reshape(steps * n, gh)  # None: every dR narrowed to nothing
        out = {}
        gw, st = acc.array.gemm(a2.T, x.codes.reshape(steps * n, n_in), None, grad_width(num), num.acc_overflow,
                                num.state_err_width, c.get("x_width", num.act_bits))
        cost.add(acc.gemm_cost(st, ("err", num.state_err_width), ("act", num.act_bits), None, requant_out=False))
        out["W"] = V(gw, A.frac + x.frac)
        blocks, frac = [], None
        for rows, op, f in ([] if r2 is None else self.recurrent_operands(c["recs"])):
            g, st = acc.array.gemm(r2[:, rows].T, op.reshape(steps * n, H), None, grad_width(num), num.acc_overflow,
                                   num.state_err_width, num.act_bits)
            cost.add(acc.gemm_cost(st, ("err", num.state_err_width), ("act", num.act_bits), None, requant_out=False))
            blocks.append(g)
            frac = Rs.frac + f if frac is None else frac
        out["R"] = V(np.concatenate(blocks), frac) if blocks else V(np.zeros_like(self.params["R"].codes[d]), 0)
        if "B" in self.params:
            bw = V(a2.sum(axis=0), A.frac)
            br = V(np.zeros(gh, np.int64), 0) if r2 is None else V(r2.sum(axis=0), Rs.frac)
            cost.adds += a2.size + (0 if r2 is None else r2.size)
            both = align_grads([bw, br], num)
            out["B"] = V(both.codes.reshape(-1), both.frac)
        return out

    # ------------------------------------------------------------ per kind
    def cell(self, acc, cost, d, xg, state):
        raise NotImplementedError

    def cell_back(self, acc, cost, d, rec, dh, dc, carry):
        raise NotImplementedError


@register("RNN")
class RnnHw(RecurrentHw):
    """h = f(X ⊕ Hg(all, h)), f in {tanh, sigmoid, relu}."""

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.gate_fmt = FixedFormat(self.num.act_bits, 1)  # an Elman cell's one gate is its state h
        self.relu = any(a[0] == "Relu" for a in self.acts)
        if self.relu:
            self.lookups = 0  # relu: a comparator, no ROM

    def managed(self):
        return {"out": self.h_fmt} if self.relu and self.num.adaptive else {}

    def set_managed(self, key, fmt):
        self.h_fmt = self.out_fmt = fmt

    def cell(self, acc, cost, d, xg, state):
        h = state["h"]
        pre = total([xg, self.hg(acc, cost, d, h, slice(None))], self.num.act_rounding)
        f = self.acts[d][0]
        if f == "Relu" and self._train:
            self.track("out", pre.codes, pre.frac)
        h_new = self.gate(pre, f)
        return {"h": h_new}, {"h_prev": h, "h": h_new}

    def cell_back(self, acc, cost, d, rec, dh, dc, carry):
        f, h = self.acts[d][0], rec["h"]
        if f == "Relu":
            dA = None if dh is None else N(V(np.where(h.codes > 0, dh.codes, 0), dh.frac), self.num)
        else:
            deriv = self.dtanh(h, self.gate_fmt) if f == "Tanh" else self.dsig(h, self.gate_fmt)
            dA = N(otimes(dh, deriv), self.num)
        carry_h = None
        if carry and dA is not None:
            carry_h = self._gemm(acc, cost, dA, "R", d, a_width=self.num.state_err_width, out="err")
        return dA, dA, carry_h, None


@register("GRU")
class GruHw(RecurrentHw):
    """Gates z, r, h; linear_before_reset 0: n = tanh(X_h ⊕ Hg(h, S(r ⊗ h))), 1: tanh(X_h ⊕ r ⊗ Hg(h, h))."""

    gates = 3
    default_acts = ("Sigmoid", "Tanh")
    lookups = 3
    eltwise = 8  # 3 pre-activation sums, r⊗(h|Hh), 1-z, two products, their sum
    keep = 4  # z, r, n, and Hh (lbr 1) or rh (lbr 0)

    def cell(self, acc, cost, d, xg, state):
        H, rnd = self.hidden, self.num.act_rounding
        h = state["h"]
        hzr = self.hg(acc, cost, d, h, slice(0, 2 * H))
        z = self.gate(total([cols(xg, 0, H), cols(hzr, 0, H)], rnd), "Sigmoid")
        r = self.gate(total([cols(xg, H, 2 * H), cols(hzr, H, 2 * H)], rnd), "Sigmoid")
        rec = {"h_prev": h, "z": z, "r": r}
        if self.lbr:
            hh = self.hg(acc, cost, d, h, slice(2 * H, 3 * H))
            pre = total([cols(xg, 2 * H, 3 * H), otimes(r, hh)], rnd)
            rec["hh"] = hh
        else:
            rh = self.S(otimes(r, h), self.h_fmt)
            pre = total([cols(xg, 2 * H, 3 * H), self.hg(acc, cost, d, rh, slice(2 * H, 3 * H))], rnd)
            rec["rh"] = rh
        n = self.gate(pre, "Tanh")
        rec["n"] = n
        h_new = self.S(total([otimes(one_minus(z), n), otimes(z, h)], rnd), self.h_fmt)
        return {"h": h_new}, rec

    def cell_back(self, acc, cost, d, rec, dh, dc, carry):
        num, rnd, H, g = self.num, self.num.err_rounding, self.hidden, self.gate_fmt
        z, r, n, h = rec["z"], rec["r"], rec["n"], rec["h_prev"]
        d_n = N(otimes(dh, one_minus(z), self.dtanh(n, g)), num)
        d_z = otimes(dh, total([h, V(-n.codes, n.frac)], rnd), self.dsig(z, g))
        shape = dh.codes.shape
        eb = num.state_err_width
        if self.lbr:
            dhh = N(otimes(d_n, r), num)
            d_r = otimes(N(otimes(d_n, rec["hh"]), num), self.dsig(r, g))
            dA = N(cat([d_z, d_r, d_n], shape, rnd), num)
            dR = None if dA is None else N(cat([cols(dA, 0, 2 * H), dhh], shape, rnd), num)
            rec_h = None
            if dR is not None and carry:
                rec_h = self._gemm(acc, cost, dR, "R", d, a_width=eb, out="err")
            terms = [otimes(dh, z), rec_h]
        else:
            drh = None
            if d_n is not None:
                drh = N(self._gemm(acc, cost, d_n, "R", d, slice(2 * H, None), a_width=eb, out="err"), num)
            d_r = otimes(drh, h, self.dsig(r, g))
            dA = dR = N(cat([d_z, d_r, d_n], shape, rnd), num)
            rec_zr = None
            if dA is not None and carry:
                rec_zr = self._gemm(acc, cost, cols(dA, 0, 2 * H), "R", d, slice(0, 2 * H), a_width=eb, out="err")
            terms = [otimes(dh, z), otimes(drh, r), rec_zr]
        return dA, dR, (oplus(terms, rnd) if carry else None), None

    def recurrent_operands(self, recs):
        H = self.hidden
        hp = np.stack([r["h_prev"].codes for r in recs])
        f = recs[0]["h_prev"].frac
        if self.lbr:
            return [(slice(None), hp, f)]
        return [(slice(0, 2 * H), hp, f), (slice(2 * H, 3 * H), np.stack([r["rh"].codes for r in recs]), f)]


@register("LSTM")
class LstmHw(RecurrentHw):
    """Gates i, o, f, c (no peepholes): c' = S(f ⊗ c ⊕ i ⊗ g, c_fmt), h' = S(o ⊗ tanh(c'), h_fmt)."""

    gates = 4
    n_outputs = 3
    default_acts = ("Sigmoid", "Tanh", "Tanh")
    lookups = 5  # i, o, f, g, tanh(c')
    eltwise = 9  # 4 pre-activation sums, f⊗c, i⊗g, their sum, o⊗tanh(c'), the cell requant
    keep = 7  # c_prev, i, o, f, g, tanh(c') (+ c)

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.cell_fmt = FixedFormat(max(CELL_BITS_MIN, self.num.act_bits), int(layer.state["cell_int_bits"]))

    def state_fmts(self):
        return {"h": self.h_fmt, "c": self.cell_fmt}

    def managed(self):
        return {"c": self.cell_fmt} if self.num.adaptive else {}

    def set_managed(self, key, fmt):
        self.cell_fmt = fmt

    def cell(self, acc, cost, d, xg, state):
        H, rnd = self.hidden, self.num.act_rounding
        h, c = state["h"], state["c"]
        pre = total([xg, self.hg(acc, cost, d, h, slice(None))], rnd)
        i, o, f, g = (self.gate(cols(pre, k * H, (k + 1) * H), fn)
                      for k, fn in enumerate(("Sigmoid", "Sigmoid", "Sigmoid", "Tanh")))
        mix = total([otimes(f, c), otimes(i, g)], rnd)
        if self._train:
            self.track("c", mix.codes, mix.frac)
        c_new = self.S(mix, self.cell_fmt)
        tc = self.gate(c_new, "Tanh")
        h_new = self.S(otimes(o, tc), self.h_fmt)
        return {"h": h_new, "c": c_new}, {"h_prev": h, "c_prev": c, "i": i, "o": o, "f": f, "g": g, "tc": tc}

    def cell_back(self, acc, cost, d, rec, dh, dc, carry):
        num, rnd, gf = self.num, self.num.err_rounding, self.gate_fmt
        i, o, f, g, tc = rec["i"], rec["o"], rec["f"], rec["g"], rec["tc"]
        c_prev = rec["c_prev"]
        dc = N(oplus([dc, otimes(dh, o, self.dtanh(tc, gf))], rnd), num)
        if dh is None and dc is None:  # a carried cell error alone, narrowed to nothing: no error here
            return None, None, None, None
        parts = [otimes(dc, g, self.dsig(i, gf)), otimes(dh, tc, self.dsig(o, gf)),
                 otimes(dc, c_prev, self.dsig(f, gf)), otimes(dc, i, self.dtanh(g, gf))]
        shape = (dh if dh is not None else dc).codes.shape
        dA = N(cat(parts, shape, rnd), num)
        if not carry:
            return dA, dA, None, None
        carry_h = None
        if dA is not None:
            carry_h = self._gemm(acc, cost, dA, "R", d, a_width=num.state_err_width, out="err")
        return dA, dA, carry_h, otimes(dc, f)
