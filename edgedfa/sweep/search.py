"""Configurations beyond the grid: random draws and Optuna's model-based search.

Both are deterministic: draw ``i`` of a random search depends only on the sampler seed and
``i``; the Optuna search asks ``batch`` configurations per round and tells their results in
the order it asked, so the sequence does not depend on which worker finished first, and a
restarted search replays it, reading finished trials from the results file.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDFAError
from .spec import Spec, plan

INSTALL_OPTUNA = 'method = "optuna" needs Optuna: pip install "edgedfa[optuna]"'


def random_points(spec: Spec) -> list:
    """``spec.trials`` configurations, each axis drawn independently (uniform; log-uniform on request)."""
    return [{a.name: _draw(a, np.random.default_rng([spec.sampler_seed, i, k])) for k, a in enumerate(spec.axes)}
            for i in range(spec.trials)]


def _draw(axis, rng):
    if not axis.is_range:
        return axis.labels[int(rng.integers(len(axis.labels)))]
    lo, hi = axis.low, axis.high
    if axis.integer:
        if axis.log:
            return int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))))
        return int(rng.integers(lo, hi + 1))
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if axis.log else float(rng.uniform(lo, hi))


def _distributions(spec: Spec) -> dict:
    import optuna.distributions as d

    out = {}
    for a in spec.axes:
        if not a.is_range:
            out[a.name] = d.CategoricalDistribution(list(range(len(a.labels))))  # by index: labels may be lists
        elif a.integer:
            out[a.name] = d.IntDistribution(a.low, a.high, log=a.log)
        else:
            out[a.name] = d.FloatDistribution(float(a.low), float(a.high), log=a.log)
    return out


def _point(spec: Spec, params: dict) -> dict:
    return {a.name: params[a.name] if a.is_range else a.labels[params[a.name]] for a in spec.axes}


def optuna_search(spec: Spec, run_batch, log=print):
    """Ask, run every seed of each configuration, tell the mean objective; returns the study."""
    try:
        import optuna
    except ImportError:
        raise EdgeDFAError(INSTALL_OPTUNA) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)  # reads the constraints each trial sets
    study = optuna.create_study(direction="maximize" if spec.objective.direction == "max" else "minimize",
                                sampler=sampler)
    dists, asked = _distributions(spec), 0
    while asked < spec.trials:
        asks = [study.ask(dists) for _ in range(min(spec.batch, spec.trials - asked))]
        groups = [plan(spec, [_point(spec, t.params)]) for t in asks]
        rows = run_batch([trial for g in groups for trial in g])
        for ask, group in zip(asks, groups):
            _tell(study, ask, [rows.get(t["fingerprint"]) for t in group], spec)
        asked += len(asks)
    return study


def _tell(study, ask, rows: list, spec: Spec) -> None:
    import optuna

    values = [r.get(spec.objective.field) if r else None for r in rows]
    if any(v is None for v in values):  # a failed trial, or a figure the trial did not measure
        study.tell(ask, state=optuna.trial.TrialState.FAIL)
        return
    for c in spec.constraints:
        ask.set_constraint(str(c), float(np.mean([c.excess(r) for r in rows])))
    study.tell(ask, float(np.mean(values)))
