"""Co-simulation harness: build an RTL unit once per parameter set, run a cycle-by-cycle
program through tb_vectors.py in Icarus Verilog (cocotb), return the per-cycle trace.

cocotb is imported only when a simulation is built, so collecting the test suite never
needs it. Values on ports are non-negative integers (two's complement packed by
``pack``/``unpack``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from hdl_models import rtl

TB_MODULE = "tb_vectors"
TB_DIR = str(Path(__file__).resolve().parent)


def missing_tools() -> str | None:
    """Why the RTL tests cannot run here, or None."""
    for exe, package in (("iverilog", "iverilog"), ("vvp", "iverilog"), ("yosys", "yosys")):
        if shutil.which(exe) is None:
            return f"{exe} not found (apt-get install {package})"
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError:
        return "cocotb not installed (pip install 'edgedfa[rtl]')"
    return None


def pack(values, width: int) -> int:
    """Lane values (lane 0 in the low bits) as one bus integer, two's complement."""
    bus, mask = 0, (1 << width) - 1
    for lane, v in enumerate(values):
        bus |= (int(v) & mask) << (lane * width)
    return bus


def unpack(bus, width: int, lanes: int, signed: bool = True) -> list:
    """Lane values of a bus read by tb_vectors: an integer, or a bit string (MSB first) with
    X/Z bits, whose unknown lanes come back as None."""
    if isinstance(bus, str):
        bits = bus[::-1]
        return [None if set(lane) - {"0", "1"} else unpack(int(lane[::-1], 2), width, 1, signed)[0]
                for lane in (bits[i * width:(i + 1) * width] for i in range(lanes))]
    out = []
    for lane in range(lanes):
        v = (int(bus) >> (lane * width)) & ((1 << width) - 1)
        out.append(v - (1 << width) if signed and v >> (width - 1) else v)
    return out


def lanes_of(flat, lanes: int, fill=0) -> list:
    """A flat sequence cut into rows of ``lanes`` (the last row padded with ``fill``)."""
    flat = [int(v) for v in np.asarray(flat).ravel()]
    flat += [fill] * (-len(flat) % lanes)
    return [flat[i:i + lanes] for i in range(0, len(flat), lanes)]


class Unit:
    """One compiled parameter set of one top module: its RTL, or (``netlist``) the gate-level
    netlist yosys synthesizes from it, simulated through the same ports."""

    def __init__(self, top: str, params: dict, workdir: Path, netlist: bool = False):
        from cocotb_tools.runner import get_runner

        self.top, self.params = top, dict(params)
        key = hashlib.sha1(json.dumps([top, sorted(self.params.items()), netlist]).encode()).hexdigest()[:10]
        self.dir = Path(workdir) / f"{top}-{'netlist-' if netlist else ''}{key}"
        self.runner = get_runner("icarus")
        if netlist:
            self.dir.mkdir(parents=True, exist_ok=True)
            gates = self.dir / "netlist.v"
            subprocess.run(["yosys", "-q", "-p", f"{rtl.yosys_read(top, self.params)}; synth -flatten -top {top}; "
                            f"opt_clean -purge; rename -top {top}; write_verilog -noattr {gates}"], check=True, stdout=subprocess.DEVNULL)
            sources, params = [str(gates)], {}
        else:
            sources, params = [str(p) for p in rtl.sources(top)], self.params
        self.runner.build(sources=sources, includes=[str(rtl.RTL_DIR)], hdl_toplevel=top, parameters=params,
                          build_dir=self.dir, timescale=("1ns", "1ps"), build_args=["-Wall"],
                          log_file=self.dir / "build.log")
        self.runs = 0

    def run(self, inputs: list, idle: list, vectors: list, outputs: list, tail: int = 8,
            memories: list = ()) -> list:
        """Drive ``vectors`` (one row per cycle, None keeps a value) and return one row of
        ``outputs`` per cycle: ``len(vectors) + tail`` cycles."""
        self.runs += 1
        tag = f"run{self.runs}"
        prog, trace = self.dir / f"{tag}.json", self.dir / f"{tag}.trace.json"
        prog.write_text(json.dumps({"inputs": inputs, "idle": idle, "vectors": vectors, "outputs": outputs,
                                    "tail": tail, "memories": list(memories)}))
        env = {"EDGEDFA_TB_PROGRAM": str(prog), "EDGEDFA_TB_TRACE": str(trace)}
        if TB_DIR not in sys.path:  # the runner hands the simulator this process's sys.path
            sys.path.append(TB_DIR)
        xml = self.runner.test(test_module=TB_MODULE, hdl_toplevel=self.top, build_dir=self.dir,
                               test_dir=self.dir, extra_env=env, results_xml=str(self.dir / f"{tag}.xml"),
                               log_file=self.dir / f"{tag}.log")
        from cocotb_tools.runner import get_results

        tests, failed = get_results(Path(xml))
        if failed or not tests or not trace.exists():
            raise RuntimeError(f"simulation of {self.top} failed; log: {self.dir / f'{tag}.log'}")
        return json.loads(trace.read_text())


