"""Cost records and the list scheduler that turns them into cycles (docs/hardware.md).

A ``Task`` is one unit of work of one layer and phase (a GEMM with its requantization, a
projection, a parameter update, ...). It occupies one or more units for ``duration``
cycles = max(cycles of each unit it uses, DRAM cycles of its off-chip bytes): inside a task
the units are pipelined and off-chip transfers are double-buffered. The scheduler starts
each task, in program order, at the latest of its dependencies' finish times and the time
its units become free (``overlap=True``), or after every earlier task (``overlap=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("forward", "error", "update")


def nbytes(width_bits: int) -> int:
    return -(-int(width_bits) // 8)


@dataclass
class Cost:
    units: dict = field(default_factory=dict)  # unit name -> busy cycles
    macs: int = 0
    adds: int = 0  # adder-only operations (sparse/dilated projection, pooling, bias sums)
    onchip_read: int = 0
    onchip_write: int = 0
    offchip: int = 0
    feedback_bytes: int = 0  # feedback values/indices read from memory (0 when regenerated)
    prng_words: int = 0
    pe_busy: int = 0  # PE-cycles doing useful MACs (for utilisation)
    lut_lookups: int = 0  # tanh/sigmoid ROM lookups on the activation unit
    state_bytes: int = 0  # recurrent state traffic (h, c and the gates kept for BPTT)

    def use(self, unit: str, cycles: int) -> "Cost":
        self.units[unit] = self.units.get(unit, 0) + int(cycles)
        return self

    def add(self, other: "Cost") -> "Cost":
        for u, c in other.units.items():
            self.use(u, c)
        for k in ("macs", "adds", "onchip_read", "onchip_write", "offchip", "feedback_bytes",
                  "prng_words", "pe_busy", "lut_lookups", "state_bytes"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self


@dataclass
class Task:
    tid: int
    layer: str
    phase: str
    what: str
    cost: Cost
    deps: list
    duration: int = 0
    start: int = 0
    finish: int = 0


class Ledger:
    def __init__(self, dram_bytes_per_cycle: float, overlap: bool = True):
        self.tasks: list = []
        self.bw = float(dram_bytes_per_cycle)
        self.overlap = overlap

    def task(self, layer: str, phase: str, what: str, cost: Cost, deps=()) -> int:
        dram = int(-(-cost.offchip // self.bw)) if cost.offchip else 0
        if dram:
            cost.units["dram"] = max(cost.units.get("dram", 0), dram)
        t = Task(len(self.tasks), layer, phase, what, cost, [d for d in deps if d is not None])
        t.duration = max(cost.units.values(), default=0)
        self.tasks.append(t)
        return t.tid

    def schedule(self, start_at: int = 0) -> int:
        """Assign start/finish to every task; returns the makespan end."""
        free: dict = {}
        end = start_at
        for t in self.tasks:
            ready = max([self.tasks[d].finish for d in t.deps] + [start_at])
            if not self.overlap:
                ready = max(ready, end)
            start = max([ready] + [free.get(u, start_at) for u in t.cost.units])
            t.start, t.finish = start, start + t.duration
            for u in t.cost.units:
                free[u] = t.finish
            end = max(end, t.finish)
        return end

    def per_layer_phase(self) -> list:
        rows: dict = {}
        for t in self.tasks:
            key = (t.layer, t.phase)
            r = rows.setdefault(key, {"layer": t.layer, "phase": t.phase, "cycles": 0, "busy_cycles": 0,
                                      "macs": 0, "adds": 0, "onchip_read_bytes": 0, "onchip_write_bytes": 0,
                                      "offchip_bytes": 0, "feedback_bytes": 0, "prng_words": 0, "pe_busy": 0,
                                      "lut_lookups": 0, "state_bytes": 0,
                                      "first_start": t.start, "last_finish": t.finish})
            c = t.cost
            r["busy_cycles"] += t.duration
            r["macs"] += c.macs
            r["adds"] += c.adds
            r["onchip_read_bytes"] += c.onchip_read
            r["onchip_write_bytes"] += c.onchip_write
            r["offchip_bytes"] += c.offchip
            r["feedback_bytes"] += c.feedback_bytes
            r["prng_words"] += c.prng_words
            r["pe_busy"] += c.pe_busy
            r["lut_lookups"] += c.lut_lookups
            r["state_bytes"] += c.state_bytes
            r["first_start"] = min(r["first_start"], t.start)
            r["last_finish"] = max(r["last_finish"], t.finish)
        return list(rows.values())


# ---------------------------------------------------------------- the report of a run
FIGURES = ("cycles", "macs", "adds", "onchip_read_bytes", "onchip_write_bytes", "offchip_bytes",
           "feedback_bytes", "prng_words", "lut_lookups", "state_bytes")


class Totals:
    """Running sums of the steps' ledgers: all the run's report needs, without keeping a ledger
    per step (a run of a million steps stays small)."""

    def __init__(self, ledgers=()):
        self.steps, self.cycles, self.pe_busy = 0, 0, 0
        self.rows, self.order = {}, []
        for led in ledgers:
            self.add(led)

    def add(self, led: Ledger) -> None:
        """Fold one step's (scheduled) ledger in."""
        self.steps += 1
        self.cycles += max((t.finish for t in led.tasks), default=0)
        self.pe_busy += sum(t.cost.pe_busy for t in led.tasks)
        for r in led.per_layer_phase():
            key = (r["layer"], r["phase"])
            if key not in self.rows:
                self.rows[key] = {"layer": r["layer"], "phase": r["phase"], **{f: 0 for f in FIGURES}, "pe_busy": 0}
                self.order.append(key)
            agg = self.rows[key]
            agg["cycles"] += r["busy_cycles"]
            for f in FIGURES[1:]:
                agg[f] += r[f]
            agg["pe_busy"] += r["pe_busy"]


