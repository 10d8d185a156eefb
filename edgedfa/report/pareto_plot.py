"""The Pareto plot of a sweep: accuracy against one cost, one point per configuration.

Points are coloured, shaped and filled by the axes that vary; the front is a dashed
staircase with its points outlined and labelled, each label placed where it covers no other
label or point. When the accuracies spread wide (a collapsed configuration at chance), a
second panel zooms on the top so the front stays readable; the first keeps every point.
"""

from __future__ import annotations

import math

from .plots import colors, eng_axis, new_figure, save, styled

MARKERS = "osD^v<>PX*h"
ZOOM_POINTS = 12.0  # the zoomed panel spans this many accuracy points below the best
NOTE = "a point: one configuration,\nmean over its seeds;\nbars: min..max over seeds"


@styled
def plot_pareto(points: list, x_label: str, title: str, stem: str, encode: dict) -> dict:
    """``points``: dicts with x, y, y_min, y_max (accuracy 0..1), front, label, point."""
    style = _styles(points, encode)
    top = 100 * max(p["y"] for p in points)
    zoom = top - 100 * min(p["y_min"] for p in points) > 2 * ZOOM_POINTS
    fig = new_figure(12.5 if zoom else 9.5, 5.8)
    axes = fig.subplots(1, 2, width_ratios=[1, 2.2]) if zoom else [fig.subplots()]
    for ax in axes:
        _draw(ax, points, style, x_label)
    axes[0].set_ylabel("test accuracy (%)")
    window = (top - ZOOM_POINTS, min(100.0, top + 2.5))
    if zoom:
        axes[0].axhspan(*window, color="0.92", zorder=-1)
        axes[0].set_title("all configurations (shaded: the zoom)")
        axes[1].set_ylim(*window)
        axes[1].set_title(f"zoom: within {ZOOM_POINTS:g} points of the best")
    fig.suptitle(title)
    _legend(fig, encode, style)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["x"])
    inside = [p for p in front if not zoom or window[0] <= 100 * p["y"] <= window[1]]
    labels = place_labels(fig, axes[-1], inside, points)
    if zoom:
        labels += place_labels(fig, axes[0], [p for p in front if p not in inside], points)
    return {"points": len(points), "front": len(front), "labels": labels, "panels": len(axes),
            "files": save(fig, stem)}


def _styles(points: list, encode: dict) -> dict:
    palette = dict(zip(encode.get("color_values", []), colors(len(encode.get("color_values", [])))))
    shapes = dict(zip(encode.get("marker_values", []), MARKERS))
    fills = encode.get("fill_values", [])
    out = {"palette": palette, "shapes": shapes}
    for p in points:
        c = palette.get(p["point"].get(encode.get("color")), "0.4")
        hollow = encode.get("fill") is not None and p["point"].get(encode["fill"]) == fills[-1]
        out[id(p)] = {"fmt": shapes.get(p["point"].get(encode.get("marker")), "o"), "color": c,
                      "mfc": "white" if hollow else c}
    return out


def _draw(ax, points: list, style: dict, x_label: str) -> None:
    for p in points:
        s = style[id(p)]
        ax.errorbar(p["x"], 100 * p["y"], yerr=[[100 * (p["y"] - p["y_min"])], [100 * (p["y_max"] - p["y"])]],
                    fmt=s["fmt"], color=s["color"], mfc=s["mfc"], ms=8 if p["front"] else 6,
                    mec="black" if p["front"] else s["color"], mew=1.3 if p["front"] else 1.0,
                    alpha=1.0 if p["front"] else 0.8, capsize=2, elinewidth=0.8)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["x"])
    if front:
        ax.step([p["x"] for p in front], [100 * p["y"] for p in front], where="post", color="black", lw=1,
                ls="--", zorder=0)
    xs = [p["x"] for p in points if p["x"] > 0]
    if xs and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    else:
        eng_axis(ax)
    ax.set_xlabel(x_label)


