"""Integer RNN, GRU and LSTM with ONNX semantics, and their integer BPTT (§9.6-9.7).

Conventions shared by the three ops (see ``Recurrent``):
- params ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` exactly as ONNX stores them
  (gate order RNN: one gate; GRU: z, r, h; LSTM: i, o, f, c); initial states are zero;
- ``forward(xs, train)`` returns ``([Y, Y_h], cache)`` (LSTM: ``[Y, Y_h, Y_c]``), a list
  in the order of ``node.outputs``; ``n_outputs`` says how many, ``out_shape`` is the list
  of their per-sample shapes (the batch axis removed wherever the layout puts it);
- ``backward(cache, dy, need_dx)`` takes ``dy`` as that list (None where an output has no
  error) or one QTensor shaped like Y or like Y_h; ``bptt_steps`` picks full (None),
  truncated (k) or local (0) propagation through time.
"""

from __future__ import annotations

import numpy as np

from ..kernels import gemm
from ..errors import EdgeDFAError
from ..fixed import ERR_FRAC_MAX, FixedFormat, Overflow, QTensor, acc_format, int_bits_for, narrow_dynamic, requantize
from ..lut import dsigmoid_codes, dsigmoid_format, dtanh_codes, dtanh_format, sigmoid_codes, tanh_codes
from ..scaling import observe
from ..update import update_params
from ..wide import add, cat, live, mul, neg, one_minus, total
from . import cell_loops
from .base import Layer, register
from .cell_loops import StepRecords
from .dense import quantize_param, weight_format_bits
from .nonlinear import bounded_format

MAX_BITS = 16  # act/weight widths the wide products are specified for


# --------------------------------------------------------------------------- BPTT errors (§9.7)

def narrow(t, num, bits=None):
    """Top ``bits`` (default: the state error width) of a wide error (dynamic exponent, no
    finer than 2^-ERR_FRAC_MAX); None if zero."""
    if t is None or not t.codes.any():
        return None
    bits = num.state_err_width if bits is None else bits
    q = narrow_dynamic(t.codes, t.fmt, bits, num.err_rounding)
    return q if q.codes.any() else None


def dsig(s: QTensor) -> QTensor:
    return QTensor(dsigmoid_codes(s.codes, s.fmt), dsigmoid_format(s.fmt))


def dtanh(t: QTensor) -> QTensor:
    return QTensor(dtanh_codes(t.codes, t.fmt), dtanh_format(t.fmt))


def common_stack(ts, shape, num):
    """Stack errors of per-step exponents in the coarsest one (block exponent, §9.7)."""
    present = [t for t in ts if t is not None]
    if not present:
        return None
    frac = min(t.fmt.frac_bits for t in present)
    fmt = FixedFormat.with_frac(num.state_err_width, frac)
    out = np.zeros((len(ts),) + tuple(shape), np.int64)
    for i, t in enumerate(ts):
        if t is not None:
            cell_loops.requantize_into(out[i], t, fmt, num.err_rounding, Overflow.AP_SAT)
    return QTensor(out, fmt)


def grad_acc_bits(num) -> int:
    """Accumulator width of the backward GEMMs: 48 bits (a DSP48's) once the errors carried
    through time are wider than the layer's errors (16 x 8-bit products over T x N terms)."""
    return max(num.acc_bits, 48) if num.state_err_width > num.err_bits else num.acc_bits


def align_grads(ts, num):
    """Wide gradients of one parameter brought to the coarsest fraction among the non-zero
    ones, stacked."""
    frac = min((t.fmt.frac_bits for t in live(ts)), default=ts[0].fmt.frac_bits)
    fmt = acc_format(grad_acc_bits(num), frac)
    return QTensor(np.stack([requantize(t.codes, t.fmt, fmt, num.err_rounding, Overflow.AP_SAT)
                             for t in ts]), fmt)


# --------------------------------------------------------------------------- the layer

def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


