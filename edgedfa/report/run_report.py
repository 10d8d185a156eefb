"""``edgedfa report RUN [RUN ...]``: curves of all runs on one chart, per-run layer
statistics, saturation and emulation plots, and ``summary.md`` (settings, final figures,
formats, the plan)."""

from __future__ import annotations

import json
import os

from ..checkpoint import atomic_write
from . import markdown as md
from . import plots
from .runs import Run, changing, curves, layer_stats, load_run, run_names, saturation, settings


def run_report(paths: list, out_dir: str, draw: bool = True) -> dict:
    """Plots (when ``draw``) and summary.md for the runs in ``paths``; what was written."""
    runs = [load_run(p, n) for p, n in zip(paths, run_names(paths))]
    drawn = {"curves": None, "runs": {r.name: {} for r in runs}}
    if draw:
        drawn["curves"] = plots.plot_curves([c for r in runs for c in curves(r)], plots.stem(out_dir, "curves"))
        for r in runs:
            drawn["runs"][r.name] = _run_plots(r, out_dir)
    drawn["summary"] = os.path.join(out_dir, "summary.md")
    atomic_write(drawn["summary"], summary_markdown(runs, drawn, out_dir))
    return drawn


def _run_plots(run: Run, out_dir: str) -> dict:
    out = {}
    stats, out["constant"] = changing(layer_stats(run))
    if stats:
        out["layers"] = plots.plot_layer_stats(stats, run.name, plots.stem(out_dir, f"{run.name}-layers"))
    sat = saturation(run)
    if sat:
        out["saturation"] = plots.plot_saturation(sat, run.name, plots.stem(out_dir, f"{run.name}-saturation"))
    if run.emulation:
        out["emulation"] = plots.plot_emulation(run.emulation, run.name, plots.stem(out_dir, f"{run.name}-emulation"))
    return out


def summary_markdown(runs: list, drawn: dict, out_dir: str) -> str:
    parts = ["# Run report", "", md.table(
        ["run", "arch", "dataset", "algo", "seed", "epochs", "test acc.", "train acc.", "val. acc.", "samples/s",
         "cycles/step"], [_overview(r) for r in runs]), ""]
    if drawn.get("curves"):
        parts += [md.image(_rel(drawn["curves"]["files"][0], out_dir), "accuracy and loss per epoch"), ""]
    for r in runs:
        parts += _run_section(r, drawn["runs"].get(r.name, {}), out_dir)
    return "\n".join(parts) + "\n"


def _overview(r: Run) -> list:
    m, last = r.metrics, (r.history[-1] if r.history else {})
    val = next((last[k] for k in last if "val" in k and "acc" in k), None)
    emu = r.emulation or {}
    return [r.name, m.get("arch", "—"), m.get("dataset", "—"), m.get("algo", "—"), m.get("seed", "—"), len(r.history),
            md.pct(m.get("test_accuracy")), md.pct(m.get("train_accuracy")), md.pct(val),
            md.num(m.get("samples_per_second")), md.num(emu.get("cycles_per_step"))]


def _run_section(r: Run, drawn: dict, out_dir: str) -> list:
    out = [f"## {r.name}", "", f"`{r.path}`", "", "### Settings", "",
           md.table(["setting", "value"], [[k, _plain(v)] for k, v in settings(r).items() if v is not None])]
    num = r.meta.get("numerics")
    if num:
        out += ["", "Numerics: " + ", ".join(f"`{k} = {_plain(v)}`" for k, v in num.items() if v is not None)]
    out += ["", "### Final figures", "", md.table(["figure", "value"], _figures(r))]
    out += ["", "### Formats", "", md.table(["layer", "formats"], _format_rows(r.metrics.get("formats", {})))]
    out += ["", "### Plan (credit assignment)", "", md.table(
        ["module", "nodes", "error source", "feedback"], [_plan_row(m) for m in r.metrics.get("plan", [])])]
    out += ["", "### Per-layer statistics", ""]
    constant = drawn.get("constant") or {}
    if "layers" not in drawn and not constant:
        out += ["The history holds no per-epoch per-layer statistics.", ""]
    if constant:
        out += ["Constant over the run, not drawn: " + ", ".join(f"{n} {stat} series" for stat, n in constant.items())
                + ".", ""]
    for key, alt in (("layers", "per-layer statistics per epoch"), ("saturation", "saturation per tensor"),
                     ("emulation", "emulated cycles, MACs and bytes per layer")):
        if key in drawn:
            out += [md.image(_rel(drawn[key]["files"][0], out_dir), alt), ""]
    if r.emulation:
        out += _emulation_lines(r)
    if r.config_text:
        out += ["### config.toml", "", "```toml", r.config_text.rstrip(), "```", ""]
    return out


def _figures(r: Run) -> list:
    """Accuracies, the best epoch when a validation split chose one, loss, steps, speed."""
    m, last = r.metrics, (r.history[-1] if r.history else {})
    rows = [["test accuracy", md.pct(m.get("test_accuracy"))], ["train accuracy", md.pct(m.get("train_accuracy"))]]
    if m.get("val_accuracy") is not None:
        rows.append(["validation accuracy", md.pct(m["val_accuracy"])])
    if m.get("best_epoch") is not None:
        rows.append(["best epoch (by validation accuracy)", f"{m['best_epoch']}: validation "
                     f"{md.pct(m.get('best_val_accuracy'))}, test {md.pct(m.get('best_test_accuracy'))} (best.npz)"])
    rows += [["loss (last epoch, train batches)", md.num(last.get("loss"), 4)], ["epochs", len(r.history)],
             ["training steps", md.num(m.get("steps"))], ["samples / s", md.num(m.get("samples_per_second"))]]
    return rows


def _emulation_lines(r: Run) -> list:
    e = r.emulation
    return ["### Emulation", "", f"From `{r.emulation_file}`: {e.get('steps')} step(s) of batch {e.get('batch_size')}"
            f" on a {e.get('hardware', {}).get('array', '?')} array at {e.get('clock_mhz', 0):g} MHz;"
            f" {md.num(e.get('cycles_per_step'))} cycles per step, {md.num(e.get('macs'))} MACs,"
            f" {md.num(e.get('onchip_bytes'))} on-chip and {md.num(e.get('offchip_bytes'))} off-chip bytes in all;"
            f" engine comparison {'bit-exact' if e.get('bit_exact') else 'NOT bit-exact'}.", ""]


def _format_rows(formats: dict) -> list:
    return [[layer, ", ".join(f"{k} `{v}`" for k, v in f.items()) if isinstance(f, dict) else f"`{f}`"]
            for layer, f in formats.items()]


def _plan_row(m: dict) -> list:
    fb = m.get("feedback")
    fb_text = "—" if not fb else ", ".join(f"{k} {v}" for k, v in fb.items() if v is not None)
    return [m.get("module"), " ".join(m.get("nodes", [])), m.get("source"), fb_text]


def _plain(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _rel(path: str, out_dir: str) -> str:
    return os.path.relpath(path, out_dir)
