"""Synthesizable Verilog of the datapath's core units (docs/hardware.md, "RTL").

The ``.v`` files beside this module are the hardware; this module only says where they
are and which codes their mode ports take, read from ``edgedfa_modes.vh`` so Python and
Verilog share one table:

>>> ROUNDING_CODE[Rounding.AP_RND_CONV], OVERFLOW_CODE[Overflow.AP_WRAP]
(6, 3)
>>> sorted(sources("requant_unit"))[0].name
'ovf_sat.v'
"""

from __future__ import annotations

import re
from pathlib import Path

from edgedfa.fixed import Overflow, Rounding

RTL_DIR = Path(__file__).resolve().parent
MODES_HEADER = RTL_DIR / "edgedfa_modes.vh"

# top module -> the files it needs (besides the header, found through RTL_DIR as include dir)
_FILES = {
    "requant_unit": ("requant_unit.v", "shift_round.v", "ovf_sat.v"),
    "prng_unit": ("prng_unit.v",),
    "max_tracker": ("max_tracker.v",),
    "mac_array": ("mac_array.v", "ovf_sat.v", "pipe_delay.v"),
    "update_unit": ("update_unit.v", "shift_round.v", "ovf_sat.v", "prng_unit.v", "pipe_delay.v"),
    "sparse_epu": ("sparse_epu.v", "prng_unit.v", "pipe_delay.v"),
}


def _codes(prefix: str, enum) -> dict:
    found = dict(re.findall(rf"localparam\s+(?:integer\s+)?{prefix}_(\w+)\s*=\s*(\d+)\s*;", MODES_HEADER.read_text()))
    return {member: int(found[member.name]) for member in enum}


ROUNDING_CODE = _codes("RND", Rounding)
OVERFLOW_CODE = _codes("OVF", Overflow)
MODE_PORT = -1  # a mode parameter that reads the run-time port


def sources(top: str) -> list:
    """The Verilog files that make up ``top``."""
    return [RTL_DIR / name for name in _FILES[top]]


def yosys_read(top: str, params: dict) -> str:
    """yosys commands that read ``top`` and set its parameters (32-bit integers: yosys's
    chparam takes no minus sign, a sized two's complement constant gives -1 to an integer).

    >>> yosys_read("max_tracker", {"IN_W": 16, "LANES": -1}).split("; ")[1]
    "chparam -set IN_W 32'h00000010 -set LANES 32'hffffffff max_tracker"
    """
    files = " ".join(str(p) for p in sources(top))
    values = " ".join(f"-set {k} 32'h{int(v) & 0xFFFFFFFF:08x}" for k, v in params.items())
    return f"read_verilog -I {RTL_DIR} {files}; chparam {values} {top}" if params else \
        f"read_verilog -I {RTL_DIR} {files}"
