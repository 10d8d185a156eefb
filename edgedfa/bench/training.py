"""Training throughput of a workload: the engine under each algorithm against PyTorch
float32 BP (interleaved repeats, best of 1 and 2 threads), the engine's allocations in a
step, and ``edgedfa emulate``'s time per step."""

from __future__ import annotations

import tracemalloc

from ..errors import EdgeDFAError
from ..kernels import onnxrt
from . import timing, torch_ref
from .workloads import Workload, dataset, engine, graph


def step_allocation(eng, step: int) -> int:
    """Peak bytes allocated on the Python heap (numpy arrays included) during one step."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        eng.step(step)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def emulate_row(eng, ds, steps: int = 3) -> dict:
    """``edgedfa emulate``: seconds per step through hdl_models after a warm-up step (as the
    engine's figure is taken warm), and whether every integer matched."""
    from ..cosim.run import emulate

    n = steps * eng.batch
    run = dict(train_cfg=eng.settings.train, modules=eng.settings.modules)
    try:
        emulate(eng.model, ds.x_train[:eng.batch], ds.y_train[:eng.batch], 1, None, compare_engine=False, **run)
        rep = emulate(eng.model, ds.x_train[:n], ds.y_train[:n], steps, None, compare_engine=True, **run)
    except EdgeDFAError as exc:
        return {"error": str(exc)}
    return {"seconds_per_step": rep["seconds_hdl"] / rep["steps"], "bit_exact": bool(rep["bit_exact"]),
            "steps": rep["steps"]}


def _engines(w: Workload, algos, ds) -> tuple:
    """({algo: Engine}, {algo: error}) for the algorithms that build on this workload."""
    engines, errors = {}, {}
    for algo in algos:
        try:
            engines[algo] = engine(w, algo, ds)
        except EdgeDFAError as exc:
            errors[algo] = {"error": str(exc)}
    return engines, errors


def _torch_sides(w, ds, batch, child) -> tuple:
    """(PyTorch sides, None) or ({}, why there are none); ``child``: the bench's
    ``torch_ref.Child``, or None when the column is not measured."""
    if child is None:
        return {}, "not measured"
    if torch_ref.version() is None:
        return {}, "not installed"
    try:
        g = graph(w, ds)
        return child.sides(g, ds.x_train.reshape((len(ds.x_train),) + tuple(g.input_shape)), ds.y_train,
                           batch), None
    except EdgeDFAError as exc:
        return {}, str(exc)


def _route(on: bool):
    return lambda: onnxrt.enable(on)


def _interleaved(sides: dict, torch_sides: dict, repeats: int, target: float) -> tuple:
    """(timings, PyTorch sides, why there are none): a PyTorch child that fails mid-way drops
    its column, and the engine's sides are timed again without it."""
    try:
        return timing.interleaved(sides | torch_sides, repeats, target), torch_sides, None
    except torch_ref.ChildError as exc:
        return timing.interleaved(sides, repeats, target), {}, str(exc)


def _measure(engines: dict, torch_sides: dict, repeats: int, target: float, int8_route: bool,
             compare_route: bool) -> tuple:
    """(engine rows by algorithm, the PyTorch row or None, why there is none), from one
    interleaved run; with ``compare_route`` each algorithm also runs without the int8 route
    (same engine, same bits)."""
    sides = {a: timing.Side(e.step, _route(int8_route)) for a, e in engines.items()}
    if compare_route:
        sides |= {f"{a} without int8": timing.Side(e.step, _route(False)) for a, e in engines.items()}
    try:
        t, torch_sides, why = _interleaved(sides, torch_sides, repeats, target)
    finally:
        onnxrt.enable(int8_route)
    batch = next(iter(engines.values())).batch
    rows = {a: timing.throughput(t[a], batch) for a in engines}
    for a in engines if compare_route else ():
        rows[a]["without_int8_route"] = dict(timing.throughput(t[f"{a} without int8"], batch),
                                             speedup=timing.speedup(t[a], t[f"{a} without int8"]))
    if not torch_sides:
        return rows, None, why
    best = min(torch_sides, key=lambda s: t[s]["seconds"])
    for a in engines:
        rows[a]["ratio_to_torch"] = timing.speedup(t[a], t[best])
    torch_row = dict(timing.throughput(t[best], batch), threads=int(best.split("-")[1]),
                     per_threads={s.split("-")[1]: timing.throughput(t[s], batch) for s in torch_sides})
    return rows, torch_row, None


def workload_row(w: Workload, algos, repeats: int, target: float, torch_child, with_emulate: bool,
                 int8_route: bool = True, compare_route: bool = False) -> dict:
    """Every figure of one workload (``torch_child``: a ``torch_ref.Child`` that times the
    PyTorch column, or None for no column)."""
    ds = dataset(w)
    row = {"workload": w.name, "title": w.title, "data": ds.name}
    engines, errors = _engines(w, algos, ds)
    if not engines:
        return dict(row, engine=errors, torch={"error": "no engine ran"})
    batch = next(iter(engines.values())).batch
    torch_sides, why = _torch_sides(w, ds, batch, torch_child)
    rows, torch_row, failed = _measure(engines, torch_sides, repeats, target, int8_route, compare_route)
    if torch_row:
        torch_row["version"] = torch_child.version
    for algo, eng in engines.items():
        rows[algo]["step_peak_alloc_bytes"] = step_allocation(eng, 10**6)
    row.update(batch=batch, engine={a: rows.get(a) or errors[a] for a in algos}, torch=torch_row or {"error": failed or why})
    if with_emulate:
        algo, eng = next(iter(engines.items()))
        em = emulate_row(eng, ds)
        step = rows[algo]["step_seconds"]
        row["emulate"] = dict(em, algo=algo, engine_seconds_per_step=step,
                              ratio=em["seconds_per_step"] / step if "seconds_per_step" in em else None)
    return row
