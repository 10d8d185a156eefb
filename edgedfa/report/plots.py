"""The pictures (matplotlib, the optional ``plot`` extra), each saved as PNG and SVG.

Every function returns what it drew (curves, bars, points, the files), which the tests
check instead of pixels. Figures are built without pyplot, so no window or global state.
"""

from __future__ import annotations

import os

from ..errors import EdgeDFAError
from .runs import emulation_layers

INSTALL = 'plots need matplotlib: pip install "edgedfa[plot]"'
SPLIT_STYLE = {"train": "-", "validation": "--", "test": ":"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "edgedfa", "svg.fonttype": "none"}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgeDFAError(INSTALL) from None
    return Figure(figsize=(width, height), layout="constrained")


def save(fig, stem: str) -> list:
    import matplotlib

    files = [stem + ".png", stem + ".svg"]
    with matplotlib.rc_context({"svg.hashsalt": "edgedfa"}):
        fig.savefig(files[0], dpi=150)
        fig.savefig(files[1], metadata={"Date": None})
    return files


def styled(draw):
    """Run a drawing function under the report's style."""
    def wrapped(*args, **kwargs):
        try:
            import matplotlib
        except ImportError:
            raise EdgeDFAError(INSTALL) from None
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    wrapped.__doc__ = draw.__doc__
    return wrapped


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def eng_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import EngFormatter

    getattr(ax, f"{axis}axis").set_major_formatter(EngFormatter(sep=""))


# --------------------------------------------------------------------------- runs

