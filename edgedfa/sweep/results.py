"""The results file: one JSON line per finished trial, appended whole; CSV/Parquet exports.

Only the sweep's driver writes it (workers return their row), so no two writers race. A
line is written with one ``write`` on a file opened for appending and synced before the
next trial is recorded; a sweep killed mid-write leaves at most a torn last line, which
``read_rows`` drops (that trial reruns).
"""

from __future__ import annotations

import csv
import io
import json
import os

from ..checkpoint import atomic_write
from ..errors import EdgeDFAError

RESULTS = "results.jsonl"

# A trial's figures: the same on any worker for the same trial (the columns compared).
TRAIN_FIGURES = ("test_accuracy", "train_accuracy", "val_accuracy", "loss", "epochs", "steps", "params",
                 "weight_memory_bits", "max_fraction_at_limit", "clipped_updates")
EMULATE_FIGURES = ("cycles_per_step", "macs_per_step", "offchip_bytes_per_step", "onchip_bytes_per_step",
                   "bytes_per_step", "us_per_step_at_clock", "pe_utilization", "feedback_memory_bits",
                   "activation_memory_bits", "memory_bits", "bit_exact", "array", "clock_mhz")
FIGURES = TRAIN_FIGURES + EMULATE_FIGURES
# How the trial ran: differs between runs of the same trial.
TIMING = ("seconds", "samples_per_second", "worker", "finished")
UNITS = {"cycles_per_step": "cycles / training step", "macs_per_step": "MACs / training step",
         "offchip_bytes_per_step": "off-chip bytes / training step", "bytes_per_step": "bytes moved / training step",
         "onchip_bytes_per_step": "on-chip bytes / training step", "weight_memory_bits": "weight memory (bits)",
         "memory_bits": "memory (bits)", "test_accuracy": "test accuracy", "us_per_step_at_clock": "µs / step at clock"}


def read_rows(path: str) -> list:
    """Every complete row; a torn last line (a write cut short) is cut from the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        data = fh.read()
    complete, newline, torn = data.rpartition(b"\n")  # every whole line ends with a newline
    if torn:
        with open(path, "r+b") as fh:
            fh.truncate(len(complete) + len(newline))
    rows = []
    for no, line in enumerate(complete.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise EdgeDFAError(f"{path}:{no}: not a JSON row; the results file is damaged") from None
    return rows


def append_row(path: str, row: dict) -> None:
    """One line, written whole and synced."""
    data = (json.dumps(row, default=_plain) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(v):
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return str(v)


def columns(rows: list) -> list:
    """Table columns: identity, axes, seed, figures, run directory, timing."""
    axes = []
    for r in rows:
        axes += [a for a in r.get("point", {}) if a not in axes]
    figs = [f for f in FIGURES if any(r.get(f) is not None for r in rows)]
    return ["fingerprint", "label", *axes, "seed", *figs, "run_dir", *TIMING]


def flat(row: dict) -> dict:
    """A row as one table line: axis values as columns, the configuration as JSON."""
    out = {k: v for k, v in row.items() if k not in ("point", "config")}
    out.update(row.get("point", {}))
    out["config"] = json.dumps(row.get("config", {}), sort_keys=True)
    return out


def write_csv(rows: list, path: str) -> None:
    cols = columns(rows) + ["config"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in flat(r).items()})
    atomic_write(path, buf.getvalue())


def write_parquet(rows: list, path: str) -> bool:
    """results.parquet when pyarrow is installed; False when it is not."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols = columns(rows) + ["config"]
    table = pa.Table.from_pylist([{c: _cell(flat(r).get(c)) for c in cols} for r in rows])
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return True


def _cell(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v
