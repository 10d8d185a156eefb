"""``emulate``: training steps through the accelerator model and through the engine, every
integer compared, with the accelerator's cycles, MACs and bytes (CONTRACT: edgedfa emulate).

Batches: step ``s`` (0-based) uses training samples ``s*B .. (s+1)*B - 1`` in file order
(the first ``steps*B`` samples), ``B`` the checkpoint's batch size. The optimizer step
counter continues from the checkpoint (``progress.step``) and the learning-rate shift is
the one of the checkpoint's next epoch, exactly as a resumed run would use them.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np

from edgedfa.errors import EdgeDFAError

from .accounting import PHASES
from .controller import Controller, plan_dicts
from .datapath import T
from .hwconfig import HwConfig, hw_config
from .requant_unit import from_float

FIGURES = ("cycles", "macs", "adds", "onchip_read_bytes", "onchip_write_bytes", "offchip_bytes",
           "feedback_bytes", "prng_words", "lut_lookups", "state_bytes")


# ---------------------------------------------------------------- engine side (reference)
def _qt_list(y):
    return list(y) if isinstance(y, (list, tuple)) and not hasattr(y, "codes") else [y]


def _hook_engine(trainer, trace: dict, prefix_ref: list) -> None:
    """Wrap the engine copy's layers and projectors (instance attributes) to record integers."""
    model = trainer.model
    for node, layer in zip(model.graph.nodes, model.layers):
        def fwd(xs, train=False, _f=layer.forward, _n=node):
            y, cache = _f(xs, train)
            outs = [y] if getattr(layer_of[_n.name], "n_outputs", 1) == 1 else list(y)
            for o, t in zip(_n.outputs, outs):
                if o and t is not None:
                    trace[prefix_ref[0] + f"fwd/{_n.name}/{o}"] = t
            return y, cache

        def bwd(cache, dy, need, _f=layer.backward, _n=node):
            dys = dy if isinstance(dy, list) else [dy]
            for i, d in enumerate(dys):
                if d is not None:
                    trace[prefix_ref[0] + f"dy/{_n.name}/{i}"] = d
            dxs, g = _f(cache, dy, need)
            for p, gt in (g or {}).items():
                trace[prefix_ref[0] + f"grad/{_n.name}/{p}"] = gt
            for t, dx, nd in zip([i for i in _n.inputs if i], dxs, need):
                if dx is not None and nd:
                    trace[prefix_ref[0] + f"dx/{_n.name}/{t}"] = dx
            return dxs, g

        layer.forward, layer.backward = fwd, bwd
    layer_of = {n.name: l for n, l in zip(model.graph.nodes, model.layers)}
    for mname, entry in trainer.projectors.items():
        target, proj = entry if isinstance(entry, tuple) else (None, entry)
        def project(e, err_bits, rounding, acc_bits=32, _f=proj.project, _m=mname):
            d = _f(e, err_bits, rounding, acc_bits)
            trace[prefix_ref[0] + f"src/{_m}"] = e  # the source error: e, or a tensor's (error_from)
            trace[prefix_ref[0] + f"proj/{_m}"] = d
            return d

        proj.project = project


def _same(a, b) -> tuple:
    """(equal, detail) of two tensors: codes, fraction bits."""
    ca, cb = np.asarray(a.codes), np.asarray(b.codes)
    if ca.shape != cb.shape:
        return False, {"reason": "shape", "hdl": list(ca.shape), "engine": list(cb.shape)}
    if a.fmt.frac_bits != b.fmt.frac_bits:
        return False, {"reason": "format", "hdl": str(a.fmt), "engine": str(b.fmt)}
    diff = np.argwhere(ca != cb)
    if len(diff):
        i = tuple(int(v) for v in diff[0])
        return False, {"reason": "value", "index": list(i), "hdl": int(ca[i]), "engine": int(cb[i]),
                       "mismatches": int(len(diff))}
    return True, {}


def compare(hdl: dict, eng: dict) -> dict:
    """Walk the accelerator's tensors in the order it produced them; first mismatch wins."""
    checked = 0
    for key, t in hdl.items():
        if key.endswith("error/e") and key not in eng:
            continue  # a trace without e: e is still compared as the last layer's dy
        if key not in eng:
            return {"bit_exact": False, "checked": checked, "first_mismatch": {"tensor": key, "reason": "not produced by the engine"}}
        ok, detail = _same(t, eng[key])
        checked += 1
        if not ok:
            parts = key.split("/")
            return {"bit_exact": False, "checked": checked,
                    "first_mismatch": {"tensor": key, "step": parts[0], "kind": parts[1],
                                       "layer": parts[2] if len(parts) > 2 else None, **detail}}
    return {"bit_exact": True, "checked": checked, "first_mismatch": None}


