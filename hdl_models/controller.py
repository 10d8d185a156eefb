"""Controller: schedules forward, error projection / backward and update for every layer
under the credit plan (BP, DFA, sparse DFA, modular, hybrid), runs them on the units, and
hands the tasks with their dependencies to the list scheduler (accounting.Ledger).

Dependencies model what the algorithm allows to overlap: a BP error travels layer by layer
(each ``dx`` waits for the one above it), while a DFA module's projection depends only on
its source error: the output error (softmax), or, for a module fed from a tensor's error
(``error_from``), the task that completes that tensor's error (its last backward or error
sum), so it starts only once that error exists. Projections, masks and weight gradients
of different modules are otherwise independent and may run concurrently on different
units (array, error-projection adders, activation unit, update unit). A layer's update
waits for its own gradient and for its own ``dx`` (which reads the weights before they
change).
"""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.graph import TRAINABLE

from .accelerator import Accelerator
from .accounting import Cost, Ledger, nbytes, summarize
from .error_projection_unit import Feedback, half_log2, value_bits
from .hwconfig import HwConfig
from .layers import T, make_hw_layer
from .prng_unit import PrngUnit
from .requant_unit import align_sum, narrow

GAIN_REFERENCE_SHIFT = 1  # §10.2: the units' reference, 2^(2*1) = 4