class Recurrent(Layer):
    """Shared integer recurrence: input GEMM for all steps, a cell per step, BPTT chains.

    Outputs (a list, in the order of node.outputs): Y [T, D, N, H] (layout 0) or
    [N, T, D, H] (layout 1), Y_h [D, N, H] or [N, D, H], and for LSTM Y_c like Y_h.
    Formats: h, Y, Y_h in ``h_fmt`` (ap_fixed<act_bits,1>, calibrated for relu), gates in
    ``gate_fmt`` = ap_fixed<act_bits,1>, LSTM cell state in ``cell_fmt`` (calibrated).
    ``bptt_steps``: None full BPTT; k >= 1 each error travels back at most k steps;
    0 no recurrence (each step's error stays local: per-step DFA).
    """

    trainable = True
    gates = 1
    n_outputs = 2
    state_names = ("h",)

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self._check_attrs()
        num = self.num
        if max(num.act_bits, num.weight_bits) > MAX_BITS:
            raise EdgeDFAError(f"node {self.name!r}: recurrent layers support act/weight widths up to"
                               f" {MAX_BITS} bits (got {num.act_bits}/{num.weight_bits})")
        for key in ("W", "R"):
            w = np.asarray(node.params[key], dtype=np.float64)
            self.params[key] = quantize_param(w, num.weight_bits, weight_format_bits(num, w))
        if "B" in node.params:
            b = np.asarray(node.params["B"], dtype=np.float64)
            ib = max(int_bits_for(float(np.abs(b).max()) if b.size else 0.0, 1),
                     max(self.params["W"].fmt.int_bits, self.params["R"].fmt.int_bits) + 3)
            self.params["B"] = quantize_param(b, num.bias_bits, ib)
        self.gate_fmt = FixedFormat(num.gate_width, 1)
        self.state = {}
        self.bptt_steps = spec.extra.get("bptt_steps", node.attrs.get("bptt_steps"))
        self.out_fmt = bounded_format(num) if self._static_h() else None

    # ---- structure
    def _dims(self):
        a, p = self.node.attrs, self.node.params
        dirs = 2 if _text(a.get("direction", "forward")) == "bidirectional" else 1
        hidden = int(a.get("hidden_size", np.shape(p["R"])[-1]))
        return dirs, hidden, int(a.get("layout", 0))

    def infer_shape(self):
        dirs, hidden, _ = self._dims()
        seq = self.in_shapes[0][0]
        return [(seq, dirs, hidden)] + [(dirs, hidden)] * (self.n_outputs - 1)

    def _check_attrs(self):
        a, p = self.node.attrs, self.node.params
        dirs, hidden, layout = self._dims()
        direction = _text(a.get("direction", "forward"))
        where = f"node {self.name!r} ({self.op})"
        if direction not in ("forward", "reverse", "bidirectional"):
            raise EdgeDFAError(f"{where}: direction {direction!r}; expected forward, reverse or bidirectional")
        if layout not in (0, 1):
            raise EdgeDFAError(f"{where}: layout {layout}; expected 0 or 1")
        for key in ("clip", "activation_alpha", "activation_beta"):
            if a.get(key) is not None:
                raise EdgeDFAError(f"{where}: attribute {key!r} is not supported")
        if int(a.get("input_forget", 0)):
            raise EdgeDFAError(f"{where}: input_forget=1 is not supported")
        if "P" in p and np.any(np.asarray(p["P"]) != 0):
            raise EdgeDFAError(f"{where}: peephole weights P are not supported")
        n_in = self.in_shapes[0][-1]
        want = {"W": (dirs, self.gates * hidden, n_in), "R": (dirs, self.gates * hidden, hidden),
                "B": (dirs, 2 * self.gates * hidden)}
        for key, shape in want.items():
            if key not in p and key != "B":
                raise EdgeDFAError(f"{where}: param {key} is missing")
            if key in p and tuple(np.shape(p[key])) != shape:
                raise EdgeDFAError(f"{where}: param {key} has shape {tuple(np.shape(p[key]))}, expected {shape}")
        self.activations = self._activations(where, dirs)

    def _activations(self, where, dirs):
        acts = [_text(s) for s in self.node.attrs.get("activations", [])] or list(self.default_acts) * dirs
        if len(acts) != len(self.default_acts) * dirs:
            raise EdgeDFAError(f"{where}: {len(acts)} activations for {dirs} direction(s)")
        return [acts[i * len(self.default_acts):(i + 1) * len(self.default_acts)] for i in range(dirs)]

    @property
    def hidden(self) -> int:
        return self._dims()[1]

    @property
    def n_dirs(self) -> int:
        return self._dims()[0]

    def _static_h(self) -> bool:
        return True

    @property
    def h_fmt(self) -> FixedFormat:
        if self.out_fmt is None:
            raise EdgeDFAError(f"node {self.name!r}: not calibrated (call calibrate first)")
        return self.out_fmt

    @property
    def out_fmts(self) -> list:
        """Formats of [Y, Y_h(, Y_c)]."""
        return [self.h_fmt] + [self._state_fmts()[k] for k in self.state_names]

    # ---- forward
    def _gemm(self, a, b_codes, b_fmt, init=None, backward=False):
        bits = grad_acc_bits(self.num) if backward else self.num.acc_bits
        acc = gemm(a.codes, b_codes, bits, self.num.acc_overflow, init, self.backend)
        return QTensor(acc, acc_format(bits, a.fmt.frac_bits + b_fmt.frac_bits))

    def _bias(self, d, half, frac):
        """Wb (half 0) or Rb (half 1) of direction d aligned into the accumulator (§9.6)."""
        b = self.params.get("B")
        if b is None:
            return None
        gh = self.gates * self.hidden
        codes = b.codes[d, half * gh:(half + 1) * gh]
        return requantize(codes, b.fmt, acc_format(self.num.acc_bits, frac), self.num.act_rounding,
                          self.num.acc_overflow)[None, :]

    def recurrent_gemm(self, d, h: QTensor, rows: slice) -> QTensor:
        """h @ R[d][rows].T + Rb[d][rows] through the accumulator."""
        R = self.params["R"]
        init = self._bias(d, 1, h.fmt.frac_bits + R.fmt.frac_bits)
        return self._gemm(h, R.codes[d, rows].T, R.fmt, None if init is None else init[:, rows])

    def _input_gemm(self, d, x: QTensor) -> QTensor:
        """x W[d]^T + Wb[d] for every step at once: (T, N, G*H) accumulators."""
        T, N, _ = x.codes.shape
        W = self.params["W"]
        init = self._bias(d, 0, x.fmt.frac_bits + W.fmt.frac_bits)
        acc = self._gemm(QTensor(x.codes.reshape(T * N, -1), x.fmt), W.codes[d].T, W.fmt, init)
        return QTensor(acc.codes.reshape(T, N, -1), acc.fmt)

    def gate(self, pre, func):
        """Table unit on a pre-activation: 'Sigmoid' | 'Tanh' to gate_fmt, 'Relu' to h_fmt."""
        num = self.num
        if func == "Sigmoid":
            return QTensor(sigmoid_codes(pre.codes, pre.fmt, self.gate_fmt, num.act_rounding), self.gate_fmt)
        if func == "Tanh":
            return QTensor(tanh_codes(pre.codes, pre.fmt, self.gate_fmt, num.act_rounding), self.gate_fmt)
        q = requantize(pre.codes, pre.fmt, self.h_fmt, num.act_rounding, num.act_overflow)
        return QTensor(np.maximum(q, 0), self.h_fmt)

    def to_state(self, t: QTensor, fmt: FixedFormat) -> QTensor:
        """A wide value narrowed into a static state format (activation rounding/overflow)."""
        return QTensor(requantize(t.codes, t.fmt, fmt, self.num.act_rounding, self.num.act_overflow), fmt)

    def _steps_first(self, codes):
        """Input codes as (T, N, I) whatever the layout."""
        return np.moveaxis(codes, 0, 1) if self._dims()[2] == 1 else codes

    def _run(self, x: QTensor, train: bool, stats: dict | None = None):
        """All directions over the whole sequence: outputs (time-major) and cache."""
        hidden = self.hidden
        self._observing = train and stats is None  # the exponent unit watches training steps only
        xc = self._steps_first(x.codes)
        T, N = xc.shape[:2]
        Y = np.zeros((T, self.n_dirs, N, hidden), np.int64)
        finals, caches = [], []
        for d in range(self.n_dirs):
            order = np.arange(T)[::-1] if self._reverse(d) else np.arange(T)
            xd = QTensor(xc[order], x.fmt)
            xg = self._input_gemm(d, xd)
            run = self.compiled_direction(d, xg, train, stats) or self._cells(d, xg, train, stats)
            hs, state, recs = run
            Y[order, d] = hs
            finals.append(state)
            caches.append({"order": order, "x": xd, "recs": recs})
        return Y, finals, caches

    def _cells(self, d, xg: QTensor, train: bool, stats):
        """One direction, one Python cell per step (the reference): (h per step, final state,
        stacked records when training)."""
        T, N = xg.codes.shape[:2]
        state = {k: QTensor(np.zeros((N, self.hidden), np.int64), f) for k, f in self._state_fmts().items()}
        hs = np.empty((T, N, self.hidden), np.int64)
        recs = []
        for s in range(T):
            state, rec = self.cell(d, QTensor(xg.codes[s], xg.fmt), state, stats)
            hs[s] = state["h"].codes
            recs.append(rec)
        return hs, state, (StepRecords.of(recs) if train else None)

    def compiled_direction(self, d, xg: QTensor, train: bool, stats):
        """The same direction in compiled code (layers/cell_loops.py), or None where it does not apply."""
        return None

    def compiled_chain(self, d, recs, chain, inj_h, inj_c):
        """``_run_chain`` in compiled code (layers/cell_loops.py), or None where it does not apply."""
        return None

    def _reverse(self, d) -> bool:
        direction = _text(self.node.attrs.get("direction", "forward"))
        return direction == "reverse" or (direction == "bidirectional" and d == 1)

    def _state_fmts(self) -> dict:
        return {"h": self.h_fmt}

    def forward(self, xs, train=False):
        x = xs[0]
        Y, finals, caches = self._run(x, train)
        outs = [Y] + [np.stack([f[k].codes for f in finals]) for k in self.state_names]
        if self._dims()[2] == 1:  # batch first
            outs = [np.moveaxis(outs[0], 2, 0)] + [np.moveaxis(o, 1, 0) for o in outs[1:]]
        ys = [QTensor(o, f) for o, f in zip(outs, self.out_fmts)]
        return ys, ({"caches": caches, "x_shape": x.codes.shape} if train else None)

    def calibrate(self, xs):
        self.out_fmt = bounded_format(self.num)

    def refresh_format(self, in_fmts):
        pass  # h, c and the gates have formats of their own

    # ---- backward
    def _split_dy(self, dy):
        """Errors at (Y, Y_h, Y_c) in time-major layout, or None each."""
        if isinstance(dy, QTensor):
            dy = [dy, None] if dy.codes.ndim == 4 else [None, dy]
        dy = list(dy) + [None] * (3 - len(dy))
        batch_first = self._dims()[2] == 1
        out = []
        for i, e in enumerate(dy[:3]):
            if e is not None and batch_first:
                e = QTensor(np.moveaxis(e.codes, 0, 2 if i == 0 else 1), e.fmt)
            if e is not None and e.fmt.frac_bits > ERR_FRAC_MAX:
                e = narrow(e, self.num)
            out.append(e)
        return out

    def _chains(self, T, inj_h, inj_c):
        """(first step, last step, injected steps, carry) for each BPTT chain (§9.7)."""
        k = self.bptt_steps
        steps = sorted(set(inj_h) | set(inj_c), reverse=True)
        if not steps:
            return []
        if k is None or int(k) >= T - 1:
            return [(steps[0], 0, set(steps), True)]
        if int(k) == 0:
            return [(steps[0], steps[-1], set(steps), False)]
        return [(s, max(0, s - int(k)), {s}, True) for s in steps]

    def _run_chain(self, d, recs, chain, inj_h, inj_c):
        """One backward pass through time: {step: (dA, dR)} for the steps it reaches."""
        fast = self.compiled_chain(d, recs, chain, inj_h, inj_c)
        if fast is not None:
            return fast
        start, stop, injected, carry = chain
        rnd = self.num.err_rounding
        ch = cc = None
        out = {}
        for s in range(start, stop - 1, -1):
            hin = inj_h.get(s) if s in injected else None
            cin = inj_c.get(s) if s in injected else None
            dh = narrow(add([hin, ch], rnd), self.num)
            dc = add([cin, cc], rnd)
            if dh is None and dc is None:
                ch = cc = None
                continue
            dA, dR, ch, cc = self.cell_back(d, recs[s], dh, dc, carry and s > stop)
            out[s] = (dA, dR)
        return out

    def _deltas(self, d, recs, inj_h, inj_c):
        """Per-step gate errors (dA for W/Wb/x, dR for R/Rb): lists over steps, None if zero."""
        T = len(recs)
        parts = [[] for _ in range(T)]
        for chain in self._chains(T, inj_h, inj_c):
            for s, pair in self._run_chain(d, recs, chain, inj_h, inj_c).items():
                parts[s].append(pair)
        dA, dR = [], []
        for p in parts:
            if len(p) <= 1:
                dA.append(p[0][0] if p else None)
                dR.append(p[0][1] if p else None)
            else:  # several truncated chains reach this step: exact sum, one narrowing
                dA.append(narrow(add([q[0] for q in p], self.num.err_rounding), self.num))
                dR.append(narrow(add([q[1] for q in p], self.num.err_rounding), self.num))
        return dA, dR

    def _injections(self, d, order, dY, dYh, dYc):
        rnd = self.num.err_rounding
        T = len(order)
        inj_h, inj_c = {}, {}
        for s in range(T):
            terms = [None if dY is None else QTensor(dY.codes[order[s], d], dY.fmt)]
            if s == T - 1 and dYh is not None:
                terms.append(QTensor(dYh.codes[d], dYh.fmt))
            e = add(terms, rnd)
            if e is not None:
                inj_h[s] = e
        if dYc is not None and dYc.codes[d].any():
            inj_c[T - 1] = QTensor(dYc.codes[d], dYc.fmt)
        return inj_h, inj_c

    def backward(self, cache, dy, need_dx):
        dY, dYh, dYc = self._split_dy(dy)
        gh = self.gates * self.hidden
        grads = {k: [] for k in self.params}
        dxs = []
        for d, c in enumerate(cache["caches"]):
            inj_h, inj_c = self._injections(d, c["order"], dY, dYh, dYc)
            dA, dR = self._deltas(d, c["recs"], inj_h, inj_c)
            N = c["x"].codes.shape[1]
            A = common_stack(dA, (N, gh), self.num)
            Rst = A if all(a is r for a, r in zip(dA, dR)) else common_stack(dR, (N, gh), self.num)
            for k, g in self._param_grads(d, c, A, Rst).items():
                grads[k].append(g)
            if need_dx and need_dx[0] and A is not None:
                dxs.append(self._dx(d, c, A))
        grads = {k: align_grads(v, self.num) for k, v in grads.items()}
        return [self._finish_dx(dxs, cache["x_shape"]) if need_dx and need_dx[0] else None], grads

    def _param_grads(self, d, c, A, Rst):
        """Wide gradients of W[d], R[d], B[d] from the stacked gate errors (§9.7)."""
        num, x = self.num, c["x"]
        T, N, n_in = x.codes.shape
        gh, hidden = self.gates * self.hidden, self.hidden
        if A is None:  # no error reached this direction
            return {k: QTensor(np.zeros_like(p.codes[d]), acc_format(grad_acc_bits(num), 0))
                    for k, p in self.params.items()}
        a2 = QTensor(A.codes.reshape(T * N, gh), A.fmt)
        out = {"W": self._gemm(QTensor(a2.codes.T, a2.fmt), x.codes.reshape(T * N, n_in), x.fmt, backward=True)}
        if Rst is None:  # every step's dR narrowed to nothing (GRU, linear_before_reset): R and Rb get none
            zero = acc_format(grad_acc_bits(num), 0)
            out["R"] = QTensor(np.zeros_like(self.params["R"].codes[d]), zero)
            br = QTensor(np.zeros(gh, np.int64), zero)
        else:
            r2 = QTensor(Rst.codes.reshape(T * N, gh), Rst.fmt)
            blocks = [self._gemm(QTensor(r2.codes[:, rows].T, r2.fmt), op.codes.reshape(T * N, hidden), op.fmt,
                                 backward=True) for rows, op in self.recurrent_operands(c["recs"])]
            out["R"] = QTensor(np.concatenate([b.codes for b in blocks]), blocks[0].fmt)
            br = QTensor(r2.codes.sum(axis=0), acc_format(grad_acc_bits(num), Rst.fmt.frac_bits))
        if "B" in self.params:
            bw = QTensor(a2.codes.sum(axis=0), acc_format(grad_acc_bits(num), A.fmt.frac_bits))
            both = align_grads([bw, br], num)
            out["B"] = QTensor(both.codes.reshape(-1), both.fmt)
        return out

    def recurrent_operands(self, recs):
        """[(gate rows, stacked operand multiplying R[rows])]: h_{t-1} for every gate."""
        return [(slice(None), recs.stack("h_prev"))]

    def _dx(self, d, c, A):
        T, N = A.codes.shape[:2]
        W = self.params["W"]
        acc = self._gemm(QTensor(A.codes.reshape(T * N, -1), A.fmt), W.codes[d], W.fmt, backward=True)
        codes = np.zeros((T, N, W.codes.shape[-1]), np.int64)
        codes[c["order"]] = acc.codes.reshape(T, N, -1)
        return QTensor(codes, acc.fmt)

    def _finish_dx(self, dxs, x_shape):
        """Sum the directions' input errors exactly, narrow to the layer's error width, back to
        the input layout."""
        dx = narrow(add(dxs, self.num.err_rounding), self.num, self.num.err_bits)
        if dx is None:
            return QTensor(np.zeros(x_shape, np.int64), FixedFormat.with_frac(self.num.err_bits, ERR_FRAC_MAX))
        codes = np.moveaxis(dx.codes, 1, 0) if self._dims()[2] == 1 else dx.codes
        return QTensor(codes, dx.fmt)

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)

    # ---- per cell
    def cell(self, d, xg, state, stats):
        raise NotImplementedError

    def cell_back(self, d, rec, dh, dc, carry):
        raise NotImplementedError