# ---------------------------------------------------------------- the run
def _load(model_or_path, train_cfg, modules):
    from edgedfa.checkpoint import model_from_checkpoint, read_checkpoint, train_config_from_meta
    from edgedfa.train import TrainConfig

    if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
        ck = read_checkpoint(str(model_or_path))
        model = model_from_checkpoint(ck)
        meta = ck["meta"]
        cfg = train_cfg or train_config_from_meta(meta)
        return model, cfg, modules or ck.get("modules"), int(meta["progress"]["step"]), int(meta["progress"]["epoch"])
    model = model_or_path
    meta = getattr(model, "checkpoint_meta", None)
    if meta and train_cfg is None:
        return model, train_config_from_meta(meta), modules, int(meta["progress"]["step"]), int(meta["progress"]["epoch"])
    return model, train_cfg or TrainConfig(), modules, 0, 0


def emulate(model_or_path, x, y, steps: int = 1, hw: HwConfig | dict | None = None, *,
            train_cfg=None, modules=None, compare_engine: bool = True) -> dict:
    """Run ``steps`` training steps through hdl_models and the engine; the report dict."""
    from edgedfa.api import make_trainer

    model, cfg, modules, step0, epoch = _load(model_or_path, train_cfg, modules)
    hw = hw if isinstance(hw, HwConfig) else hw_config(hw)
    if model.in_fmt is None:
        raise EdgeDFAError("emulate: the model is not calibrated (no input format)")
    steps = int(steps)
    if steps < 1:
        raise EdgeDFAError(f"--steps {steps}: must be >= 1")
    B = int(cfg.batch_size)
    x = model.reshape_input(x, "emulate data")
    y = np.asarray(y).astype(np.int64)
    if len(x) < B:
        raise EdgeDFAError(f"emulate: {len(x)} samples, fewer than one batch of {B}")
    engine_model = copy.deepcopy(model)
    trainer = make_trainer(engine_model, cfg, modules)
    ctl = Controller(model, plan_dicts(trainer.plan), hw)  # own copies of the parameters
    lr_shift = cfg.shift_at(epoch)
    hdl_trace, eng_trace, prefix = {}, {}, [""]
    if compare_engine:
        _hook_engine(trainer, eng_trace, prefix)
    ledgers, t_hdl, t_eng = [], 0.0, 0.0
    for s in range(steps):
        lo = (s * B) % max(len(x) - B + 1, 1)
        xb, yb = x[lo:lo + B], y[lo:lo + B]
        prefix[0] = f"{s}/"
        t0 = time.perf_counter()
        xq = T(from_float(xb, model.in_fmt), model.in_fmt)
        sub = {}
        _, _, led = ctl.step(xq, yb, step0 + s, lr_shift, sub, cfg.shift_at(0))
        hdl_trace.update({f"{s}/{k}": v for k, v in sub.items()})
        t_hdl += time.perf_counter() - t0
        ledgers.append(led)
        if compare_engine:
            t0 = time.perf_counter()
            xe = engine_model.quantize_input(xb)
            eng_trace[f"{s}/fwd/input"] = xe
            _, e_eng = trainer.step(xe, yb, step0 + s, lr_shift)
            eng_trace[f"{s}/error/e"] = e_eng
            t_eng += time.perf_counter() - t0
            for layer in engine_model.layers:
                for p, t in layer.params.items():
                    if layer.trainable:
                        eng_trace[f"{s}/param/{layer.name}/{p}"] = t
            # parameters change in place: snapshot this step's values
            eng_trace.update({k: type(v)(np.array(v.codes), v.fmt) for k, v in eng_trace.items() if k.startswith(f"{s}/param/")})
    report = accounting_report(ctl, ledgers, hw)
    report.update({"steps": steps, "batch_size": B, "algo": cfg.algo, "first_step": step0, "lr_shift": lr_shift,
                   "plan": ctl.modules, "seconds_hdl": t_hdl, "seconds_engine": t_eng})
    if compare_engine:
        report.update(compare(hdl_trace, eng_trace))
    else:
        report.update({"bit_exact": None, "checked": 0, "first_mismatch": None})
    return report


