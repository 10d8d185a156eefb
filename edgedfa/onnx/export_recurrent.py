"""``int`` export of RNN, GRU and LSTM: the engine's cells (datapath §9.6) unrolled over time.

Every step is the engine's arithmetic on int64 codes: accumulators as Dense's (exact sums,
wrap or Scan), the exact sums ``a ⊕ b`` aligned by left shifts to the finest fraction, exact
products, the §9 table tanh/sigmoid, and requantization into the state formats. The engine
chooses the alignment from the data only when an aligned term would reach 2^60; the exporter
proves from static bounds that this cannot happen (or refuses), so the values, and every
rounding of them, are the engine's.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, acc_format, acc_step, requantize
from ..wide import WIDE_BITS

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class Wide(NamedTuple):
    """An int64 tensor of codes with ``frac`` fraction bits and |codes| <= ``bound``."""

    name: str
    frac: int
    bound: int


class CellEmitter:
    """One recurrent node of an IntEmitter, emitted step by step."""

    def __init__(self, em, node, layer):
        self.em, self.o, self.node, self.layer = em, em.ops, node, layer
        self.num, self.H = layer.num, layer.hidden
        self.rnd = layer.num.act_rounding
        self.gate_fmt = layer.gate_fmt

    # ---------------------------------------------------------------- arithmetic
    def base(self, d, t, what) -> str:
        return f"{self.node.name}/d{d}/t{t}/{what}"

    def fmt_wide(self, name, fmt: FixedFormat) -> Wide:
        return Wide(name, fmt.frac_bits, max(-fmt.min_code, fmt.max_code))

    def total(self, terms, base) -> Wide:
        """a ⊕ b ⊕ ...: exact sum at the finest fraction (no term can reach 2^60, checked)."""
        frac = max(t.frac for t in terms)
        parts, bound = [], 0
        for i, t in enumerate(terms):
            shifted = t.bound << (frac - t.frac)
            if shifted >= 1 << WIDE_BITS:
                raise EdgeDFAError(f"node {self.node.name!r}: an aligned sum may reach 2^{shifted.bit_length()},"
                                   " where the engine coarsens its alignment from the data; no exact int export")
            parts.append(self.o.round_shift(t.name, t.frac - frac, "AP_TRN", f"{base}/align{i}"))
            bound += shifted
        name = parts[0]
        for i, p in enumerate(parts[1:]):
            name = self.o.op("Add", [name, p], f"{base}/sum{i}")
        return Wide(name, frac, bound)

    def mul(self, a: Wide, b: Wide, base) -> Wide:
        return Wide(self.o.op("Mul", [a.name, b.name], base), a.frac + b.frac, a.bound * b.bound)

    def one_minus(self, z: Wide, base) -> Wide:
        return Wide(self.o.op("Sub", [self.o.k(1 << z.frac), z.name], base), z.frac, (1 << z.frac) + z.bound)

    def cols(self, t: Wide, lo: int, hi: int, base) -> Wide:
        o = self.o
        return Wide(o.op("Slice", [t.name, o.k([lo]), o.k([hi]), o.k([-1])], base), t.frac, t.bound)

    def to_state(self, t: Wide, fmt: FixedFormat, base) -> Wide:
        name = self.o.requantize(t.name, t.frac, fmt, self.rnd, self.num.act_overflow, base)
        return self.fmt_wide(name, fmt)

    def gate(self, pre: Wide, func: str, base) -> Wide:
        """Table sigmoid/tanh to the gate format; Relu: requantize to h_fmt, then max with 0."""
        if func == "Relu":
            h = self.to_state(pre, self.layer.h_fmt, base)
            return h._replace(name=self.o.op("Max", [h.name, self.o.k(0)], f"{base}/relu"))
        fn = self.o.tanh if func == "Tanh" else self.o.sigmoid
        return self.fmt_wide(fn(pre.name, pre.frac, self.gate_fmt, self.rnd, base), self.gate_fmt)

    def gemm(self, x: Wide, x_fmt: FixedFormat, key: str, d: int, rows: slice, half: int, base) -> Wide:
        """x @ P[d][rows]^T through the accumulator, initialised with the bias half (Wb 0, Rb 1)."""
        P = self.layer.params[key]
        frac = x_fmt.frac_bits + P.fmt.frac_bits
        w = type(P)(P.codes[d][rows], P.fmt)
        init = self.bias(d, half, frac, rows)
        acc, plan = self.em.matmul(x.name, x_fmt, w, init, self.num, base)
        self.em.plans[f"{self.node.name}/{key}"] = plan
        bound = plan.bound if plan.kind == "sum" else 1 << (self.num.acc_bits - 1)
        return Wide(acc, frac, bound)

    def bias(self, d, half, frac, rows):
        b = self.layer.params.get("B")
        if b is None:
            return None
        gh = GATES[self.node.op] * self.H
        codes = b.codes[d, half * gh:(half + 1) * gh][rows]
        init = requantize(codes, b.fmt, acc_format(self.num.acc_bits, frac), self.rnd, self.num.acc_overflow)
        return acc_step(init, self.num.acc_bits, self.num.acc_overflow)

    # ---------------------------------------------------------------- cells
    def cell(self, d, t, xg: Wide, state: dict) -> dict:
        op = self.node.op
        h = state["h"]
        hf = self.layer.h_fmt
        acts = self.layer.activations[d]
        if op == "RNN":
            pre = self.total([xg, self.gemm(h, hf, "R", d, slice(None), 1, self.base(d, t, "hg"))],
                             self.base(d, t, "pre"))
            return {"h": self.gate(pre, acts[0], self.base(d, t, "h"))}
        if op == "GRU":
            return self.gru(d, t, xg, h, hf)
        return self.lstm(d, t, xg, h, state["c"], hf)

    def gru(self, d, t, xg, h, hf):
        H, B = self.H, lambda w: self.base(d, t, w)
        hg = self.gemm(h, hf, "R", d, slice(0, 2 * H), 1, B("hg"))
        z = self.gate(self.total([self.cols(xg, 0, H, B("xz")), self.cols(hg, 0, H, B("hz"))], B("pz")),
                      "Sigmoid", B("z"))
        r = self.gate(self.total([self.cols(xg, H, 2 * H, B("xr")), self.cols(hg, H, 2 * H, B("hr"))], B("pr")),
                      "Sigmoid", B("r"))
        xh = self.cols(xg, 2 * H, 3 * H, B("xh"))
        if self.layer.lbr:
            hh = self.gemm(h, hf, "R", d, slice(2 * H, 3 * H), 1, B("hh"))
            pre = self.total([xh, self.mul(r, hh, B("r_hh"))], B("pn"))
        else:
            rh = self.to_state(self.mul(r, h, B("r_h")), hf, B("rh"))
            pre = self.total([xh, self.gemm(rh, hf, "R", d, slice(2 * H, 3 * H), 1, B("hh"))], B("pn"))
        n = self.gate(pre, "Tanh", B("n"))
        mix = self.total([self.mul(self.one_minus(z, B("1-z")), n, B("zn")), self.mul(z, h, B("zh"))], B("mix"))
        return {"h": self.to_state(mix, hf, B("h"))}

    def lstm(self, d, t, xg, h, c, hf):
        H, B = self.H, lambda w: self.base(d, t, w)
        pre = self.total([xg, self.gemm(h, hf, "R", d, slice(None), 1, B("hg"))], B("pre"))
        i, o, f, g = (self.gate(self.cols(pre, k * H, (k + 1) * H, B(f"a{k}")), fn, B(name))
                      for k, (fn, name) in enumerate((("Sigmoid", "i"), ("Sigmoid", "o"), ("Sigmoid", "f"),
                                                      ("Tanh", "g"))))
        c_new = self.to_state(self.total([self.mul(f, c, B("fc")), self.mul(i, g, B("ig"))], B("mix")),
                              self.layer.cell_fmt, B("c"))
        tc = self.gate(c_new, "Tanh", B("tc"))
        return {"h": self.to_state(self.mul(o, tc, B("o_tc")), hf, B("h")), "c": c_new}

    # ---------------------------------------------------------------- the node
    def run(self, x: str, xf: FixedFormat):
        """[(Y, fmt), (Y_h, fmt)(, (Y_c, fmt))] in the node's layout."""
        layout = int(self.node.attrs.get("layout", 0))
        steps = self.layer.in_shapes[0][0]
        outs, finals = [], []
        for d in range(self.layer.n_dirs):
            xg_all = self.gemm(Wide(x, xf.frac_bits, 0), xf, "W", d, slice(None), 0, f"{self.node.name}/d{d}/x")
            order = range(steps - 1, -1, -1) if self.layer._reverse(d) else range(steps)
            state, ys = None, {}
            for t in order:
                xg = xg_all._replace(name=self.o.op("Gather", [xg_all.name, self.o.k(t)], self.base(d, t, "x"),
                                                    axis=1 if layout == 1 else 0))
                state = state or self.zero_state(d, xg)
                state = self.cell(d, t, xg, state)
                ys[t] = state["h"].name
            outs.append([ys[t] for t in range(steps)])
            finals.append(state)
        return self.assemble(outs, finals, layout)

    def zero_state(self, d, xg: Wide) -> dict:
        zero = self.o.op("Mul", [self.cols(xg, 0, self.H, f"{self.node.name}/d{d}/zero_cols").name,
                                 self.o.k(0)], f"{self.node.name}/d{d}/zeros")
        fmts = self.layer._state_fmts()
        return {k: self.fmt_wide(zero, f) for k, f in fmts.items()}

    def assemble(self, outs, finals, layout):
        """Y [N,T,D,H] (layout 1) or [T,D,N,H]; Y_h, Y_c [N,D,H] or [D,N,H]."""
        o, name = self.o, self.node.name
        step_axes, dir_axis = ([1, 2], 2) if layout == 1 else ([0, 1], 1)
        per_dir = []
        for d, ys in enumerate(outs):
            parts = [o.op("Unsqueeze", [y, o.k(step_axes)], f"{name}/d{d}/y{t}") for t, y in enumerate(ys)]
            per_dir.append(o.op("Concat", parts, f"{name}/d{d}/Y", axis=step_axes[0]))
        result = [(o.op("Concat", per_dir, f"{name}/Y", axis=dir_axis), self.layer.h_fmt)]
        for key in self.layer.state_names:
            axis = 1 if layout == 1 else 0
            parts = [o.op("Unsqueeze", [f[key].name, o.k([axis])], f"{name}/d{d}/{key}_last")
                     for d, f in enumerate(finals)]
            result.append((o.op("Concat", parts, f"{name}/Y_{key}", axis=axis), self.layer._state_fmts()[key]))
        return result


def emit_recurrent(em, node, layer, ins):
    """The int form of an RNN/GRU/LSTM node (outputs in node.outputs order)."""
    (x, xf), = ins
    return CellEmitter(em, node, layer).run(x, xf)
