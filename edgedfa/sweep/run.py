"""The sweep driver behind ``edgedfa sweep``: plan the trials, run the unfinished ones on an
executor, record each one as it finishes.

A sweep directory holds ``spec.toml`` (the spec it runs) and ``sweep.json`` (its digest),
``results.jsonl`` (one line per finished trial), ``results.csv`` (and ``results.parquet``
with pyarrow), ``errors.jsonl`` (trials that failed, retried by the next run) and
``trials/<fingerprint>/`` (each trial's run directory: checkpoint.npz, metrics.json,
emulate.json, trial.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..checkpoint import atomic_write
from ..errors import EdgeDFAError
from ..version import __version__
from .executors import LocalPool
from .results import FIGURES, RESULTS, TIMING, append_row, read_rows, write_csv, write_parquet
from .search import optuna_search, random_points
from .spec import Spec, grid_points, load_spec, plan

SWEEP_FILE = "sweep.json"
ERRORS = "errors.jsonl"
TRIALS = "trials"


@dataclass
class SweepResult:
    """What a sweep run did."""

    out_dir: str
    planned: int = 0
    reused: int = 0
    ran: int = 0
    failed: list = field(default_factory=list)  # (label, error)
    rows: list = field(default_factory=list)  # every finished row of the plan, in plan order
    seconds: float = 0.0
    executor: str = ""


def run_sweep(spec_path: str, out_dir: str, executor=None, log=print) -> SweepResult:
    """Run (or finish) the sweep ``spec_path`` describes into ``out_dir``; closes the executor."""
    with terminate_as_interrupt():  # from the first step to the last, not only while trials run
        return _run_sweep(spec_path, out_dir, executor, log)


def _run_sweep(spec_path: str, out_dir: str, executor, log) -> SweepResult:
    spec = load_spec(spec_path)
    if spec.method == "optuna":  # its trials are planned as it goes: check one now
        plan(spec, [{a.name: a.low if a.is_range else a.labels[0] for a in spec.axes}])
    else:
        trials = plan(spec, grid_points(spec) if spec.method == "grid" else random_points(spec))
    prepare_dir(out_dir, spec)
    t0 = time.perf_counter()
    with executor or LocalPool() as ex:
        sweep = _Sweep(spec, out_dir, log, ex)
        log(f"sweep {spec_path}: {sweep.describe_plan()}, on {ex.describe()}")
        if spec.method == "optuna":
            optuna_search(spec, sweep.run_batch, log)
        else:
            sweep.run_batch(trials)
    sweep.result.seconds = time.perf_counter() - t0
    sweep.result.rows = export(out_dir, sweep.order)
    return sweep.result


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM stops the sweep as Ctrl-C does: workers stopped, finished trials kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def prepare_dir(out_dir: str, spec: Spec) -> None:
    """A new sweep directory, or the one this spec ran in before (resumed)."""
    record = os.path.join(out_dir, SWEEP_FILE)
    if os.path.exists(record):
        with open(record) as fh:
            digest = json.load(fh).get("digest")
        if digest != spec.digest and read_rows(os.path.join(out_dir, RESULTS)):
            raise EdgeDFAError(f"-o {out_dir}: holds a sweep of another spec ({out_dir}/spec.toml); "
                               f"use another directory (changing only [sweep] trials resumes)")
        if digest == spec.digest:
            shutil.copyfile(spec.path, os.path.join(out_dir, "spec.toml"))  # [sweep] trials may have grown
            return
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        raise EdgeDFAError(f"-o {out_dir}: not empty and not a sweep directory")
    try:
        os.makedirs(os.path.join(out_dir, TRIALS), exist_ok=True)
    except OSError as exc:
        raise EdgeDFAError(f"-o {out_dir}: cannot create ({exc.strerror})") from None
    shutil.copyfile(spec.path, os.path.join(out_dir, "spec.toml"))
    atomic_write(record, json.dumps({"digest": spec.digest, "spec": os.path.abspath(spec.path),
                                     "edgedfa": __version__}, indent=2))


class _Sweep:
    def __init__(self, spec: Spec, out_dir: str, log, executor):
        self.spec, self.out, self.log, self.ex = spec, out_dir, log, executor
        self.done = {r["fingerprint"]: r for r in read_rows(os.path.join(out_dir, RESULTS))}
        self.order, self.result = {}, SweepResult(out_dir, executor=executor.describe())

    def describe_plan(self) -> str:
        s = self.spec
        n = s.trials if s.method != "grid" else len(grid_points(s))
        return (f"{n} configuration(s) x {len(s.seeds)} seed(s) by {s.method}, "
                f"{len(self.done)} trial(s) already in {self.out}/{RESULTS}")

    def run_batch(self, trials: list) -> dict:
        """Run the unfinished ``trials``; fingerprint -> row for every finished one of them."""
        todo = []
        for t in trials:
            fp = t["fingerprint"]
            if fp not in self.order:
                self.order[fp] = len(self.order)
                self.result.planned += 1
                if fp in self.done:
                    self.result.reused += 1
                else:
                    todo.append(t)
        for trial, result, error in self.ex.run(todo):
            if error is None:
                self._record(trial, result)
            else:
                self._fail(trial, error)
        return {t["fingerprint"]: self.done[t["fingerprint"]] for t in trials if t["fingerprint"] in self.done}

    def _record(self, trial: dict, result: dict) -> None:
        fp = trial["fingerprint"]
        run_dir = os.path.join(TRIALS, fp)
        write_run_dir(os.path.join(self.out, run_dir), result["files"])
        row = {"fingerprint": fp, "label": trial["label"], "point": trial["point"], "seed": trial["seed"],
               **{k: result["figures"].get(k) for k in FIGURES}, "run_dir": run_dir,
               **{k: result["timing"].get(k) for k in TIMING},
               "config": trial["settings"]}
        append_row(os.path.join(self.out, RESULTS), row)
        self.done[fp] = row
        self.result.ran += 1
        self.log(f"[{self.result.ran + self.result.reused}/{self.result.planned}] {trial['label']} seed {trial['seed']}: {_brief(row)}"
                 f" ({row['seconds']:.1f} s on {row['worker']})")

    def _fail(self, trial: dict, error: str) -> None:
        append_row(os.path.join(self.out, ERRORS), {"fingerprint": trial["fingerprint"], "label": trial["label"],
                                                    "seed": trial["seed"], "error": error,
                                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.result.failed.append((f"{trial['label']} seed {trial['seed']}", error))
        self.log(f"[failed] {trial['label']} seed {trial['seed']}: {error}")


def _brief(row: dict) -> str:
    parts = [f"test {row['test_accuracy']:.3f}"]
    if row.get("cycles_per_step") is not None:
        parts.append(f"{row['cycles_per_step']:,.0f} cycles/step")
    return ", ".join(parts)


def write_run_dir(path: str, files: dict) -> None:
    """A trial's run directory, all files at once (a directory renamed into place)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        for name, data in files.items():
            with open(os.path.join(tmp, os.path.basename(name)), "wb") as fh:
                fh.write(data)
        if os.path.exists(path):  # left by a run that stopped before recording the trial
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(out_dir: str, order: dict | None = None) -> list:
    """results.csv (and .parquet with pyarrow) from results.jsonl, in plan order; the plan's rows."""
    rows = read_rows(os.path.join(out_dir, RESULTS))
    rank = order or {}
    rows.sort(key=lambda r: rank.get(r["fingerprint"], len(rank)))
    write_csv(rows, os.path.join(out_dir, "results.csv"))
    write_parquet(rows, os.path.join(out_dir, "results.parquet"))
    return [r for r in rows if not order or r["fingerprint"] in rank]
