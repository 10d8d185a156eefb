"""``edgedfa report SWEEP_DIR``: the sweep's answer. Trials are grouped into configurations
(means over seeds); Pareto plots of accuracy against cycles per step, bytes moved per step
and weight memory mark the front; ``summary.md`` holds the best configuration per objective
and the table of all of them, ``configurations.csv`` the same table for a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import os

from ..checkpoint import atomic_write
from ..config import read_toml
from ..errors import EdgeDFAError
from ..sweep.results import FIGURES, RESULTS, read_rows
from ..sweep.spec import parse_constraint, parse_objective
from . import markdown as md
from . import plots
from .pareto_plot import MARKERS, plot_pareto

ACCURACY = "test_accuracy"
NEAR_BEST = 0.01  # "as good as the best": within one accuracy point
# (figure, plot file, x-axis label, title)
COSTS = [("cycles_per_step", "pareto-cycles", "emulated cycles per training step",
          "Accuracy against emulated cycles per step"),
         ("bytes_per_step", "pareto-bytes", "bytes moved per training step (on-chip + off-chip)",
          "Accuracy against bytes moved per step"),
         ("weight_memory_bits", "pareto-weight-memory", "weight memory (bits)",
          "Accuracy against weight memory")]
MEANS = tuple(f for f in FIGURES if f not in ("bit_exact", "array"))  # the numeric figures


def is_sweep_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, RESULTS))


def sweep_report(sweep_dir: str, out_dir: str, draw: bool = True) -> dict:
    """Pareto plots (when ``draw``), configurations.csv and summary.md; what was written."""
    rows = read_rows(os.path.join(sweep_dir, RESULTS))
    if not rows:
        raise EdgeDFAError(f"{sweep_dir}: no finished trial in {RESULTS} yet")
    configs = configurations(rows)
    encode = encoding(configs)
    out = {"configurations": len(configs), "trials": len(rows), "plots": {}}
    for field, name, x_label, title in COSTS:
        pts = [c for c in configs if c.get(field) is not None and c.get(ACCURACY) is not None]
        mark_front(pts, field)
        if draw and pts:
            data = [{"x": c[field], "y": c[ACCURACY], "y_min": c["acc_min"], "y_max": c["acc_max"],
                     "front": c["front"][field], "label": c["label"], "point": c["point"]} for c in pts]
            out["plots"][field] = plot_pareto(data, x_label, title, plots.stem(out_dir, name), encode)
    write_configurations(configs, os.path.join(out_dir, "configurations.csv"))
    objective, constraints = spec_goal(sweep_dir)
    text = summary_markdown(sweep_dir, rows, configs, out, out_dir, objective, constraints)
    out["summary"] = os.path.join(out_dir, "summary.md")
    atomic_write(out["summary"], text)
    out["configs"] = configs
    return out


def configurations(rows: list) -> list:
    """One entry per configuration (trials differing only in seed): figures averaged over seeds."""
    groups = {}
    for r in rows:
        groups.setdefault(json.dumps(r.get("point", {}), sort_keys=True, default=str), []).append(r)
    out = []
    for rs in groups.values():
        c = {"label": rs[0]["label"], "point": rs[0].get("point", {}), "seeds": sorted(r["seed"] for r in rs),
             "runs": [r["run_dir"] for r in rs], "front": {}}
        for f in MEANS:
            vals = [r[f] for r in rs if isinstance(r.get(f), (int, float))]
            c[f] = sum(vals) / len(vals) if vals else None
        accs = [r[ACCURACY] for r in rs if r.get(ACCURACY) is not None]
        c["acc_min"], c["acc_max"] = (min(accs), max(accs)) if accs else (None, None)
        out.append(c)
    return out


def mark_front(configs: list, field: str) -> None:
    """Set ``front[field]``: no other configuration is at least as accurate and at most as costly
    with one of the two strictly better."""
    for c in configs:
        x, y = c[field], c[ACCURACY]
        c["front"][field] = not any(o[field] <= x and o[ACCURACY] >= y and (o[field] < x or o[ACCURACY] > y)
                                    for o in configs if o is not c)


def encoding(configs: list) -> dict:
    """Which axes colour, shape and fill the points: the axis with most values colours them
    (up to 10), the next shapes them, a third with two values fills them or leaves them hollow."""
    values = {}
    for c in configs:
        for axis, v in c["point"].items():
            values.setdefault(axis, [])
            if v not in values[axis]:
                values[axis].append(v)
    varying = sorted((a for a in values if len(values[a]) > 1), key=lambda a: -len(values[a]))
    color = next((a for a in varying if len(values[a]) <= 10), None)
    marker = next((a for a in varying if a != color and len(values[a]) <= len(MARKERS)), None)
    fill = next((a for a in varying if a not in (color, marker) and len(values[a]) == 2), None)
    return {"color": color, "color_values": values.get(color, []), "marker": marker,
            "marker_values": values.get(marker, []), "fill": fill, "fill_values": values.get(fill, [])}


def spec_goal(sweep_dir: str) -> tuple:
    """The objective and constraints the sweep's spec names, if any."""
    path = os.path.join(sweep_dir, "spec.toml")
    if not os.path.exists(path):
        return None, []
    t = read_toml(path, "sweep spec").get("sweep", {})
    where = f"{path} [sweep]"
    objective = parse_objective(t["objective"], where) if "objective" in t else None
    return objective, [parse_constraint(c, where) for c in t.get("constraints", [])]