def _cols(t: QTensor, lo: int, hi: int) -> QTensor:
    return QTensor(t.codes[..., lo:hi], t.fmt)


def _record_max(stats, key, t):
    if stats is not None and t is not None and t.codes.size:
        stats[key] = max(stats.get(key, 0.0), float(np.abs(t.codes).max()) * t.fmt.lsb)


@register("RNN")
class RNN(Recurrent):
    """Elman cell: h = f(x W^T + h R^T + Wb + Rb), f in {Tanh, Relu, Sigmoid} per direction."""

    gates = 1
    default_acts = ("Tanh",)

    def _check_attrs(self):
        super()._check_attrs()
        bad = [a for acts in self.activations for a in acts if a not in ("Tanh", "Relu", "Sigmoid")]
        if bad:
            raise EdgeDFAError(f"node {self.name!r} (RNN): activation {bad[0]!r}; supported: Tanh, Relu, Sigmoid")

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.gate_fmt = bounded_format(self.num)  # an Elman cell's one gate is its state h

    def _static_h(self):
        return all(acts[0] != "Relu" for acts in self.activations)

    def calibrate(self, xs):
        """Relu: the h format from max|pre-activation| over the sequence, iterated to a fixpoint."""
        if self._static_h():
            self.out_fmt = bounded_format(self.num)
            return
        x = xs[0]
        xc = QTensor(self._steps_first(x.codes), x.fmt)
        peak = max(float(np.abs(self._input_gemm(d, xc).value()).max()) for d in range(self.n_dirs))
        for _ in range(4):
            ib = self.num.act_int_bits if self.num.act_int_bits is not None else int_bits_for(peak, 1)
            fmt = FixedFormat(self.num.act_bits, ib)
            if fmt == self.out_fmt:
                return
            self.out_fmt = fmt
            stats = {}
            self._run(x, False, stats)
            peak = stats.get("pre", 0.0)

    def managed_formats(self):
        return {"out": self.out_fmt} if self.num.adaptive and not self._static_h() else {}

    def compiled_direction(self, d, xg, train, stats):
        return cell_loops.rnn_forward(self, d, xg, train, stats)

    def compiled_chain(self, d, recs, chain, inj_h, inj_c):
        return cell_loops.rnn_chain(self, d, recs, chain, inj_h, grad_acc_bits(self.num), ERR_FRAC_MAX)

    def cell(self, d, xg, state, stats):
        h = state["h"]
        pre = total([xg, self.recurrent_gemm(d, h, slice(None))], self.num.act_rounding)
        _record_max(stats, "pre", pre)
        act = self.activations[d][0]
        if act == "Relu" and self._observing:
            observe(self, "out", pre, self.h_fmt)
        h_new = self.gate(pre, act)
        return {"h": h_new}, {"h_prev": h, "h": h_new}

    def cell_back(self, d, rec, dh, dc, carry):
        act, h = self.activations[d][0], rec["h"]
        if act == "Relu":
            dA = None if dh is None else narrow(QTensor(np.where(h.codes > 0, dh.codes, 0), dh.fmt), self.num)
        else:
            deriv = dtanh(h) if act == "Tanh" else dsig(h)
            dA = narrow(mul(dh, deriv), self.num)
        dh_prev = None
        if carry and dA is not None:
            R = self.params["R"]
            dh_prev = self._gemm(dA, R.codes[d], R.fmt, backward=True)
        return dA, dA, dh_prev, None


