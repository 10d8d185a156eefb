"""One trial, on a worker: train in a private temporary directory, emulate a few steps, and
return the figures with the run directory's files (the driver writes them, so workers need
no disk shared with it and a killed worker leaves nothing half-written behind). A killed
worker's temporary directory is removed by the next trial on that host."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time

from .. import session
from ..errors import EdgeDFAError
from .spec import file_sha256


@contextlib.contextmanager
def one_engine_thread():
    """numba's loops on one thread for this thread while a trial runs (one trial per core), then as before."""
    import numba

    # numba's count is per thread; never NUMBA_NUM_THREADS: changed once its threads run, the next compile raises
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _restore_malloc_thresholds() -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold at 128 KiB:
    every temporary array is then mapped and zeroed afresh (measured: 2.5 s of system time
    on 2 s of training). Raise both thresholds again, as glibc's dynamic tuning would."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-1, 1 << 27)  # M_TRIM_THRESHOLD: 128 MiB
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: 32 MiB, glibc's dynamic ceiling
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to restore
        pass


def run_trial(trial: dict) -> dict:
    """Train (and emulate) one planned trial; its figures, timing and run-directory files."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        _restore_malloc_thresholds()
    with one_engine_thread():
        return _train_and_emulate(trial)


TRIAL_PREFIX = "edgedfa-trial-"


def trial_dir_prefix() -> str:
    """This process's prefix for its trial directories: host and process id, so that a later
    trial can tell a directory whose process died (a killed worker cannot clean up)."""
    return f"{TRIAL_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def remove_orphan_trial_dirs(root: str | None = None) -> list:
    """Remove the trial directories, under ``root`` (the temporary directory), of this host's
    processes that no longer run; the removed paths. Directories of live processes, of other
    hosts and of an older naming are left alone."""
    root = root or tempfile.gettempdir()
    host = f"{TRIAL_PREFIX}{socket.gethostname()}-"
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid = name[len(host):].split("-", 1)[0] if name.startswith(host) else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no way to tell: keep it
        return True
    return True


def _train_and_emulate(trial: dict) -> dict:
    t0 = time.perf_counter()
    check_files(trial)
    remove_orphan_trial_dirs()
    with tempfile.TemporaryDirectory(prefix=trial_dir_prefix()) as tmp:
        out = os.path.join(tmp, "run")
        req = session.Request(settings=trial["settings"], out=out, quiet=True)
        outcome = session.train(req)
        figures = train_figures(outcome.metrics, outcome.model)
        if trial["emulate_steps"]:
            report = emulate_run(out, req, trial["emulate_steps"])
            figures.update(emulate_figures(report, figures))
        with open(os.path.join(out, "trial.json"), "w") as fh:
            json.dump(trial, fh, indent=2)
        files = {}
        for name in sorted(os.listdir(out)):
            if os.path.isfile(os.path.join(out, name)):
                with open(os.path.join(out, name), "rb") as fh:
                    files[name] = fh.read()
    timing = {"seconds": time.perf_counter() - t0, "samples_per_second": outcome.metrics.get("samples_per_second"),
              "worker": worker_name(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return {"fingerprint": trial["fingerprint"], "figures": figures, "timing": timing, "files": files}


def check_files(trial: dict) -> None:
    """The model and data files this worker reads are those the sweep was planned with."""
    for key, digest in trial.get("files", {}).items():
        section, name = key.split(".")
        path = trial["settings"][section][name]
        if file_sha256(path) != digest:
            raise EdgeDFAError(f"trial {trial['label']!r}: {path} on this worker differs from the file the sweep"
                               " was planned with")


def train_figures(metrics: dict, model) -> dict:
    """Accuracy, loss and the weights' size and saturation of a trained model."""
    last = metrics["history"][-1] if metrics["history"] else {}
    val = [k for k in last if "val" in k and "acc" in k]
    params = [t for layer in model.layers if layer.trainable for t in layer.params.values()]
    sat = [e for layer in metrics.get("saturation", {}).values() for e in layer.values()]
    return {"test_accuracy": metrics["test_accuracy"], "train_accuracy": metrics["train_accuracy"],
            "val_accuracy": last[val[0]] if val else None, "loss": last.get("loss"),
            "epochs": len(metrics["history"]), "steps": metrics.get("steps"),
            "params": sum(int(t.codes.size) for t in params),
            "weight_memory_bits": sum(int(t.codes.size) * t.fmt.width for t in params),
            "max_fraction_at_limit": max((e.get("fraction_at_limit", 0.0) for e in sat), default=None),
            "clipped_updates": sum(int(e.get("clipped_updates", 0)) for e in sat) if sat else None}


def emulate_run(run_dir: str, req, steps: int) -> dict:
    """``edgedfa emulate`` on the trained checkpoint with the run's [hardware], on its training
    data; the report also lands in emulate.json."""
    from hdl_models.hwconfig import hw_config

    from ..cosim import emulate, report_json

    run = session.settings(req)
    data, _, _ = session.load_data(req, run)
    report = emulate(os.path.join(run_dir, "checkpoint.npz"), data.x_train, data.y_train, steps,
                     hw_config(run.hardware))
    with open(os.path.join(run_dir, "emulate.json"), "w") as fh:
        fh.write(report_json(report))
    return report


def emulate_figures(rep: dict, train: dict) -> dict:
    """Per-step hardware figures and the on-chip memory footprint in bits."""
    steps = rep["steps"]
    act = sum(rep["buffers"].get(b, {}).get("peak_bytes", 0) for b in ("act", "err")) * 8
    fb = int(rep.get("feedback_memory_bytes", 0)) * 8
    return {"cycles_per_step": rep["cycles"] / steps, "macs_per_step": rep["macs"] / steps,
            "offchip_bytes_per_step": rep["offchip_bytes"] / steps, "onchip_bytes_per_step": rep["onchip_bytes"] / steps,
            "bytes_per_step": (rep["offchip_bytes"] + rep["onchip_bytes"]) / steps,
            "us_per_step_at_clock": rep["seconds_at_clock"] * 1e6 / steps, "pe_utilization": rep["pe_utilization"],
            "feedback_memory_bits": fb, "activation_memory_bits": act,
            "memory_bits": train["weight_memory_bits"] + fb + act, "bit_exact": rep["bit_exact"],
            "array": rep["hardware"]["array"], "clock_mhz": rep["clock_mhz"]}


def worker_name() -> str:
    """The Dask worker's address, or host:pid."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return get_worker().address
        except ValueError:  # not inside a Dask worker
            pass
    return f"{socket.gethostname()}:{os.getpid()}"