@styled
def plot_curves(curves: list, stem: str) -> dict:
    """Accuracy and loss per epoch of every run on one chart (colour: run, line: split)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(11, 4.2)
    ax_acc, ax_loss = fig.subplots(1, 2)
    runs = list(dict.fromkeys(c.run for c in curves))
    color = dict(zip(runs, colors(len(runs))))
    drawn = {"accuracy": 0, "loss": 0}
    for c in curves:
        ax = ax_acc if c.kind == "accuracy" else ax_loss
        ys = [100 * v for v in c.values] if c.kind == "accuracy" else c.values
        ax.plot(c.epochs, ys, color=color[c.run], ls=SPLIT_STYLE.get(c.split, "-."),
                marker="o" if len(c.epochs) <= 20 else None, ms=3, label=f"{c.run} {c.split}")
        drawn[c.kind] += 1
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats)", title="Loss per epoch (train: mean over the epoch's batches)")
    splits = sorted(dict.fromkeys(c.split for c in curves), key=lambda s: (list(SPLIT_STYLE) + [s]).index(s))
    handles = [Line2D([], [], color="0.3", ls=SPLIT_STYLE.get(s, "-."), label=s) for s in splits]
    if len(runs) > 1:
        handles += [Line2D([], [], color=color[r], lw=3, label=r) for r in runs]
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not drawn["loss"]:
        ax_loss.text(0.5, 0.5, "no loss in the history", ha="center", va="center", transform=ax_loss.transAxes)
    fig.legend(handles=handles, loc="outside right upper", title=runs[0] if len(runs) == 1 else "line / run")
    fig.suptitle("Training curves" if len(runs) == 1 else f"Training curves of {len(runs)} runs")
    return {"accuracy_curves": drawn["accuracy"], "loss_curves": drawn["loss"], "files": save(fig, stem)}


@styled
def plot_layer_stats(stats: dict, run: str, stem: str) -> dict:
    """One panel per per-layer statistic over epochs, one line per tensor."""
    from matplotlib.ticker import MaxNLocator

    names = sorted(stats)
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    fig = new_figure(6.4 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    tensors = list(dict.fromkeys(t for s in names for t in stats[s]))
    color = dict(zip(tensors, colors(len(tensors))))
    lines = 0
    for ax, stat in zip(axes, names):
        ylabel, scale = stat_axis(stat, [y for _, ys in stats[stat].values() for y in ys])
        for tensor, (xs, ys) in stats[stat].items():
            ax.plot(xs, [scale * y for y in ys], color=color[tensor], marker="o" if len(xs) <= 20 else None, ms=3,
                    label=tensor)
            lines += 1
        ax.set(title=stat.replace("_", " "), xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6, title="tensor", title_fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{run}: per-layer statistics per epoch (the series that change)")
    return {"panels": len(names), "lines": lines, "files": save(fig, stem)}


def stat_axis(stat: str, values: list) -> tuple:
    """(y-axis label, scale) of a per-layer statistic, from its name: shares of values in %,
    format widths in bits, the rest as they are."""
    name = stat.lower()
    if any(w in name for w in ("clip", "zero", "fraction", "saturat", "share")) and max(values, default=0) <= 1:
        return "share of the values (%)", 100
    if "bits" in name:
        return "bits", 1
    if "moves" in name or "count" in name:
        return "count", 1
    return None, 1


@styled
def plot_saturation(rows: list, run: str, stem: str) -> dict:
    """Final share of codes at a format limit and count of clipped updates, per tensor."""
    fig = new_figure(9, 0.9 + 0.28 * max(len(rows), 3))
    ax_frac, ax_clip = fig.subplots(1, 2, sharey=True)
    names = [r[0] for r in rows]
    ys = list(range(len(rows)))
    frac = ax_frac.barh(ys, [100 * r[1] for r in rows], color="#c0504d")
    clip = ax_clip.barh(ys, [r[2] for r in rows], color="#4f81bd")
    ax_frac.bar_label(frac, fmt="%.2g%%", padding=2, fontsize=7)
    ax_clip.bar_label(clip, labels=[f"{r[2]:,}" for r in rows], padding=2, fontsize=7)
    for ax in (ax_frac, ax_clip):
        ax.margins(x=0.15)
    ax_frac.set_yticks(ys, names)
    ax_frac.invert_yaxis()
    ax_frac.set(xlabel="codes at the format's limit (%)", title="Saturated at the end of training")
    ax_clip.set(xlabel="updates clipped at the limit (count, whole run)", title="Clipped updates")
    eng_axis(ax_clip)
    fig.suptitle(f"{run}: saturation per tensor")
    return {"bars": 2 * len(rows), "tensors": len(rows), "files": save(fig, stem)}


@styled
def plot_emulation(report: dict, run: str, stem: str) -> dict:
    """Cycles, MACs and bytes moved per layer and phase, per training step."""
    layers, phases, cells = emulation_layers(report)
    steps = max(1, report.get("steps", 1))
    fig = new_figure(13, 1.2 + 0.32 * max(len(layers), 3))
    panels = fig.subplots(1, 3, sharey=True)
    color = dict(zip(phases, colors(len(phases))))
    ys = list(range(len(layers)))
    bars = 0
    for ax, key, label in zip(panels, ("cycles", "macs", "bytes"),
                              ("busy cycles / step (units overlap in the schedule)", "MACs / step",
                               "bytes moved / step (on-chip + off-chip)")):
        left = [0.0] * len(layers)
        for phase in phases:
            vals = [_cell(cells.get((l, phase)), key) / steps for l in layers]
            ax.barh(ys, vals, left=left, color=color[phase], label=phase)
            left = [a + b for a, b in zip(left, vals)]
            bars += len(layers)
        ax.set(xlabel=label)
        eng_axis(ax)
    panels[0].set_yticks(ys, layers)
    panels[0].invert_yaxis()
    panels[0].legend(title="phase", loc="lower right")
    hw = report.get("hardware", {})
    fig.suptitle(f"{run}: emulated per layer ({hw.get('array', '?')} array at {report.get('clock_mhz', 0):g} MHz, "
                 f"{report.get('cycles_per_step', 0):,.0f} cycles per step scheduled, batch {report.get('batch_size')})")
    return {"layers": len(layers), "phases": len(phases), "bars": bars, "files": save(fig, stem)}


def _cell(row, key: str) -> float:
    if row is None:
        return 0.0
    if key == "bytes":
        return row.get("onchip_bytes", 0) + row.get("offchip_bytes", 0)
    return row.get(key, 0)


def stem(out_dir: str, name: str) -> str:
    """A file stem in ``out_dir`` for a run or plot name."""
    return os.path.join(out_dir, name.replace("/", "_").replace(" ", "_"))