def _legend(fig, encode: dict, style: dict) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    heads, handles = [], []

    def section(title, entries):
        if entries:
            heads.append(title)
            handles.extend([Line2D([], [], ls="", label=title)] + entries)

    section(f"{encode.get('color')} (colour)", [Patch(color=c, label=f"{v}") for v, c in style["palette"].items()])
    section(f"{encode.get('marker')} (marker)", [Line2D([], [], ls="", marker=m, color="0.4", label=f"{v}")
                                                 for v, m in style["shapes"].items()])
    section(f"{encode.get('fill')} (fill)", [Line2D([], [], ls="", marker="o", color="0.4", mfc="white" if i else "0.4",
                                                    label=f"{v}") for i, v in enumerate(encode.get("fill_values", []))])
    section(" ", [Line2D([], [], color="black", ls="--", marker="o", mfc="none", mec="black", label="Pareto front"),
                  Line2D([], [], ls="", label=NOTE)])
    legend = fig.legend(handles=handles, loc="outside right upper")
    for text in legend.get_texts():
        if text.get_text() in heads:
            text.set_fontweight("bold")


# --------------------------------------------------------------------------- labels

def _offsets() -> list:
    """Label offsets in points, nearest first, around the point."""
    out = []
    for r in (12, 24, 38, 54, 72):
        for deg in (40, -40, 140, -140, 90, -90, 0, 180):
            out.append((r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))))
    return out


def place_labels(fig, ax, front: list, points: list) -> list:
    """Label each front point at the nearest offset where the label stays inside the axes,
    covers no other label or point and sits closer to its point than to any other front
    point; the labels placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not front:
        return []
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # final layout and limits, so positions can be measured
    renderer, frame = canvas.get_renderer(), ax.get_window_extent()
    taken = [_marker_box(ax, p) for p in points]
    taken = [b for b in taken if b is not None]
    placed = []
    for p in front:
        box = _first_free(ax, p, renderer, frame, taken, front, strict=True)
        box = box or _first_free(ax, p, renderer, frame, taken, front, strict=False)
        if box is None:  # nowhere free: the nearest spot, overlapping
            _annotate(ax, p, *_offsets()[0])
        else:
            taken.append(box)
        placed.append(p["label"])
    return placed


def _first_free(ax, p, renderer, frame, taken, front, strict: bool):
    """The text box of the first offset whose label stays inside the axes and covers nothing
    (``strict``: and sits nearest its own point); the label stays drawn there. None if none."""
    from matplotlib.text import Text

    for dx, dy in _offsets():
        ann = _annotate(ax, p, dx, dy)
        ann.update_positions(renderer)
        box = Text.get_window_extent(ann, renderer).expanded(1.1, 1.3)  # the text, not its leader line
        if (_contains(frame, box) and not any(box.overlaps(b) for b in taken)
                and (not strict or _nearest(box, front, ax) is p)):
            return box
        ann.remove()
    return None


def _annotate(ax, p: dict, dx: float, dy: float):
    ann = ax.annotate(p["label"], (p["x"], 100 * p["y"]), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                      ha="left" if dx > 1 else "right" if dx < -1 else "center",
                      va="bottom" if dy > 1 else "top" if dy < -1 else "center",
                      bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.7", "alpha": 0.9},
                      arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 0, "shrinkB": 4})
    ann.set_in_layout(False)
    return ann


def _nearest(box, front: list, ax) -> dict:
    """The front point nearest to a label: a label must sit closest to its own point."""
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2

    def dist(q):
        x, y = ax.transData.transform((q["x"], 100 * q["y"]))
        return math.hypot(x - cx, y - cy)

    return min(front, key=dist)


def _marker_box(ax, p: dict, half: float = 6.0):
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform((p["x"], 100 * p["y"]))
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return Bbox([[x - half, y - half], [x + half, y + half]])


def _contains(outer, inner) -> bool:
    return outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1