def layer_rows(totals, hw) -> list:
    """Figures per (layer, phase) summed over the steps, phase by phase in program order."""
    totals = totals if isinstance(totals, Totals) else Totals(totals)
    layers = []
    for key in sorted(totals.order, key=lambda k: (PHASES.index(k[1]), totals.order.index(k))):
        r = dict(totals.rows[key])
        r["onchip_bytes"] = r["onchip_read_bytes"] + r["onchip_write_bytes"]
        r["pe_utilization"] = r.pop("pe_busy") / (r["cycles"] * hw.rows * hw.cols) if r["cycles"] else 0.0
        r["seconds_at_clock"] = r["cycles"] / (hw.clock_mhz * 1e6)
        layers.append(r)
    return layers


def summarize(ledgers, hw) -> dict:
    """Cycles (scheduled, units overlapped), totals, per-phase and per-layer figures of a run
    (``ledgers``: the steps' Ledgers, or their Totals)."""
    totals = ledgers if isinstance(ledgers, Totals) else Totals(ledgers)
    cycles, busy = totals.cycles, totals.pe_busy
    layers = layer_rows(totals, hw)
    tot = {f: sum(r[f] for r in layers) for f in FIGURES[1:]}
    phase_tot = {p: {f: sum(r[f] for r in layers if r["phase"] == p) for f in FIGURES + ("onchip_bytes",)}
                 for p in PHASES}
    return {"cycles": int(cycles), "busy_cycles": int(sum(r["cycles"] for r in layers)),
            "cycles_per_step": cycles / max(totals.steps, 1), **{k: int(v) for k, v in tot.items()},
            "onchip_bytes": int(tot["onchip_read_bytes"] + tot["onchip_write_bytes"]),
            "clock_mhz": hw.clock_mhz, "seconds_at_clock": cycles / (hw.clock_mhz * 1e6),
            "pe_utilization": busy / (cycles * (hw.rows * hw.cols)) if cycles else 0.0,
            "phases": phase_tot, "layers": layers, "hardware": hw.as_dict()}