@register("GRU")
class GRU(Recurrent):
    """ONNX GRU, gates z, r, h; linear_before_reset 0: (r*h) R_h, 1: r * (h R_h + Rb_h)."""

    gates = 3
    default_acts = ("Sigmoid", "Tanh")

    def _check_attrs(self):
        super()._check_attrs()
        if any(list(a) != list(self.default_acts) for a in self.activations):
            raise EdgeDFAError(f"node {self.name!r} (GRU): only activations Sigmoid, Tanh are supported")
        self.lbr = int(self.node.attrs.get("linear_before_reset", 0))

    def compiled_direction(self, d, xg, train, stats):
        return cell_loops.gru_forward(self, d, xg, train)

    def compiled_chain(self, d, recs, chain, inj_h, inj_c):
        return cell_loops.gru_chain(self, d, recs, chain, inj_h, grad_acc_bits(self.num), ERR_FRAC_MAX)

    def cell(self, d, xg, state, stats):
        H, rnd = self.hidden, self.num.act_rounding
        h = state["h"]
        hg = self.recurrent_gemm(d, h, slice(0, 2 * H))
        z = self.gate(total([_cols(xg, 0, H), _cols(hg, 0, H)], rnd), "Sigmoid")
        r = self.gate(total([_cols(xg, H, 2 * H), _cols(hg, H, 2 * H)], rnd), "Sigmoid")
        xh = _cols(xg, 2 * H, 3 * H)
        rec = {"h_prev": h, "z": z, "r": r}
        if self.lbr:
            hh = self.recurrent_gemm(d, h, slice(2 * H, 3 * H))
            pre = total([xh, mul(r, hh)], rnd)
            rec["hh"] = hh
        else:
            rh = self.to_state(mul(r, h), self.h_fmt)
            pre = total([xh, self.recurrent_gemm(d, rh, slice(2 * H, 3 * H))], rnd)
            rec["rh"] = rh
        n = self.gate(pre, "Tanh")
        h_new = self.to_state(total([mul(one_minus(z), n), mul(z, h)], rnd), self.h_fmt)
        rec["n"] = n
        return {"h": h_new}, rec

    def cell_back(self, d, rec, dh, dc, carry):
        num, rnd, H = self.num, self.num.err_rounding, self.hidden
        R = self.params["R"]
        z, r, n, h = rec["z"], rec["r"], rec["n"], rec["h_prev"]
        da_h = narrow(mul(dh, one_minus(z), dtanh(n)), num)
        da_z = mul(dh, total([h, neg(n)], rnd), dsig(z))
        shape = dh.codes.shape
        if self.lbr:
            dhh = narrow(mul(da_h, r), num)
            da_r = mul(narrow(mul(da_h, rec["hh"]), num), dsig(r))
            dA = narrow(cat([da_z, da_r, da_h], shape, rnd), num)
            dR = None if dA is None else narrow(cat([_cols(dA, 0, 2 * H), dhh], shape, rnd), num)
            terms = [mul(dh, z), None if dR is None or not carry else self._gemm(dR, R.codes[d], R.fmt, backward=True)]
        else:
            drh = None if da_h is None else narrow(self._gemm(da_h, R.codes[d, 2 * H:], R.fmt, backward=True), num)
            da_r = mul(drh, h, dsig(r))
            dA = dR = narrow(cat([da_z, da_r, da_h], shape, rnd), num)
            rec_zr = None if dA is None or not carry else self._gemm(_cols(dA, 0, 2 * H), R.codes[d, :2 * H], R.fmt, backward=True)
            terms = [mul(dh, z), mul(drh, r), rec_zr]
        return dA, dR, (add(terms, rnd) if carry else None), None

    def recurrent_operands(self, recs):
        H = self.hidden
        h_prev = recs.stack("h_prev")
        if self.lbr:
            return [(slice(None), h_prev)]
        return [(slice(0, 2 * H), h_prev), (slice(2 * H, 3 * H), recs.stack("rh"))]


