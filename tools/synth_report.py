"""Synthesis estimates of the RTL units (hdl_models/rtl) with yosys: LUTs, flip-flops and
multipliers per unit for a generic 6-LUT target (`synth -lut 6`) and for Xilinx 7-series
(`synth_xilinx`), one lane each, as a markdown table; `--write` puts it in docs/hardware.md
between the synth-table markers.

    python tools/synth_report.py [--write] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from edgedfa.fixed import Overflow, Rounding  # noqa: E402
from hdl_models import rtl  # noqa: E402
from hdl_models.rtl import OVERFLOW_CODE, ROUNDING_CODE  # noqa: E402

R, O = ROUNDING_CODE, OVERFLOW_CODE
PORT = rtl.MODE_PORT
REQUANT = dict(LANES=1, IN_W=32, OUT_W=8, OUT_SIGNED=1, SH_W=8)
UPDATE = dict(LANES=1, G_W=32, P_W=8, V_W=48, SH_W=8, M_W=5, OVF=O[Overflow.AP_SAT], MOMENTUM=0)
EPU = dict(LANES=1, E_W=8, VALUES=0, VB=8, K_MAX=4, C_W=10, N_W=16, BB_W=6, A_W=16)

# (unit, configuration, top, parameters)
ROWS = [
    ("MAC PE", "int8 x int8, 24-bit acc, AP_SAT", "mac_array", dict(ROWS=1, COLS=1, ACC_W=24, OVF=O[Overflow.AP_SAT])),
    ("MAC PE", "int8 x int8, 24-bit acc, AP_WRAP", "mac_array", dict(ROWS=1, COLS=1, ACC_W=24, OVF=O[Overflow.AP_WRAP])),
    ("MAC array", "4 x 4 PEs, 24-bit acc, AP_SAT", "mac_array", dict(ROWS=4, COLS=4, ACC_W=24, OVF=O[Overflow.AP_SAT])),
    ("requant", "32 -> 8 bits, AP_TRN, AP_SAT", "requant_unit", dict(REQUANT, RND=R[Rounding.AP_TRN], OVF=O[Overflow.AP_SAT])),
    ("requant", "32 -> 8 bits, AP_RND, AP_SAT", "requant_unit", dict(REQUANT, RND=R[Rounding.AP_RND], OVF=O[Overflow.AP_SAT])),
    ("requant", "32 -> 8 bits, AP_RND_CONV, AP_SAT", "requant_unit",
     dict(REQUANT, RND=R[Rounding.AP_RND_CONV], OVF=O[Overflow.AP_SAT])),
    ("requant", "32 -> 8 bits, STOCHASTIC, AP_SAT (word from a PRNG lane)", "requant_unit",
     dict(REQUANT, RND=R[Rounding.STOCHASTIC], OVF=O[Overflow.AP_SAT])),
    ("requant", "32 -> 8 bits, AP_RND, AP_SAT_SYM", "requant_unit", dict(REQUANT, RND=R[Rounding.AP_RND], OVF=O[Overflow.AP_SAT_SYM])),
    ("requant", "32 -> 8 bits, AP_RND, AP_WRAP", "requant_unit", dict(REQUANT, RND=R[Rounding.AP_RND], OVF=O[Overflow.AP_WRAP])),
    ("requant", "32 -> 8 bits, every mode on run-time ports", "requant_unit", dict(REQUANT, RND=PORT, OVF=PORT)),
    ("PRNG", "key hasher + 1 mix32 lane", "prng_unit", dict(LANES=1)),
    ("PRNG", "key hasher + 4 mix32 lanes", "prng_unit", dict(LANES=4)),
    ("max tracker", "32-bit codes, bitlen + 24-bit rail count", "max_tracker", dict(LANES=1, IN_W=32)),
    ("update", "32-bit g -> int8 p, AP_RND, AP_SAT", "update_unit", dict(UPDATE, RND=R[Rounding.AP_RND])),
    ("update", "32-bit g -> int8 p, STOCHASTIC (own PRNG), AP_SAT", "update_unit", dict(UPDATE, RND=R[Rounding.STOCHASTIC])),
    ("update", "as above + momentum (48-bit velocity)", "update_unit",
     dict(UPDATE, RND=R[Rounding.STOCHASTIC], MOMENTUM=1)),
    ("sparse EPU", "binary, k <= 4, regenerated (mix32 lane)", "sparse_epu", dict(EPU, REGEN=1)),
    ("sparse EPU", "binary, k <= 4, stored table (memory not counted)", "sparse_epu", dict(EPU, REGEN=0)),
    ("sparse EPU", "uniform 8-bit, k <= 4, regenerated", "sparse_epu", dict(EPU, VALUES=2, REGEN=1)),
]


def yosys(script: str) -> None:
    subprocess.run(["yosys", "-q", "-p", script], check=True, stdout=subprocess.DEVNULL)


def cells(path: Path) -> Counter:
    (module,) = json.loads(path.read_text())["modules"].values()
    return Counter(module["num_cells_by_type"])


def count(c: Counter, *patterns: str) -> int:
    return sum(n for kind, n in c.items() if any(re.fullmatch(p, kind) for p in patterns))


def synthesize(top: str, params: dict, work: Path) -> dict:
    head = rtl.yosys_read(top, params) + "; "
    yosys(head + f"synth -flatten -top {top} -run :fine; tee -q -o {work}/coarse.json stat -json; "
          f"synth -flatten -top {top} -lut 6 -run fine:; tee -q -o {work}/generic.json stat -json")
    yosys(head + f"synth_xilinx -flatten -top {top} -noiopad -noclkbuf; tee -q -o {work}/xc7.json stat -json")
    coarse, generic, xc7 = (cells(work / f"{n}.json") for n in ("coarse", "generic", "xc7"))
    return {"lut": count(generic, r"\$lut"), "ff": count(generic, r"\$_.*DFF.*"),
            "mult": count(coarse, r"\$mul", r"\$macc"),
            "xc7_lut": count(xc7, r"LUT\d"), "xc7_ff": count(xc7, r"FD\w+"), "xc7_dsp": count(xc7, r"DSP48E1"),
            "xc7_carry": count(xc7, r"CARRY4"), "xc7_srl": count(xc7, r"SRL\w+"),
            "xc7_lutram": count(xc7, r"RAM\d+\w*"), "xc7_bram": count(xc7, r"RAMB\w+")}


HEADER = ("| unit | configuration (one lane) | generic LUT6 | generic FF | multipliers | xc7 LUT | xc7 FF "
          "| xc7 DSP48E1 | xc7 CARRY4 | xc7 SRL |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def table(results: list) -> str:
    lines = [HEADER]
    for (unit, config, top, _), r in results:
        lines.append(f"| {unit} (`{top}`) | {config} | {r['lut']} | {r['ff']} | {r['mult']} | {r['xc7_lut']} "
                     f"| {r['xc7_ff']} | {r['xc7_dsp']} | {r['xc7_carry']} | {r['xc7_srl']} |")
    return "\n".join(lines)


def write_doc(text: str, doc: Path) -> None:
    start, end = "<!-- synth-table -->", "<!-- /synth-table -->"
    body = doc.read_text()
    if start not in body or end not in body:
        raise SystemExit(f"{doc}: no {start} ... {end} markers")
    head, rest = body.split(start, 1)
    doc.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the table in docs/hardware.md")
    ap.add_argument("--json", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in ROWS:
            results.append((row, synthesize(row[2], row[3], Path(tmp))))
            print(f"{row[0]}: {row[1]}: {results[-1][1]}", file=sys.stderr)
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps([dict(unit=u, configuration=c, top=t, parameters=p, **r)
                                               for (u, c, t, p), r in results], indent=1))
    if args.write:
        write_doc(text, Path(__file__).resolve().parent.parent / "docs" / "hardware.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
