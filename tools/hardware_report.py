"""BP vs dense DFA vs sparse DFA (k=1) vs regenerated feedback vs the modular and hybrid
presets on the modelled accelerator.

For the default MLP (64-256-256-10) and the default CNN, one training step at batch 32 on
the default hardware (16x16 int8 PEs, 200 MHz): MACs/adds of the error path, bytes moved
for it, feedback memory, cycles per step with and without overlapping units. Prints a
markdown table, writes docs/hardware_report.json and a plot docs/hardware_report.png
(matplotlib) or .svg (written by hand when matplotlib is missing).

    python tools/hardware_report.py
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from edgedfa import arch  # noqa: E402
from edgedfa.data import digits  # noqa: E402
from edgedfa.numerics import Numerics  # noqa: E402
from edgedfa.model import IntModel  # noqa: E402
from edgedfa.train import TrainConfig  # noqa: E402
from edgedfa.cosim import emulate  # noqa: E402
from hdl_models.hwconfig import HwConfig  # noqa: E402

VARIANTS = {
    "BP": dict(algo="bp"),
    "DFA dense, stored": dict(algo="dfa", feedback_regenerate=False),
    "DFA dense, regenerated": dict(algo="dfa", feedback_regenerate=True),
    "sDFA k=1, stored": dict(algo="sdfa", feedback_sparsity=1, feedback_regenerate=False),
    "sDFA k=1, regenerated": dict(algo="sdfa", feedback_sparsity=1, feedback_regenerate=True),
    "modular, regenerated": dict(algo="modular", feedback_regenerate=True),
    "hybrid, regenerated": dict(algo="hybrid", feedback_sparsity=1, feedback_regenerate=True),
}
RECURRENT_VARIANTS = {  # GRU: full BPTT vs per-step DFA (no BPTT, bptt_steps = 0) vs modular (DFA at Y_h, BPTT inside)
    "BP (full BPTT)": dict(algo="bp"),
    "per-step DFA dense": dict(algo="dfa"),
    "per-step sDFA k=1": dict(algo="sdfa", feedback_sparsity=1),
    "modular (DFA at h_T, BPTT)": dict(algo="modular"),
}
HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")


def measure(model, x, y, cfg):
    on = emulate(model, x, y, 1, HwConfig(overlap=True), train_cfg=TrainConfig(batch_size=32, **cfg))
    off = emulate(model, x, y, 1, HwConfig(overlap=False), train_cfg=TrainConfig(batch_size=32, **cfg),
                  compare_engine=False)
    err = on["phases"]["error"]
    upd = on["phases"]["update"]
    return {"bit_exact": on["bit_exact"], "error_macs": err["macs"], "error_adds": err["adds"],
            "error_ops": err["macs"] + err["adds"], "backward_macs": err["macs"] + upd["macs"],
            "error_bytes": err["onchip_bytes"] + err["offchip_bytes"],
            "feedback_bytes_moved": sum(r["feedback_bytes"] for r in on["layers"]),
            "feedback_memory_bytes": on["feedback_memory_bytes"], "prng_words": err["prng_words"],
            "cycles": on["cycles"], "cycles_serial": off["cycles"], "forward_macs": on["phases"]["forward"]["macs"],
            "state_bytes": sum(r["state_bytes"] for r in on["layers"]),
            "lut_lookups": sum(r["lut_lookups"] for r in on["layers"])}


def main():
    ds = digits()
    nets = {}
    m = IntModel(arch.mlp(0), Numerics.from_bits(8), 0)
    m.calibrate(ds.x_train[:256])
    nets["MLP 64-256-256-10"] = (m, ds.x_train[:32], ds.y_train[:32])
    xc = ds.x_train.reshape(-1, 1, 8, 8)
    c = IntModel(arch.cnn(0), Numerics.from_bits(8), 0)
    c.calibrate(xc[:256])
    nets["CNN conv32-conv64-fc10"] = (c, xc[:32], ds.y_train[:32])
    results = {net: {v: measure(*args, cfg) for v, cfg in VARIANTS.items()} for net, args in nets.items()}
    xs = ds.x_train.reshape(-1, 8, 8)  # a digit as 8 steps of 8 features
    g = IntModel(arch.recurrent("gru", 0), Numerics.from_bits(8), 0)
    g.calibrate(xs[:256])
    results["GRU h64 T8"] = {v: measure(g, xs[:32], ds.y_train[:32], cfg) for v, cfg in RECURRENT_VARIANTS.items()}
    print_table(results)
    with open(os.path.join(DOCS, "hardware_report.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    plot(results)


def print_table(results):
    print("| network | algorithm | bit-exact | error-path MACs | error-path adds | backward MACs (error + dW) "
          "| error-path bytes | feedback bytes moved | feedback memory B | cycles/step (overlap) | cycles/step (serial) "
          "| BP/this |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for net, rows in results.items():
        bp = next(iter(rows.values()))["cycles"]  # the first variant is BP
        for v, r in rows.items():
            print(f"| {net} | {v} | {r['bit_exact']} | {r['error_macs']:,} | {r['error_adds']:,} | {r['backward_macs']:,} "
                  f"| {r['error_bytes']:,} | {r['feedback_bytes_moved']:,} | {r['feedback_memory_bytes']:,} "
                  f"| {r['cycles']:,} | {r['cycles_serial']:,} | {bp / r['cycles']:.2f}x |")


SHORT = {"BP": "BP", "DFA dense, stored": "DFA", "DFA dense, regenerated": "DFA\nregen", "sDFA k=1, stored": "sDFA",
         "sDFA k=1, regenerated": "sDFA\nregen", "modular, regenerated": "modular",
         "hybrid, regenerated": "hybrid", "BP (full BPTT)": "BPTT", "per-step DFA dense": "step\nDFA",
         "per-step sDFA k=1": "step\nsDFA", "modular (DFA at h_T, BPTT)": "modular"}


def plot(results):
    metrics = [("error_ops", "error-path MACs + adds"), ("error_bytes", "error-path bytes"),
               ("feedback_memory_bytes", "feedback memory (B)"), ("cycles", "cycles / step")]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return svg(results, metrics)
    fig, axes = plt.subplots(len(results), len(metrics), figsize=(16, 3.5 * len(results)))
    for i, (net, rows) in enumerate(results.items()):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            vals = [max(rows[v][key], 0.5) for v in rows]
            ax.bar(range(len(rows)), vals, color=["#444", "#1f77b4", "#6baed6", "#d62728", "#ff9896"][:len(rows)])
            ax.set_yscale("log")
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([SHORT.get(v, v) for v in rows], fontsize=8)
            ax.set_title(f"{net}\n{label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "hardware_report.png"), dpi=90)


def svg(results, metrics):
    """A log-scale bar chart written by hand (no matplotlib)."""
    import math

    w, h, parts = 220, 160, []
    for i, (net, rows) in enumerate(results.items()):
        for j, (key, label) in enumerate(metrics):
            x0, y0 = j * w + 10, i * (h + 40) + 30
            vals = [max(rows[v][key], 1) for v in rows]
            top = math.log10(max(vals)) + 0.5
            parts.append(f'<text x="{x0}" y="{y0 - 8}" font-size="10">{net}: {label}</text>')
            for k, v in enumerate(vals):
                bh = (math.log10(v) / top) * h
                parts.append(f'<rect x="{x0 + k * 38}" y="{y0 + h - bh:.1f}" width="30" height="{bh:.1f}" fill="#1f77b4"/>')
    body = "\n".join(parts)
    with open(os.path.join(DOCS, "hardware_report.svg"), "w") as fh:
        fh.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(metrics) * w + 20}" height="{len(results) * (h + 40) + 40}">{body}</svg>')


if __name__ == "__main__":
    main()