def accounting_report(ctl: Controller, ledgers: list, hw: HwConfig) -> dict:
    rows, order = {}, []
    cycles = 0
    for led in ledgers:
        cycles += max((t.finish for t in led.tasks), default=0)
        for r in led.per_layer_phase():
            key = (r["layer"], r["phase"])
            if key not in rows:
                rows[key] = {"layer": r["layer"], "phase": r["phase"], **{f: 0 for f in FIGURES}, "pe_busy": 0}
                order.append(key)
            agg = rows[key]
            agg["cycles"] += r["busy_cycles"]
            for f in FIGURES[1:]:
                agg[f] += r[f]
            agg["pe_busy"] += r["pe_busy"]
    pes = hw.rows * hw.cols
    layers = []
    for key in sorted(order, key=lambda k: (PHASES.index(k[1]), order.index(k))):
        r = rows[key]
        r["onchip_bytes"] = r["onchip_read_bytes"] + r["onchip_write_bytes"]
        r["pe_utilization"] = r.pop("pe_busy") / (r["cycles"] * pes) if r["cycles"] else 0.0
        r["seconds_at_clock"] = r["cycles"] / (hw.clock_mhz * 1e6)
        layers.append(r)
    tot = {f: sum(r[f] for r in layers) for f in FIGURES[1:]}
    busy = sum(t.cost.pe_busy for led in ledgers for t in led.tasks)
    phase_tot = {p: {f: sum(r[f] for r in layers if r["phase"] == p) for f in FIGURES + ("onchip_bytes",)}
                 for p in PHASES}
    return {"cycles": int(cycles), "busy_cycles": int(sum(r["cycles"] for r in layers)),
            "cycles_per_step": cycles / max(len(ledgers), 1), **{k: int(v) for k, v in tot.items()},
            "onchip_bytes": int(tot["onchip_read_bytes"] + tot["onchip_write_bytes"]),
            "clock_mhz": hw.clock_mhz, "seconds_at_clock": cycles / (hw.clock_mhz * 1e6),
            "pe_utilization": busy / (cycles * (hw.rows * hw.cols)) if cycles else 0.0,
            "phases": phase_tot, "layers": layers, "hardware": hw.as_dict(),
            "feedback_memory_bytes": ctl.feedback_memory_bytes(),
            "buffers": {k: b.describe() for k, b in ctl.acc.buffers.items()},
            "offchip_tensors": sorted(ctl.acc.offchip_tensors)}


# ---------------------------------------------------------------- command line
def _fmt_int(v) -> str:
    return f"{int(v):,}"


def table(report: dict) -> str:
    head = f"{'layer':<12} {'phase':<8} {'cycles':>10} {'MACs':>12} {'adds':>9} {'on-chip B':>11} {'off-chip B':>11} {'PE util':>7}"
    lines = [head, "-" * len(head)]
    for r in report["layers"]:
        lines.append(f"{r['layer']:<12} {r['phase']:<8} {_fmt_int(r['cycles']):>10} {_fmt_int(r['macs']):>12} "
                     f"{_fmt_int(r['adds']):>9} {_fmt_int(r['onchip_bytes']):>11} {_fmt_int(r['offchip_bytes']):>11} "
                     f"{r['pe_utilization']:>7.1%}")
    lines.append("-" * len(head))
    for p, v in report["phases"].items():
        lines.append(f"{'all':<12} {p:<8} {_fmt_int(v['cycles']):>10} {_fmt_int(v['macs']):>12} {_fmt_int(v['adds']):>9} "
                     f"{_fmt_int(v['onchip_bytes']):>11} {_fmt_int(v['offchip_bytes']):>11}")
    hw = report["hardware"]
    lines.append(f"step total (scheduled, units overlapped): {_fmt_int(report['cycles'])} cycles"
                 f" over {report['steps']} step(s) = {report['seconds_at_clock'] * 1e6:.1f} us at {report['clock_mhz']:g} MHz"
                 f" on a {hw['array']} array; busy sum {_fmt_int(report['busy_cycles'])}; PE utilisation {report['pe_utilization']:.1%}")
    fm = report["first_mismatch"]
    verdict = "bit-exact" if report["bit_exact"] else f"MISMATCH at {fm}"
    lines.append(f"engine comparison: {verdict} ({report['checked']} tensors compared)")
    return "\n".join(lines)


def emulate_cli(args) -> int:
    from edgedfa.checkpoint import read_checkpoint
    from edgedfa.cli import _dataset
    from edgedfa.config import load_config

    table_cfg = load_config(args.config).get("hardware", {}) if getattr(args, "config", None) else {}
    hw = hw_config(table_cfg, getattr(args, "array", None), getattr(args, "clock_mhz", None))
    ck = read_checkpoint(args.checkpoint)
    ds = _dataset(args, recorded=ck["meta"].get("dataset"))
    report = emulate(args.checkpoint, ds.x_train, ds.y_train, args.steps, hw)
    print(table(report))
    if getattr(args, "json", None):
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=_json_default)
    return 0


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
