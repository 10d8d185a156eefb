"""Driver and monitor: one model set up for the engine and for the accelerator, the same batch
fed to both, and the engine's integers recorded under the accelerator's trace keys."""

from __future__ import annotations

import copy

from hdl_models.controller import Controller
from hdl_models.layers import T
from hdl_models.requant_unit import from_float

from ..api import make_trainer


def plan_dicts(plan) -> list:
    """The engine's credit plan (edgedfa.credit.Plan) as the plain dicts the controller reads."""
    out = []
    for m in plan.modules:
        fb = None
        if m.feedback is not None:
            f = m.feedback
            fb = {"kind": f.kind, "values": f.values, "k": int(f.k), "bits": int(f.bits),
                  "regenerate": bool(f.regenerate), "options": dict(f.options)}
        out.append({"name": m.name, "nodes": list(m.nodes), "source": m.source, "feedback": fb,
                    "target": getattr(m, "target", None), "error_from": getattr(m, "error_from", None),
                    "layer_options": {k: dict(v) for k, v in getattr(m, "layer_options", {}).items()}})
    return out


class CoSim:
    """``model`` twice: the engine on a deep copy with its Trainer, the accelerator model
    (``ctl``, its own copies of the parameters) under the same credit plan."""

    def __init__(self, model, cfg, modules=None, hw=None):
        self.model = model
        self.engine_model = copy.deepcopy(model)
        self.trainer = make_trainer(self.engine_model, cfg, modules)
        self.cfg = self.trainer.cfg  # every default resolved for the model's numerics
        self.ctl = Controller(model, plan_dicts(self.trainer.plan), hw)

    def hdl_input(self, xb) -> T:
        """The host's conversion of a float batch for the accelerator (§2, its input stage, then from floats)."""
        return T(from_float(self.ctl.host_input(xb), self.model.in_fmt), self.model.in_fmt)

    def hdl_step(self, xb, yb, step: int, lr_shift: int, trace: dict | None = None):
        """One training step on the accelerator; its Ledger."""
        _, _, ledger = self.ctl.step(self.hdl_input(xb), yb, step, lr_shift, trace, self.cfg.shift_at(0),
                                     self.cfg.lr_shift)
        return ledger

    def engine_step(self, xb, yb, step: int, lr_shift: int):
        """One training step of the engine; (quantized input, output error)."""
        xq = self.engine_model.quantize_input(xb)
        _, e = self.trainer.step(xq, yb, step, lr_shift)
        return xq, e

    def monitor(self, trace: dict, prefix: list) -> None:
        """Record the engine's integers into ``trace`` under ``prefix[0]`` + the accelerator's keys."""
        _monitor_layers(self.trainer.model, trace, prefix)
        _monitor_projectors(self.trainer.projectors, trace, prefix)


def _monitor_layers(model, trace: dict, prefix: list) -> None:
    """Wrap the layers' forward and backward (instance attributes) to record what they compute."""
    for node, layer in zip(model.graph.nodes, model.layers):
        def fwd(xs, train=False, _f=layer.forward, _n=node, _l=layer):
            y, cache = _f(xs, train)
            outs = [y] if getattr(_l, "n_outputs", 1) == 1 else list(y)
            for o, t in zip(_n.outputs, outs):
                if o and t is not None:
                    trace[prefix[0] + f"fwd/{_n.name}/{o}"] = t
            return y, cache

        def bwd(cache, dy, need, _f=layer.backward, _n=node):
            dys = dy if isinstance(dy, list) else [dy]
            for i, d in enumerate(dys):
                if d is not None:
                    trace[prefix[0] + f"dy/{_n.name}/{i}"] = d
            dxs, g = _f(cache, dy, need)
            for p, gt in (g or {}).items():
                trace[prefix[0] + f"grad/{_n.name}/{p}"] = gt
            for t, dx, nd in zip([i for i in _n.inputs if i], dxs, need):
                if dx is not None and nd:
                    trace[prefix[0] + f"dx/{_n.name}/{t}"] = dx
            return dxs, g

        layer.forward, layer.backward = fwd, bwd


def _monitor_projectors(projectors: dict, trace: dict, prefix: list) -> None:
    """Wrap every DFA projector to record its source error and its projection."""
    for mname, (_, proj) in projectors.items():
        def project(e, err_bits, rounding, acc_bits=32, _f=proj.project, _m=mname):
            d = _f(e, err_bits, rounding, acc_bits)
            trace[prefix[0] + f"src/{_m}"] = e  # the source error: e, or a tensor's (error_from)
            trace[prefix[0] + f"proj/{_m}"] = d
            return d

        proj.project = project