CELL_BITS_MIN = 16  # LSTM cell state: at least 16 bits (as TFLite's integer LSTM)


@register("LSTM")
class LSTM(Recurrent):
    """ONNX LSTM, gates i, o, f, c, no peepholes; c = f*c + i*g, h = o * tanh(c)."""

    gates = 4
    n_outputs = 3
    state_names = ("h", "c")
    default_acts = ("Sigmoid", "Tanh", "Tanh")

    def _check_attrs(self):
        super()._check_attrs()
        if any(list(a) != list(self.default_acts) for a in self.activations):
            raise EdgeDFAError(f"node {self.name!r} (LSTM): only activations Sigmoid, Tanh, Tanh are supported")

    def _static_h(self):
        return False  # the cell format is calibrated; out_fmt (h) is set with it

    def managed_formats(self):
        return {"c": self.cell_fmt} if self.num.adaptive and "cell_int_bits" in self.state else {}

    def set_managed_format(self, key, fmt):
        self.state["cell_int_bits"] = np.array(fmt.int_bits)

    @property
    def cell_fmt(self) -> FixedFormat:
        if "cell_int_bits" not in self.state:
            raise EdgeDFAError(f"node {self.name!r}: not calibrated (call calibrate first)")
        return FixedFormat(max(CELL_BITS_MIN, self.num.act_bits), int(self.state["cell_int_bits"]))

    def _state_fmts(self):
        return {"h": self.h_fmt, "c": self.cell_fmt}

    def compiled_direction(self, d, xg, train, stats):
        return cell_loops.lstm_forward(self, d, xg, train, stats)

    def compiled_chain(self, d, recs, chain, inj_h, inj_c):
        return cell_loops.lstm_chain(self, d, recs, chain, inj_h, inj_c, grad_acc_bits(self.num), ERR_FRAC_MAX)

    def calibrate(self, xs):
        """Cell format: start from the bound |c_t| <= t, then one spare bit over the batch max."""
        x = xs[0]
        T = self._steps_first(x.codes).shape[0]
        self.out_fmt = bounded_format(self.num)
        self.state["cell_int_bits"] = np.array(int_bits_for(float(T), 0))
        stats = {}
        self._run(x, False, stats)
        self.state["cell_int_bits"] = np.array(int_bits_for(stats.get("c", 0.0), 1))

    def cell(self, d, xg, state, stats):
        H, rnd = self.hidden, self.num.act_rounding
        h, c = state["h"], state["c"]
        pre = total([xg, self.recurrent_gemm(d, h, slice(None))], rnd)
        i, o, f, g = (self.gate(_cols(pre, k * H, (k + 1) * H), fn)
                      for k, fn in enumerate(("Sigmoid", "Sigmoid", "Sigmoid", "Tanh")))
        mix = total([mul(f, c), mul(i, g)], rnd)
        c_new = self.to_state(mix, self.cell_fmt)
        _record_max(stats, "c", mix)
        if self._observing:
            observe(self, "c", mix, self.cell_fmt, c_new.codes)
        tc = self.gate(c_new, "Tanh")
        h_new = self.to_state(mul(o, tc), self.h_fmt)
        rec = {"h_prev": h, "c_prev": c, "i": i, "o": o, "f": f, "g": g, "tc": tc}
        return {"h": h_new, "c": c_new}, rec

    def cell_back(self, d, rec, dh, dc, carry):
        num, rnd = self.num, self.num.err_rounding
        i, o, f, g, tc = rec["i"], rec["o"], rec["f"], rec["g"], rec["tc"]
        dc = narrow(add([dc, mul(dh, o, dtanh(tc))], rnd), num)
        if dh is None and dc is None:  # only a carried cell error, and it narrowed to nothing
            return None, None, None, None
        parts = [mul(dc, g, dsig(i)), mul(dh, tc, dsig(o)), mul(dc, rec["c_prev"], dsig(f)), mul(dc, i, dtanh(g))]
        shape = (dh if dh is not None else dc).codes.shape
        dA = narrow(cat(parts, shape, rnd), num)
        if not carry:
            return dA, dA, None, None
        R = self.params["R"]
        dh_prev = None if dA is None else self._gemm(dA, R.codes[d], R.fmt, backward=True)
        return dA, dA, dh_prev, mul(dc, f)
