"""cocotb testbench shared by every RTL unit: drive a program cycle by cycle, record every output.

The program (JSON, path in EDGEDFA_TB_PROGRAM) names the input ports and gives their values
per cycle; the outputs named are sampled after every rising edge (ReadOnly) and written to
EDGEDFA_TB_TRACE. ``memories`` are synchronous-read RAMs the testbench plays: the address
a unit registers at edge t is answered on the data port before edge t + 1. The checking
(against hdl_models) happens in the pytest that wrote the program (tests/rtl/rtlsim.py).
Not collected by pytest: it only runs inside the simulator.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotb.types import LogicArray


def _read(handle):
    """An integer, or the bits as a string (MSB first) when some are X or Z."""
    v = handle.value
    if isinstance(v, LogicArray):
        return v.to_unsigned() if v.is_resolvable else str(v)
    s = str(v)
    return int(s) if s in ("0", "1") else s


def _answer(dut, mem):
    """Data for every lane's registered address (unknown addresses read as 0)."""
    addr = _read(getattr(dut, mem["addr"]))
    addr = addr if isinstance(addr, int) else 0
    aw, dw, words = mem["addr_w"], mem["data_w"], mem["words"]
    data = 0
    for lane in range(mem["lanes"]):
        a = (addr >> (lane * aw)) & ((1 << aw) - 1)
        data |= (words[a] if a < len(words) else 0) << (lane * dw)
    return data


@cocotb.test()
async def run_program(dut):
    with open(os.environ["EDGEDFA_TB_PROGRAM"]) as fh:
        prog = json.load(fh)
    ins = [getattr(dut, name) for name in prog["inputs"]]
    outs = [getattr(dut, name) for name in prog["outputs"]]
    mems = prog.get("memories", [])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for h, v in zip(ins, prog["idle"]):
        h.value = v
    dut.rst.value = 1
    for _ in range(prog.get("reset_cycles", 2)):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    vectors, idle = prog["vectors"], prog["idle"]
    trace, answers = [], [0] * len(mems)
    for t in range(len(vectors) + prog.get("tail", 0)):
        row = vectors[t] if t < len(vectors) else idle
        for h, v in zip(ins, row):
            if v is not None:
                h.value = v
        for mem, data in zip(mems, answers):
            getattr(dut, mem["data"]).value = data
        await RisingEdge(dut.clk)
        await ReadOnly()
        trace.append([_read(h) for h in outs])
        answers = [_answer(dut, mem) for mem in mems]
        await FallingEdge(dut.clk)
    with open(os.environ["EDGEDFA_TB_TRACE"], "w") as fh:
        json.dump(trace, fh)
