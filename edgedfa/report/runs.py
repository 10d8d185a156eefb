"""What a run directory holds, as plain data for plots and the summary: curves per epoch,
per-layer statistics over epochs, final saturation, settings, and an emulation report.

The history is read generically: any per-epoch key naming an accuracy or a loss becomes a
curve (``train_accuracy``, ``test_accuracy``, ``val_accuracy``, ``loss``, ``val_loss``, ...);
any nested table of numbers in a history entry becomes per-layer statistics, grouped by
the statistic's name (the last key) with one series per tensor (the keys before it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..checkpoint import read_checkpoint
from ..errors import EdgeDFAError
from ..fixed import FixedFormat

SPLIT_NAMES = {"train": "train", "test": "test", "val": "validation", "valid": "validation",
               "validation": "validation", "holdout": "validation"}
NOT_CURVES = {"epoch", "seconds", "lr_shift", "step", "steps"}
FORMAT_STAT = "integer bits of the format"  # a format name in the history counts as its integer bits


@dataclass
class Curve:
    """One per-epoch series of one run: ``kind`` accuracy or loss, ``split`` train/validation/test."""

    run: str
    kind: str
    split: str
    key: str
    epochs: list
    values: list


@dataclass
class Run:
    name: str
    path: str
    metrics: dict
    meta: dict = field(default_factory=dict)  # the checkpoint's metadata (numerics, train, plan)
    emulation: dict | None = None
    emulation_file: str | None = None
    config_text: str | None = None

    @property
    def history(self) -> list:
        return self.metrics.get("history", [])


def load_run(path: str, name: str | None = None) -> Run:
    """A run directory (or its metrics.json); errors name the file."""
    run_dir = os.path.dirname(path) if path.endswith(".json") else path
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(metrics_path):
        raise EdgeDFAError(f"{path}: not a run directory (no metrics.json) nor a sweep directory")
    metrics = _read_json(metrics_path)
    meta = {}
    if os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
        meta = read_checkpoint(run_dir)["meta"]
    run = Run(name or os.path.basename(os.path.normpath(run_dir)), run_dir, metrics, meta)
    run.emulation_file, run.emulation = find_emulation(run_dir)
    cfg = os.path.join(run_dir, "config.toml")
    if os.path.exists(cfg):
        with open(cfg) as fh:
            run.config_text = fh.read()
    return run


def _read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise EdgeDFAError(f"{path}: not valid JSON ({exc})") from None


def find_emulation(run_dir: str):
    """(file, report) of an ``edgedfa emulate --json`` report in the run directory, or (None, None)."""
    for name in sorted(os.listdir(run_dir)):
        if not name.endswith(".json") or name in ("metrics.json", "trial.json"):
            continue
        try:
            data = _read_json(os.path.join(run_dir, name))
        except EdgeDFAError:
            continue
        if isinstance(data, dict) and "layers" in data and "cycles" in data and "bit_exact" in data:
            return name, data
    return None, None


def run_names(paths: list) -> list:
    """Short distinct names: the directory name, with its parents where two would clash."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts) and len({tuple(p[-depth:]) for p in parts}) < len(parts):
        depth += 1
    return ["/".join(p[-depth:]) for p in parts]


# --------------------------------------------------------------------------- curves

def curve_kind(key: str):
    """(kind, split) of a history key, or None when it is no accuracy or loss curve."""
    k = key.lower()
    kind = "accuracy" if "acc" in k else "loss" if "loss" in k else None
    if kind is None or key in NOT_CURVES:
        return None
    prefix = k.replace("accuracy", "").replace("acc", "").replace("loss", "").strip("_")
    return kind, SPLIT_NAMES.get(prefix, prefix or "train")