class Units:
    """Compiles each (top, parameters) once per test session; ``netlist`` units are yosys's
    gate-level netlists of the same parameter sets."""

    def __init__(self, workdir: Path, netlist: bool = False):
        self.workdir, self.cache, self.netlist = Path(workdir), {}, netlist

    def get(self, top: str, **params) -> Unit:
        key = (top, tuple(sorted(params.items())))
        if key not in self.cache:
            self.cache[key] = Unit(top, params, self.workdir, self.netlist)
        return self.cache[key]

    def netlists(self) -> "Units":
        return Units(self.workdir, netlist=True)


def stream_trace(valid: list, latency: int) -> list:
    """Cycles at which a unit of ``latency`` shows the output of each valid input cycle."""
    return [t + latency - 1 for t, v in enumerate(valid) if v]


def examples(strategy, label: str, scale: float = 1.0) -> list:
    """Hypothesis examples of ``strategy`` gathered to be simulated in one run: ``scale``
    times the loaded profile's max_examples, deterministic under the ci profile; ``label``
    gives each call its own derandomized sequence."""
    from hypothesis import Phase, given, settings

    out = []

    def gather(example):
        out.append(example)

    gather._hypothesis_internal_add_digest = label.encode()
    n = max(1, round(settings().max_examples * scale))
    settings(max_examples=n, phases=[Phase.generate], database=None)(given(strategy)(gather))()
    return out


class Stream:
    """A program being written one cycle at a time; ports not given take their idle value."""

    def __init__(self, idle: dict):
        self.idle = dict(idle)
        self.rows: list = []

    def cycle(self, **values) -> int:
        unknown = set(values) - set(self.idle)
        if unknown:
            raise KeyError(f"not an input port: {sorted(unknown)}")
        self.rows.append({**self.idle, **values})
        return len(self.rows) - 1

    def gap(self, n: int) -> None:
        for _ in range(int(n)):
            self.cycle()

    def run(self, unit: Unit, outputs: list, tail: int = 8, memories: list = ()) -> list:
        names = list(self.idle)
        vectors = [[row[n] for n in names] for row in self.rows]
        trace = unit.run(names, [self.idle[n] for n in names], vectors, outputs, tail, memories)
        return [dict(zip(outputs, row)) for row in trace]


def check_pipeline(trace: list, valid: str, sent: dict, latency: int) -> list:
    """Cycle-by-cycle check of a pipelined unit: input cycle t's output appears at cycle
    t + latency - 1 with ``valid`` high, and ``valid`` is low on every other cycle.
    ``sent`` maps an input cycle to {output port: expected value}. Mismatch messages."""
    due = {t + latency - 1: (t, want) for t, want in sent.items()}
    bad = []
    for c, row in enumerate(trace):
        if c not in due:
            if row[valid] != 0:
                bad.append(f"cycle {c}: {valid}={row[valid]} with no input due")
            continue
        t, want = due[c]
        if row[valid] != 1:
            bad.append(f"cycle {c}: {valid}={row[valid]}, expected the output of input cycle {t}")
        for port, v in want.items():
            if row[port] != v:
                bad.append(f"cycle {c} (input cycle {t}): {port}={row[port]}, expected {v}")
    missing = [t for t in sent if t + latency - 1 >= len(trace)]
    return bad + [f"input cycle {t}: output never observed" for t in missing]


def first_valid(trace: list, valid: str) -> int | None:
    return next((c for c, row in enumerate(trace) if row[valid] == 1), None)
