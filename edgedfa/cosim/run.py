"""``emulate``: training steps through the accelerator model and through the engine, every
integer compared, with the accelerator's cycles, MACs and bytes (behind ``edgedfa emulate``).

Batches: step ``s`` (0-based) uses training samples ``s*B .. (s+1)*B - 1`` in file order
(the first ``steps*B`` samples), ``B`` the checkpoint's batch size. The optimizer step
counter continues from the checkpoint (``progress.step``) and the learning-rate shift is
the one of the checkpoint's next epoch, exactly as a resumed run would use them.
"""

from __future__ import annotations

import json
import time

import numpy as np

from hdl_models.accounting import Totals
from hdl_models.hwconfig import HwConfig, hw_config

from ..checkpoint import model_from_checkpoint, read_checkpoint, train_config_from_meta
from ..errors import EdgeDFAError
from ..fixed import QTensor
from ..progress import Progress, Rate, bar
from ..train import TrainConfig
from .driver import CoSim
from .scoreboard import compare


def _load(model_or_path, train_cfg, modules):
    """(model, config, plan table, first step, epoch) from a checkpoint path or a model."""
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


def _batches(model, x, y, batch: int, steps: int):
    """The float input and labels of every step (file order, wrapping when short), one at a time."""
    if steps < 1:
        raise EdgeDFAError(f"--steps {steps}: must be >= 1")
    x = model.reshape_input(x, "emulate data")
    y = np.asarray(y).astype(np.int64)
    if len(x) < batch:
        raise EdgeDFAError(f"emulate: {len(x)} samples, fewer than one batch of {batch}")
    span = max(len(x) - batch + 1, 1)
    return ((x[lo:lo + batch], y[lo:lo + batch]) for lo in ((s * batch) % span for s in range(steps)))


def emulate(model_or_path, x, y, steps: int = 1, hw: HwConfig | dict | None = None, *,
            train_cfg=None, modules=None, compare_engine: bool = True, quiet: bool = True) -> dict:
    """Run ``steps`` training steps through hdl_models and the engine; the report dict.

    Each step's integers are compared as soon as both sides have made them and then dropped,
    and its costs are folded into running totals: memory does not grow with ``steps``."""
    model, cfg, modules, step0, epoch = _load(model_or_path, train_cfg, modules)
    hw = hw if isinstance(hw, HwConfig) else hw_config(hw)
    if model.in_fmt is None:
        raise EdgeDFAError("emulate: the model is not calibrated (no input format)")
    batches = _batches(model, x, y, int(cfg.batch_size), int(steps))
    sim = CoSim(model, cfg, modules, hw)
    cfg = sim.cfg
    lr_shift = cfg.shift_at(epoch)
    eng_trace, prefix = {}, [""]
    if compare_engine:
        sim.monitor(eng_trace, prefix)
    totals, seconds = Totals(), {"hdl": 0.0, "engine": 0.0}
    verdict = {"bit_exact": True, "checked": 0, "first_mismatch": None} if compare_engine else \
        {"bit_exact": None, "checked": 0, "first_mismatch": None}
    pbar, rate = Progress(quiet), Rate(int(steps), "steps")
    for s, (xb, yb) in enumerate(batches):
        prefix[0] = f"{s}/"
        hdl = _timed(seconds, "hdl", lambda: _hdl_step(sim, xb, yb, step0 + s, lr_shift, totals, s))
        if compare_engine:
            _timed(seconds, "engine", lambda: _engine_step(sim, eng_trace, xb, yb, step0 + s, lr_shift, s))
            _score(verdict, hdl, eng_trace)
            eng_trace.clear()
        pbar.update(f"emulate step {s + 1}/{steps} {bar((s + 1) / steps)} {rate.text(s + 1)}", final=s + 1 == steps)
    report = sim.ctl.report(totals)
    report.update({"steps": totals.steps, "batch_size": int(cfg.batch_size), "algo": cfg.algo, "first_step": step0,
                   "lr_shift": lr_shift, "plan": sim.ctl.modules, "seconds_hdl": seconds["hdl"],
                   "seconds_engine": seconds["engine"], **verdict})
    return report


def _timed(seconds: dict, key: str, work):
    t0 = time.perf_counter()
    out = work()
    seconds[key] += time.perf_counter() - t0
    return out


def _hdl_step(sim, xb, yb, step, lr_shift, totals, s) -> dict:
    """One accelerator step; its trace under the step's prefix (its costs go to ``totals``)."""
    sub = {}
    totals.add(sim.hdl_step(xb, yb, step, lr_shift, sub))
    return {f"{s}/{k}": v for k, v in sub.items()}


def _engine_step(sim, trace, xb, yb, step, lr_shift, s) -> None:
    trace[f"{s}/fwd/input"], trace[f"{s}/error/e"] = sim.engine_step(xb, yb, step, lr_shift)
    trace.update(_parameters(sim.engine_model, s))


def _score(verdict: dict, hdl: dict, eng: dict) -> None:
    """Compare one step (until the first mismatch of the run: it is the one reported)."""
    if verdict["first_mismatch"] is not None:
        return
    r = compare(hdl, eng)
    verdict.update(checked=verdict["checked"] + r["checked"], bit_exact=r["bit_exact"],
                   first_mismatch=r["first_mismatch"])


def _parameters(model, s: int) -> dict:
    """A snapshot of the trained parameters and of the managed formats after step ``s``
    (they change in place)."""
    snap = {f"{s}/param/{layer.name}/{p}": type(t)(np.array(t.codes), t.fmt)
            for layer in model.layers if layer.trainable for p, t in layer.params.items()}
    for layer in model.layers:
        for key, fmt in layer.managed_formats().items():
            snap[f"{s}/fmt/{layer.name}/{key}"] = QTensor(np.zeros(0, np.int64), fmt)
    return snap


# ---------------------------------------------------------------- printing
def _fmt_int(v) -> str:
    return f"{int(v):,}"


def table(report: dict) -> str:
    """The report as the text ``edgedfa emulate`` prints."""
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


def report_json(report: dict) -> str:
    """The report as the JSON ``edgedfa emulate --json`` writes."""
    return json.dumps(report, indent=2, default=_json_default)


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