def curves(run: Run) -> list:
    """Every accuracy and loss curve in the run's history."""
    keys = []
    for entry in run.history:
        keys += [k for k, v in entry.items() if k not in keys and _number(v) and curve_kind(k)]
    out = []
    for key in keys:
        pts = [(e.get("epoch", i + 1), e[key]) for i, e in enumerate(run.history) if _number(e.get(key))]
        pts = [(x, y) for x, y in pts if y == y]  # NaN: no test split
        if pts:
            kind, split = curve_kind(key)
            out.append(Curve(run.name, kind, split, key, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- per-layer statistics

def layer_stats(run: Run) -> dict:
    """statistic -> tensor -> (epochs, values) from the nested tables of the history (each
    table of a history entry is a group: {stat: {tensor: v}} or {tensor...: {stat: v}}); a
    statistic found in several groups is named with its group."""
    points = []  # (group, stat, tensor, epoch, value)
    for i, entry in enumerate(run.history):
        for key, val in entry.items():
            if isinstance(val, dict):
                for path, v in _leaves(val, (key,)):
                    stat, tensor = (path[0], path[1]) if len(path) == 2 else (path[-1], "/".join(path[1:-1]))
                    points.append((key, stat, tensor, entry.get("epoch", i + 1), v))
    groups = {}
    for group, stat, *_ in points:
        groups.setdefault(stat, set()).add(group)
    out = {}
    for group, stat, tensor, epoch, v in points:
        name = stat if len(groups[stat]) == 1 or stat == group else f"{stat} ({group})"
        xs, ys = out.setdefault(name, {}).setdefault(tensor, ([], []))
        xs.append(epoch)
        ys.append(v)
    return out


def _leaves(table: dict, path: tuple):
    """(path, number) for every numeric leaf; a format name counts as its integer bits."""
    for k, v in table.items():
        p = path + (str(k),)
        if isinstance(v, dict):
            yield from _leaves(v, p)
        elif _number(v):
            yield p, v
        elif isinstance(v, str) and v.startswith("ap_"):
            try:
                yield p + (FORMAT_STAT,), FixedFormat.parse(v).int_bits
            except Exception:  # a string that only looks like a format
                continue


def changing(stats: dict) -> tuple:
    """(the series that change over the epochs, statistic -> how many stayed constant): a
    plot over epochs shows changes; a series with one epoch counts as changing."""
    kept, constant = {}, {}
    for stat, series in stats.items():
        for tensor, (xs, ys) in series.items():
            if len(ys) > 1 and all(y == ys[0] for y in ys):
                constant[stat] = constant.get(stat, 0) + 1
            else:
                kept.setdefault(stat, {})[tensor] = (xs, ys)
    return kept, constant


def saturation(run: Run) -> list:
    """(tensor, fraction of codes at a format limit, clipped updates) at the end of the run."""
    return [(f"{layer}/{p}", e.get("fraction_at_limit", 0.0), e.get("clipped_updates", 0))
            for layer, params in run.metrics.get("saturation", {}).items() for p, e in params.items()]


def emulation_layers(report: dict) -> tuple:
    """(layers in order, phases in order, {(layer, phase): row}) of an emulation report."""
    layers, phases, cells = [], [], {}
    for r in report.get("layers", []):
        if r["layer"] not in layers:
            layers.append(r["layer"])
        if r["phase"] not in phases:
            phases.append(r["phase"])
        cells[(r["layer"], r["phase"])] = r
    return layers, phases, cells


def settings(run: Run) -> dict:
    """The settings a reader compares runs by."""
    m, train = run.metrics, run.meta.get("train", {})
    out = {"arch": m.get("arch"), "dataset": m.get("dataset"), "algo": m.get("algo"), "seed": m.get("seed"),
           "epochs": m.get("epochs"), "batch_size": m.get("batch_size"), "lr_shift": m.get("lr_shift")}
    for k in ("feedback_sparsity", "feedback_values", "feedback_kind", "lr_decay_epochs"):
        if k in train:
            out[k] = train[k]
    if m.get("lr_decay_epochs") is not None:  # the schedule in force (the default one resolved)
        out["lr_decay_epochs"] = m["lr_decay_epochs"]
    holdout = (m.get("settings") or {}).get("data", {}).get("holdout")
    if holdout not in (None, "none"):
        out["holdout (validation fraction)"] = holdout
    return out
