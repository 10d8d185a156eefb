"""Replay the training steps `edgedfa emulate` runs on a checkpoint through the RTL units
(hdl_models/rtl) and report bit-exactness per kind of work.

    python tools/rtl_replay.py CHECKPOINT [--data FILE.npz] [--steps N] [--array RxC]

Every requantization, block-exponent narrowing (max tracker -> requant), GEMM, sparse error
projection and parameter update of the steps is driven through its RTL unit in Icarus
Verilog (cocotb) and compared cycle by cycle with hdl_models (tests/rtl/replay.py); dense
projections run on the MAC array and are replayed as its GEMMs. Needs iverilog, yosys and
`pip install 'edgedfa[rtl]'`. The default 4x4 array keeps the GEMM simulations short (the
array's shape changes the cycle counts, never the integers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "rtl")]

from rtlsim import Units, missing_tools  # noqa: E402
from replay import REPLAYS, emulate, recording  # noqa: E402

from edgedfa.checkpoint import read_checkpoint  # noqa: E402
from edgedfa.data import select_dataset  # noqa: E402
from hdl_models.hwconfig import hw_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", help="FILE.npz (default: the checkpoint's dataset)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--array", default="4x4")
    args = ap.parse_args(argv)
    reason = missing_tools()
    if reason:
        print(f"rtl_replay: {reason}", file=sys.stderr)
        return 2
    ck = read_checkpoint(args.checkpoint)
    ds = select_dataset(args.data, recorded=json.loads(ck["graph_json"])["meta"].get("dataset"))
    with recording() as calls:
        report = emulate(args.checkpoint, ds.x_train, ds.y_train, args.steps, hw_config(None, args.array))
    print(f"emulate: hdl_models vs engine bit_exact = {report['bit_exact']}")
    print("| work | calls | elements | RTL vs hdl_models |\n|---|---:|---:|---|")
    ok = report["bit_exact"]
    with tempfile.TemporaryDirectory() as tmp:
        units = Units(Path(tmp))
        for kind, run in REPLAYS.items():
            try:
                n = run(units, calls[kind]) if calls[kind] else 0
                verdict = "bit-exact" if n else "none to replay"
            except AssertionError as err:
                n, ok, verdict = "-", False, "MISMATCH: " + str(err).splitlines()[0]
            print(f"| {kind} | {len(calls[kind])} | {n} | {verdict} |")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.gettempdir())
    raise SystemExit(main())