def best_rows(configs: list, objective=None, constraints=()) -> list:
    """(objective in words, configuration) for the questions a designer asks of a sweep."""
    rated = [c for c in configs if c.get(ACCURACY) is not None]
    if not rated:
        return []
    top = max(rated, key=lambda c: c[ACCURACY])
    out = [("highest test accuracy", top)]
    near = [c for c in rated if c[ACCURACY] >= top[ACCURACY] - NEAR_BEST]
    for field, _, x_label, _ in COSTS:
        have = [c for c in near if c.get(field) is not None]
        if have:
            out.append((f"least {x_label.split(' (')[0]}, within {100 * NEAR_BEST:.0f} point of the best accuracy",
                        min(have, key=lambda c: (c[field], -c[ACCURACY]))))
    if objective is not None:
        ok = [c for c in configs if c.get(objective.field) is not None
              and all(k.excess(c) <= 0 for k in constraints)]
        pick = max if objective.direction == "max" else min
        words = f"{objective}" + (" subject to " + " and ".join(map(str, constraints)) if constraints else "")
        out.append((words, pick(ok, key=lambda c: c[objective.field]) if ok else None))
    return out


def _config_cells(c: dict) -> list:
    return [c["label"], len(c["seeds"]), md.pct(c[ACCURACY]), f"{md.pct(c['acc_min'])} .. {md.pct(c['acc_max'])}",
            md.num(c.get("cycles_per_step")), md.num(c.get("bytes_per_step")), md.bits(c.get("weight_memory_bits")),
            md.bits(c.get("memory_bits"))]


HEADERS = ["configuration", "seeds", "test acc. (mean)", "min .. max", "cycles/step", "bytes/step", "weight memory (bits)",
           "on-chip memory (bits)"]


def summary_markdown(sweep_dir, rows, configs, out, out_dir, objective, constraints) -> str:
    lines = [f"# Sweep report: `{os.path.basename(os.path.normpath(sweep_dir))}`", "",
             f"{len(rows)} trial(s) in {len(configs)} configuration(s). Figures of a configuration are means over its"
             " seeds; accuracy is on the test split; cycles, MACs and bytes are per training step as emulated by"
             " hdl_models; on-chip memory is weights + feedback + peak activation and error buffers.", "",
             "## Best configurations", ""]
    best = best_rows(configs, objective, constraints)
    lines.append(md.table(["objective"] + HEADERS, [[w] + (_config_cells(c) if c else ["none feasible"] + [""] * 7)
                                                    for w, c in best]))
    lines += ["", "## Pareto plots", ""]
    for field, name, x_label, _ in COSTS:
        info = out["plots"].get(field)
        if info:
            lines += [f"Accuracy against {x_label}: {info['front']} configuration(s) on the front.", "",
                      md.image(os.path.relpath(info["files"][0], out_dir), f"accuracy against {x_label}"), ""]
    if not out["plots"]:
        lines += ["No plots drawn (matplotlib missing, or the trials hold no cost figures).", ""]
    marks = {"cycles_per_step": "C", "bytes_per_step": "B", "weight_memory_bits": "W"}
    lines += ["## All configurations", "", "Front: on the Pareto front of accuracy against cycles (C), bytes (B),"
              " weight memory (W).", ""]
    lines.append(md.table(HEADERS + ["front"], [_config_cells(c) + ["".join(m for f, m in marks.items()
                                                                           if c["front"].get(f))] for c in
                                                 sorted(configs, key=lambda c: -(c[ACCURACY] or 0))]))
    lines += ["", f"Every trial: `results.csv` in the sweep directory; run directories under `trials/`.", ""]
    return "\n".join(lines)


def write_configurations(configs: list, path: str) -> None:
    axes = list(dict.fromkeys(a for c in configs for a in c["point"]))
    cols = ["label", *axes, "seeds", *MEANS, "acc_min", "acc_max", *(f"front_{f}" for f, *_ in COSTS), "runs"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for c in configs:
        w.writerow([c["label"], *(c["point"].get(a) for a in axes), " ".join(map(str, c["seeds"])),
                    *(c.get(f) for f in MEANS), c["acc_min"], c["acc_max"],
                    *(c["front"].get(f, "") for f, *_ in COSTS), " ".join(c["runs"])])
    atomic_write(path, buf.getvalue())
