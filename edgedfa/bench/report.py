"""The bench report as markdown tables (for docs/benchmarks.md) and as JSON."""

from __future__ import annotations

import json


def _n(v, digits=0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _sps(entry: dict | None) -> float | None:
    return None if not entry or "error" in entry else entry.get("samples_per_second")


def training_table(rows: list, algos: list) -> list:
    head = ["workload"] + [f"edgedfa int8 `{a}`" for a in algos] + ["PyTorch float32 BP (threads)"]
    head += [f"`{a}` / PyTorch" for a in algos] + ["engine step peak alloc (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        torch = r.get("torch") or {}
        t = _sps(torch)
        tcell = f"{_n(t)} ({torch['threads']})" if t else torch.get("error", "—")
        cells = [r["title"] + (f" (batch {r['batch']})" if r["workload"].startswith("digits") and "batch" in r else "")]
        cells += [_n(_sps(r["engine"].get(a))) if "error" not in r["engine"].get(a, {}) else "error" for a in algos]
        cells += [tcell] + [_n((r["engine"].get(a) or {}).get("ratio_to_torch"), 2) for a in algos]
        allocs = [e.get("step_peak_alloc_bytes") for e in r["engine"].values() if "step_peak_alloc_bytes" in e]
        cells.append(_n(max(allocs) / 2**20, 1) if allocs else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def route_table(rows: list, algos: list) -> list:
    """Samples/s with and without the int8 route, measured interleaved (same engine, same bits)."""
    lines = ["| workload | " + " | ".join(f"`{a}` with / without (speed-up)" for a in algos) + " |",
             "|---|" + "---|" * len(algos)]
    for r in rows:
        cells = []
        for a in algos:
            e = r["engine"].get(a) or {}
            wo = e.get("without_int8_route")
            cells.append(f"{_n(e['samples_per_second'])} / {_n(wo['samples_per_second'])} ({wo['speedup']:.2f}x)"
                         if wo else "—")
        lines.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    return lines


def gemm_table(rows: list) -> list:
    lines = ["| M x K x N | threads | `kernels.gemm` int8 operands, acc32 wrap | acc32 sat | int64 operands |"
             " without the int8 route | onnxruntime `MatMulInteger` u8 x s8 | ratio | ratio (int64 operands) |"
             " bit-exact |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {' x '.join(map(str, r['shape']))} | {r['threads']} | {_n(r['gemm'])} GOP/s | "
                     f"{_n(r['gemm_sat'])} | {_n(r['gemm_int64'])} | {_n(r['gemm_without_int8_route'])} | "
                     f"{_n(r['onnxruntime'])} GOP/s | **{r['ratio']:.2f}** | {r['ratio_int64']:.2f} | "
                     f"{'yes' if r['bit_exact'] else 'NO'} |")
    return lines


def emulate_table(rows: list) -> list:
    lines = ["| workload | algorithm | engine ms/step | `edgedfa emulate` ms/step | emulate / engine | bit-exact |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        em = r.get("emulate")
        if not em:
            continue
        if "error" in em:
            lines.append(f"| {r['title']} | {em.get('algo', '—')} | | error: {em['error']} | | |")
            continue
        eng = em.get("engine_seconds_per_step")
        lines.append(f"| {r['title']} | `{em['algo']}` | {_n(eng and eng * 1e3, 1)} | {_n(em['seconds_per_step'] * 1e3, 1)}"
                     f" | {_n(em['ratio'], 2)} | {'yes' if em['bit_exact'] else 'NO'} |")
    return lines


def cold_start_table(rows: list) -> list:
    lines = ["| command (empty `NUMBA_CACHE_DIR`) | first run s | second run s | compiling s |", "|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['command']}` | error: {r['error']} | | |")
        else:
            lines.append(f"| `{r['command']}` | {r['cold_seconds']:.1f} | {r['warm_seconds']:.1f} |"
                         f" **{r['compile_seconds']:.1f}** |")
    return lines


def markdown(report: dict) -> str:
    """Every table of the report, with the machine and the load it ran under."""
    m = report["machine"]
    flags = f" ({', '.join(m['cpu_int8_flags'])})" if m.get("cpu_int8_flags") else ""
    where = f"edgedfa {m.get('edgedfa')} from {m['edgedfa_path']}" if m.get("edgedfa_path") else ""
    where += f" (commit {m['edgedfa_commit']})" if m.get("edgedfa_commit") else ""
    out = [f"`{report['command']}` — {where + '; ' if where else ''}{m['cpu']}{flags}, {m['cores']} cores;"
           f" Python {m['python']}, numpy {m['numpy']},"
           f" numba {m['numba']} ({m['numba_threads']} threads), onnxruntime {m['onnxruntime']},"
           f" PyTorch {m['torch'] or 'not installed'}; int8 route: {m['int8_route']} ({m['int8_route_threads']}"
           f" thread(s)); load average {report['load_average_before'][0]:.1f} before,"
           f" {report['load_average_after'][0]:.1f} after; {report['seconds']:.0f} s in all.", ""]
    opts = report["options"]
    if any(r["engine"] for r in report.get("training", [])) and "train" in opts["sections"]:
        apart = "; PyTorch timed in a process of its own" if any(_sps(r.get("torch")) for r in report["training"]) else ""
        out += [f"Training throughput, samples/s (median of {opts['repeats']} timed repeats after warm-up{apart}):", ""]
        out += training_table(report["training"], opts["algos"]) + [""]
    if opts.get("compare_route") and report.get("training"):
        out += ["The int8 route on and off, interleaved in the same run:", ""]
        out += route_table(report["training"], opts["algos"]) + [""]
    if report.get("gemm"):
        out += ["Integer GEMM, GOP/s (2·M·K·N per call, median of the repeats):", ""] + gemm_table(report["gemm"]) + [""]
    if any("emulate" in r for r in report.get("training", [])):
        out += ["Emulator against engine, time per training step:", ""] + emulate_table(report["training"]) + [""]
    if report.get("cold_start"):
        out += ["Cold start:", ""] + cold_start_table(report["cold_start"]) + [""]
    out.append(f"Peak resident memory of the bench process: {report['peak_rss_bytes'] / 2**20:,.0f} MB.")
    return "\n".join(out) + "\n"


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=float)