class Controller:
    def __init__(self, model, plan: list, hw: HwConfig | None = None):
        self.hw = hw or HwConfig()
        self.acc = Accelerator(self.hw)
        g = model.graph
        self.nodes = [(n.name, n.op, [i for i in n.inputs if i], list(n.outputs)) for n in g.nodes]
        self.layers = {n.name: make_hw_layer(n, l) for n, l in zip(g.nodes, model.layers)}
        for n in g.nodes:
            self.layers[n.name].inputs = [i for i in n.inputs if i]
        self.input_name, self.output_name = g.input_name, g.output_name
        self.shapes = dict(model.shapes)
        self.in_fmt = model.in_fmt
        stage = g.meta.get("input_affine")  # the host's input stage (§2), applied before its conversion
        self.input_scale, self.input_offset = (None, None) if not stage else \
            (np.asarray(stage["scale"], dtype=np.float64), np.asarray(stage["offset"], dtype=np.float64))
        self.n_classes, self.seed = int(model.n_classes), int(model.seed)
        self.modules = plan
        self.module_of = {n: m for m in plan for n in m["nodes"]}
        missing = [n for n, *_ in self.nodes if n not in self.module_of]
        if missing:
            raise EdgeDFAError(f"hdl_models: credit plan leaves layer(s) {missing} without a module")
        self.feedback, self.stored, self.target, self.source = {}, {}, {}, {}
        produced = {o: n for n, _, _, outs in self.nodes for o in outs if o}
        for m in plan:
            for lname, opts in m.get("layer_options", {}).items():
                self.layers[lname].configure(opts)
            if m["source"] == "dfa":
                last = m["nodes"][-1]
                out_t = m.get("target") or [o for n, _, _, outs in self.nodes if n == last for o in outs][0]
                self.target[m["name"]] = out_t
                src = self._error_source(m, produced)
                self.source[m["name"]] = src
                src_shape = self.n_classes if src == self.output_name else self.shapes[src]
                f = Feedback(m["feedback"], self.layers[last].index, self.seed, self.shapes[out_t], src_shape)
                f.gain_shift = self._gain_shift(m, self.shapes[out_t], src_shape)
                self.feedback[m["name"]] = f
                if not m["feedback"].get("regenerate", True):
                    self.stored[m["name"]] = self._generate(f)
        self.needs = self._error_needed()
        self._place()

    def host_input(self, x) -> np.ndarray:
        """The host's input stage (§2): float64 ``x * scale + offset``, or ``x`` without one."""
        x = np.asarray(x, dtype=np.float64)
        return x if self.input_scale is None else x * self.input_scale + self.input_offset

    # ------------------------------------------------------------------ structure
    def _error_source(self, m: dict, produced: dict) -> str:
        """The tensor whose error a DFA module projects: ``error_from``, else the output."""
        t = m.get("error_from")
        if t is None:
            return self.output_name
        if t not in produced:
            raise EdgeDFAError(f"hdl_models: module {m['name']}: error_from {t!r} is no tensor produced by a "
                               f"layer of the graph; tensors are {sorted(produced)}")
        order = [n for n, *_ in self.nodes]
        if order.index(produced[t]) <= order.index(m["nodes"][-1]):
            raise EdgeDFAError(f"hdl_models: module {m['name']}: error_from {t!r} (from {produced[t]}) is not "
                               f"above the module's output layer {m['nodes'][-1]}")
        return t

    def _gain_shift(self, m: dict, shape, source_shape) -> int:
        """§10.2 gain shift: the option when given; for a module holding a convolution whose
        target is a map [Ch, positions...], max(0, ceil(log2(Ch * p)/2) - 1) with p the target
        positions per cell of the source's spatial grid (a map source of the same spatial
        rank), or all positions (a vector source such as the output error); else 0."""
        g = m["feedback"]["options"].get("gain_shift")
        if g is not None:
            return int(g)
        conv = any(op == "Conv" for n, op, *_ in self.nodes if n in m["nodes"])
        if not conv or len(shape) < 2:
            return 0
        positions = int(np.prod(shape[1:]))
        src_spatial = tuple(source_shape)[1:] if np.ndim(source_shape) else ()
        if len(src_spatial) == len(shape) - 1:
            positions //= max(1, int(np.prod(src_spatial)))
        return max(0, half_log2(int(shape[0]) * positions) - GAIN_REFERENCE_SHIFT)

    @staticmethod
    def _generate(f: Feedback):
        prng = PrngUnit()  # loaded once into the feedback memory at start-up
        if f.kind in ("dense", "channel"):
            return f.matrix(prng)
        return f.sparse_table(prng) if f.kind == "sparse" else f.dilated_table(prng)

    def _error_needed(self) -> dict:
        """§12: an input error is computed when a trainable layer upstream needs it and it
        lies in the same module or the producing module takes BP errors; and always for a
        tensor some DFA module projects (``error_from``), unless that tensor is itself a
        DFA target (its error is then a projection)."""
        prod = {o: n for n, _, _, outs in self.nodes for o in outs}
        upstream = {self.input_name: False}
        for name, op, ins, outs in self.nodes:
            up = op in TRAINABLE or any(upstream.get(i, False) for i in ins)
            for o in outs:
                upstream[o] = up
        sources = set(self.source.values()) - set(self.target.values())
        needs = {}
        for name, _, ins, _ in self.nodes:
            for t in ins:
                if t not in prod:
                    needs[(name, t)] = False
                    continue
                pm = self.module_of[prod[t]]
                needs[(name, t)] = t in sources or (upstream.get(t, False) and (
                    pm is self.module_of[name] or pm["source"] == "bp"))
        return needs

    def _place(self) -> None:
        """Give every tensor a home: its buffer when it fits, DRAM otherwise."""
        acc = self.acc
        for name, *_ in self.nodes:
            for p, t in self.layers[name].params.items():
                tag = f"param/{name}/{p}"
                if not acc.buffers["weight"].alloc(tag, t.codes.size * nbytes(t.fmt.width)):
                    acc.offchip_tensors.add(tag)
        for mname, f in self.feedback.items():
            if mname in self.stored and not acc.buffers["feedback"].alloc(f"fb/{mname}", -(-f.memory_bits() // 8)):
                acc.offchip_tensors.add(f"fb/{mname}")

    def feedback_memory_bytes(self) -> int:
        return sum(-(-self.feedback[m].memory_bits() // 8) for m in self.stored)

    def report(self, ledgers) -> dict:
        """The run's figures (accounting.summarize) with feedback memory and buffer use."""
        return {**summarize(ledgers, self.hw), "feedback_memory_bytes": self.feedback_memory_bytes(),
                "buffers": {k: b.describe() for k, b in self.acc.buffers.items()},
                "offchip_tensors": sorted(self.acc.offchip_tensors)}

    # ------------------------------------------------------------------ one step
    def step(self, xq: T, labels, step: int, lr_shift: int, trace: dict | None = None,
             lr_base: int | None = None, lr0: int | None = None):
        """One training step through the units; returns (logits T, output error T, Ledger)."""
        acc, hw = self.acc, self.hw
        rec = (lambda k, v: trace.__setitem__(k, v)) if trace is not None else (lambda k, v: None)
        led = Ledger(hw.dram_bytes_per_cycle, hw.overlap)
        batch = len(xq.codes)
        self._place_activations(batch)
        c = Cost()
        acc.dram.read(xq.codes.size * nbytes(xq.fmt.width))
        c.offchip = xq.codes.size * nbytes(xq.fmt.width) + batch  # codes + one label byte per sample
        acc.write(c, "act", xq.codes.size * nbytes(xq.fmt.width))
        env, ptask = {self.input_name: xq}, {self.input_name: led.task("input", "forward", "load batch", c)}
        rec("fwd/input", xq)
        caches, ftask = {}, {}
        for name, op, ins, outs in self.nodes:
            layer = self.layers[name]
            y, cache, cost = layer.forward(acc, [env[i] for i in ins], True)
            ftask[name] = led.task(name, "forward", op, cost, [ptask[i] for i in ins])
            caches[name] = cache
            for o, t in zip(outs, y if layer.n_outputs > 1 else [y]):
                if o and t is not None:
                    env[o], ptask[o] = t, ftask[name]
                    rec(f"fwd/{name}/{o}", t)
        logits = env[self.output_name]
        ecodes, efmt = acc.softmax.output_error(logits.codes, logits.fmt.frac_bits, labels,
                                                self.layers[self.nodes[-1][0]].num.err_bits)
        e = T(ecodes, efmt)
        c = Cost().use("softmax", acc.softmax.cycles(batch, self.n_classes))
        acc.write(c, "err", e.codes.size * nbytes(efmt.width))
        t_e = led.task("output", "error", "softmax error", c, [ptask[self.output_name]])
        rec("error/e", e)
        errors, etask = {self.output_name: e}, {self.output_name: t_e}
        grads, gtask, dxtask = {}, {}, {}
        for name, op, ins, outs in reversed(self.nodes):
            layer, mod = self.layers[name], self.module_of[name]
            if mod["source"] == "dfa" and name == mod["nodes"][-1]:
                src = self.source[mod["name"]]
                # the source's error is complete here (all its consumers lie above); none
                # reached it (no error path to that tensor): nothing to project
                if errors.get(src) is not None:
                    rec(f"src/{mod['name']}", errors[src])
                    d, cost = self._project(mod, errors[src], layer.num)
                    errors[self.target[mod['name']]] = d
                    etask[self.target[mod['name']]] = led.task(name, "error", "projection", cost, [etask[src]])
                    rec(f"proj/{mod['name']}", d)
            dys = [errors.get(o) for o in outs]
            if all(d is None for d in dys):
                continue
            for i, d in enumerate(dys):
                if d is not None:
                    rec(f"dy/{name}/{i}", d)
            need = [self.needs[(name, t)] for t in ins]
            dxs, g, ecost, gcost = layer.backward(acc, caches[name], dys if layer.n_outputs > 1 else dys[0], need)
            deps = [etask[o] for o in outs if o in etask] + [ftask[name]]
            dxtask[name] = led.task(name, "error", "backward", ecost, deps)
            if g:
                grads[name] = g
                gtask[name] = led.task(name, "update", "gradient", gcost, deps)
                for p, gt in g.items():
                    rec(f"grad/{name}/{p}", gt)
            for t, dx, nd in zip(ins, dxs, need):
                if dx is not None and nd:
                    self._accumulate(errors, etask, led, t, dx, layer, dxtask[name])
                    rec(f"dx/{name}/{t}", dx)
        for name, *_ in self.nodes:
            if name in grads:
                cost = self.layers[name].apply_update(acc, grads[name], step, lr_shift, lr_base, lr0)
                led.task(name, "update", "apply", cost, [gtask[name], dxtask[name]])
                for p, t in self.layers[name].params.items():
                    rec(f"param/{name}/{p}", t)
        for name, *_ in self.nodes:  # §13: the exponent unit moves the output formats
            layer = self.layers[name]
            layer.manage_outputs(acc)
            for key, fmt in layer.managed().items():
                rec(f"fmt/{name}/{key}", T(np.zeros(0, np.int64), fmt))
        led.schedule()
        return logits, e, led

    def _place_activations(self, batch: int) -> None:
        """Activations kept for the backward pass: in the activation buffer while they fit."""
        buf = self.acc.buffers["act"]
        buf.resident.clear()
        for name, _, _, outs in self.nodes:
            for o in outs:
                if not o or o not in self.shapes:
                    continue
                shp = self.shapes[o]
                n = batch * int(np.prod(shp)) * nbytes(self.layers[name].out_fmt.width if self.layers[name].out_fmt else 8)
                if not buf.alloc(f"act/{o}", n):
                    self.acc.offchip_tensors.add(f"act/{o}")

    def _accumulate(self, errors, etask, led, t, dx, layer, tid) -> None:
        """Error sums (§7): align to the finest fraction, add, narrow again."""
        if t not in errors:
            errors[t], etask[t] = dx, tid
            return
        a = errors[t]
        wide, f = align_sum([(a.codes, a.fmt.frac_bits, a.fmt.width), (dx.codes, dx.fmt.frac_bits, dx.fmt.width)])
        codes, fmt = narrow(wide, f, layer.num.err_bits, layer.num.err_rounding)
        errors[t] = T(codes, fmt)
        c = Cost().use("requant", self.acc.requant.cycles(codes.size))
        etask[t] = led.task(layer.name, "error", "error sum", c, [etask[t], tid])

    def _project(self, mod: dict, e: T, num):
        """DFA error at the module's output from its source error ``e`` (the output error or a
        tensor's error) through the error-projection unit, with its cost."""
        acc = self.acc
        f = self.feedback[mod["name"]]
        stored = self.stored.get(mod["name"])
        batch = len(e.codes)
        codes, fmt, info = acc.epu.project(f, e.codes, e.fmt.frac_bits, num.err_bits, num.err_rounding, stored)
        c = Cost()
        tag = f"fb/{mod['name']}"
        vb = value_bits(f.values, f.bits)
        if info["gemm"] is not None:
            st = info["gemm"]
            c.use("array", st.cycles).use("requant", acc.requant.cycles(st.c_writes))
            c.macs, c.pe_busy = st.macs, st.macs * st.passes
            acc.read(c, "err", st.a_reads * nbytes(e.fmt.width))
            fb_elems = st.b_reads
        else:
            c.use("epu", acc.epu.adder_cycles(f, batch)).use("requant", acc.requant.cycles(batch * f.rows))
            c.adds = batch * f.ops_per_sample()
            acc.read(c, "err", e.codes.size * nbytes(e.fmt.width))
            fb_elems = None
        if stored is None:
            words = fb_elems if fb_elems is not None else f.words_per_projection()
            c.prng_words = words
            c.use("prng", acc.prng.cycles(words))
        else:
            n = -(-fb_elems * vb // 8) if fb_elems is not None else -(-f.memory_bits() // 8)
            c.feedback_bytes = n
            acc.read(c, "feedback", n, tag)
        out_elems = batch * (f.rows if f.kind != "dilated" else f.target_shape[0] * f.cells)
        acc.write(c, "err", out_elems * nbytes(num.err_bits))
        return T(codes, fmt), c
