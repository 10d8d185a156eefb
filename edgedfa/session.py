"""A training run from its settings to its files, as ``edgedfa train`` and ``edgedfa.fit`` run it.

Order of work, so that a mistake costs nothing: the settings are checked, the output directory
is checked, the data are read and fingerprinted and the model is built; only then is the
run directory claimed (``edgedfa.rundir``), ``config.toml`` written and the epoch loop run
(``edgedfa.api.fit``). A run that fails before its first checkpoint leaves nothing behind.
A resumed run is compared with its record: other data or settings are refused, naming what
differs; the epoch budget and the learning-rate schedule may change and the history says so.
"""

from __future__ import annotations

import datetime
import os
import shlex
from dataclasses import asdict, dataclass, field

from hdl_models.hwconfig import HwArray, HwConfig, hw_config

from . import config as C
from .api import BEST, build_model, fit, load_onnx
from .checkpoint import FILE, atomic_write, model_from_checkpoint, read_checkpoint
from .checkpoint import graph_meta as checkpoint_graph_meta
from .data import (Dataset, fingerprint, fingerprint_differences, holdout, label_gaps, select_dataset)
from .errors import EdgeDFAError
from .rundir import RunDir, check_new_run_dir, default_run_dir
from .schema import FLAG, entries
from .version import __version__

C.register_section(C.Section("hardware", (HwArray, HwConfig), "The modelled accelerator, read by"
                             " `edgedfa emulate` (`--array` and `--clock-mhz` override it there).", training=False,
                             resolve=lambda table, where: {k: v for k, v in asdict(hw_config(table, where=where)).items()}),
                   replace=True)

CONFIG = "config.toml"
MODEL = "model.onnx"


@dataclass
class Request:
    """What to train: settings from flags or keywords, a config file, where, and how."""

    settings: dict = field(default_factory=dict)  # a settings document (sections of keys)
    config: str | None = None
    out: str | None = None
    resume: str | None = None
    force: bool = False
    quiet: bool = False
    backend: str | None = None
    command: list | None = None  # the command line, recorded in metrics.json
    dataset: Dataset | None = None  # data in memory instead of [data]
    should_stop: object = None  # asked after every batch (interrupts)
    warn: object = None  # warn(text): told once per message


@dataclass
class Outcome:
    """How a run ended: done, interrupted or nothing to do; its directory, model and metrics."""

    status: str
    out: str | None
    model: object = None
    metrics: dict | None = None
    notes: list = field(default_factory=list)


class Interrupted(Exception):
    """Stopped before the first batch: nothing was saved."""


# --------------------------------------------------------------------------- settings

def settings(req: Request, recorded: dict | None = None) -> C.RunSettings:
    """The effective settings: defaults (or a resumed run's record) < config file < request."""
    docs = [recorded or {}]
    if req.config:
        docs.append(C.load_config(req.config))
    docs.append(C.check_doc(req.settings, FLAG))
    return C.resolve_run(C.merge(*docs), req.config or "settings")


def keyword_settings(keywords: dict) -> dict:
    """A settings document from keywords named like the keys (``epochs=5, bits=6, holdout=0.2``):
    each goes to the one section that declares it."""
    doc = {}
    for key, value in keywords.items():
        homes = [name for name, sec in C.SECTIONS.items() if sec.shape == "table" and C.spec_entry(name, key)]
        if len(homes) != 1:
            known = sorted({e.name for sec in C.SECTIONS.values() if sec.shape == "table"
                            for cls in sec.classes for e in entries(cls)})
            raise EdgeDFAError(f"fit: unknown setting {key!r}; settings are {', '.join(known)}" if not homes
                               else f"fit: {key!r} is a key of {homes}; pass config= instead")
        doc.setdefault(homes[0], {})[key] = value
    return doc


def print_config(req: Request) -> str:
    """The effective configuration as TOML (``edgedfa train --print-config``)."""
    rec = _record(read_checkpoint(req.resume)) if req.resume else None
    return C.toml_dumps(settings(req, rec).doc, _HEADER)


_HEADER = (f"edgedfa {__version__}: the effective settings of a run (docs/config.md lists every key).\n"
           "`edgedfa train --config THIS_FILE` (same data) trains the same run bit for bit.")


def _warn_inapplicable(req: Request, run: C.RunSettings) -> None:
    """Flags and keys that do not apply to this run: one warning each."""
    given = C.merge(C.load_config(req.config) if req.config else {}, req.settings).get("train", {})
    if run.modules is not None and "algo" in given:
        _warn(req, f"algo = {given['algo']!r} does not apply: [[modules]] gives the plan")
    late = [e for e in given.get("lr_decay_epochs") or [] if e >= run.train.epochs]
    if late:
        _warn(req, f"lr_decay_epochs {late} lie at or beyond the last epoch (epochs = {run.train.epochs}):"
                   " they never apply in this run")
    if run.train.algo == "bp" and run.modules is None:
        for key in ("feedback_kind", "feedback_sparsity", "feedback_values"):
            if given.get(key) is not None:
                _warn(req, f"--{key.replace('_', '-')} does not apply to --algo bp (no feedback)")


def _warn(req: Request, text: str) -> None:
    if req.warn is not None:
        req.warn(text)


# --------------------------------------------------------------------------- data and model

def load_data(req: Request, run: C.RunSettings):
    """(training data, validation split or None, fingerprint of the data as read)."""
    ds = req.dataset if req.dataset is not None else select_dataset(run.data.path, run.data.dataset)
    gaps = label_gaps(ds)
    if gaps:
        _warn(req, f"{ds.name}: {gaps}")
    fp = fingerprint(ds)
    if run.data.holdout is None:
        return ds, None, fp
    split = holdout(ds, run.data.holdout, run.data.holdout_seed)
    if len(split.y_test) == 0 or len(split.y_train) == 0:
        raise EdgeDFAError(f"--holdout {run.data.holdout}: leaves {len(split.y_train)} training and"
                           f" {len(split.y_test)} validation samples; both need at least one")
    return Dataset(ds.name, split.x_train, split.y_train, ds.x_test, ds.y_test), split, fp


def build(req: Request, run: C.RunSettings, ds: Dataset):
    """The integer model the settings describe, sized for the data."""
    if run.model.onnx:
        model = load_onnx(run.model.onnx, numerics=run.numerics, seed=run.train.seed,
                          layer_numerics=run.layer_numerics, backend=req.backend)
    else:
        from .arch import build as build_arch

        graph = build_arch(run.model.arch, run.train.seed, ds.sample_shape, ds.n_classes)
        model = build_model(graph, run.numerics, run.train.seed, run.layer_numerics, req.backend)
    model.graph.meta["dataset"] = os.path.abspath(run.data.path) if run.data.path else ds.name
    return model


# --------------------------------------------------------------------------- a new run

def train(req: Request) -> Outcome:
    """A new run or a resumed one, to its end or its interruption."""
    return _resume(req) if req.resume else _new(req)


def _new(req: Request) -> Outcome:
    run = settings(req)
    _warn_inapplicable(req, run)
    if req.out:
        check_new_run_dir(req.out, req.force)
    data, val, fp = load_data(req, run)
    model = build(req, run, data)
    out = req.out or default_run_dir()
    rd = RunDir.claim(out, new=True, force=req.force, created=not req.out)
    with _Owned(rd, req):
        atomic_write(rd.file(CONFIG), C.toml_dumps(run.doc, _HEADER))
        meta = _run_meta(req, run, fp)
        return _fit(req, rd, model, data, val, run, meta)


def _fit(req, rd, model, data, val, run, meta, start=None, state=None) -> Outcome:
    for name in (FILE, "metrics.json", MODEL) + ((BEST,) if val is not None else ()):
        rd.file(name)
    metrics = fit(model, data, run.train, rd.path, req.quiet, run.modules, start, val=val,
                  should_stop=req.should_stop, run=meta, state=state)
    notes = _export(model, rd)
    status = "interrupted" if "interrupted" in metrics else "done"
    return Outcome(status, rd.path, model, metrics, notes)


def _export(model, rd: RunDir) -> list:
    try:
        from .onnx.export import export_model
    except ImportError:
        return [f"{MODEL} not written: ONNX export is not available in this build"]
    export_model(model, "float", rd.file(MODEL))
    return []


def _run_meta(req: Request, run: C.RunSettings, fp: dict, before: dict | None = None) -> dict:
    """What metrics.json and the checkpoint record about the run besides the training."""
    now = {"version": __version__, "command": _command(req),
           "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    earlier = (before or {}).get("invocations")
    earlier = earlier if isinstance(earlier, list) else []
    return {**now, "data": fp, "invocations": earlier + [now], "settings": run.doc}


def _command(req: Request) -> str:
    return "edgedfa " + shlex.join(req.command) if req.command is not None else "edgedfa.fit(...)"


class _Owned:
    """Holds a claimed run directory: released at the end; abandoned when the run fails (or
    stops before its first batch) without a checkpoint."""

    def __init__(self, rd: RunDir, req: Request):
        self.rd, self.req = rd, req

    def __enter__(self):
        if self.req.should_stop is not None and self.req.should_stop():
            self.rd.abandon()
            raise Interrupted()
        return self.rd

    def __exit__(self, kind, exc, tb):
        checkpoint = os.path.join(self.rd.path, FILE)
        saved = checkpoint in self.rd.written and os.path.exists(checkpoint)  # by this run: keep it all
        if kind is not None and not saved:
            self.rd.abandon()
        else:
            self.rd.release()
        return False


# --------------------------------------------------------------------------- resuming

def _record(ck: dict) -> dict:
    """The effective settings a checkpoint was trained with (rebuilt from the metadata of
    checkpoints written before runs recorded their settings)."""
    run = ck["meta"].get("run") or {}
    if isinstance(run.get("settings"), dict):
        return C.resolve_run(run["settings"], f"{ck['path']} (its settings)").doc
    meta, graph_meta = ck["meta"], checkpoint_graph_meta(ck)
    doc = {"train": dict(meta.get("train", {})), "numerics": dict(meta.get("numerics", {}))}
    if meta.get("layer_numerics"):
        doc["layers"] = meta["layer_numerics"]
    if ck.get("modules"):
        doc["modules"] = ck["modules"]
    if graph_meta.get("arch") in C.ARCHS:
        doc["model"] = {"arch": graph_meta["arch"]}
    source = str(graph_meta.get("dataset", ""))
    if source:
        doc["data"] = {"path": source} if os.path.isabs(source) else {"dataset": source}
    try:
        return C.resolve_run(doc, f"{ck['path']} (its settings)").doc
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"{ck['path']}: its recorded settings cannot be read back ({exc})") from exc


def _resume(req: Request) -> Outcome:
    ck = read_checkpoint(req.resume)
    run_dir = os.path.dirname(ck["path"])
    recorded = _record(ck)
    run = settings(req, recorded)
    fixed, changeable = C.differences(recorded, run.doc)
    if fixed:
        raise EdgeDFAError(f"--resume {req.resume}: a resumed run keeps its settings; these differ: "
                           + "; ".join(f"{k} = {_show(new)} (the run's: {_show(old)})" for k, old, new in fixed)
                           + ". Start a new run (another --out) to train with them")
    progress = ck["meta"].get("progress") or {}
    done, mid = int(progress.get("epoch", 0)), int(progress.get("batch", 0)) > 0
    if run.train.epochs < done + (1 if mid else 0):
        raise EdgeDFAError(f"--epochs {run.train.epochs}: the run in {run_dir} has already trained {done} epoch(s)"
                           f"{' and part of the next' if mid else ''}; --epochs is the total, so ask for more")
    if run.train.epochs == done and not mid:
        return Outcome("nothing", run_dir, notes=[f"{run_dir}: already trained {done} of {done} epochs; nothing to"
                                                  f" do (--epochs N with N > {done} trains more); no file changed"])
    out = req.out if req.out and os.path.abspath(req.out) != os.path.abspath(run_dir) else None
    if out:
        check_new_run_dir(out, req.force)
    data, val, fp = load_data(req, run)
    _check_same_data(req.resume, (ck["meta"].get("run") or {}).get("data"), fp)
    model = model_from_checkpoint(ck, req.backend)
    rd = RunDir.claim(out, new=True, force=req.force) if out else RunDir.claim(run_dir, new=False)
    with _Owned(rd, req):
        start = dict(progress)
        if changeable:
            start["changes"] = list(start.get("changes", [])) + [{
                "epoch": done, "batch": int(progress.get("batch", 0)), "step": int(progress.get("step", 0)),
                "settings": {k: [old, new] for k, old, new in changeable}}]
        meta = _run_meta(req, run, fp, ck["meta"].get("run"))
        outcome = _fit(req, rd, model, data, val, run, meta, start, ck["arrays"])
        atomic_write(rd.file(CONFIG), C.toml_dumps(run.doc, _HEADER))
        return outcome


def _check_same_data(where: str, recorded: dict | None, fp: dict) -> None:
    if not recorded:
        return  # a checkpoint from before data fingerprints: nothing to compare with
    diff = fingerprint_differences(recorded, fp)
    if diff:
        raise EdgeDFAError(f"--resume {where}: the data differ from the run's: {'; '.join(diff)}."
                           " Resume with the run's data (--data), or start a new run")


def _show(v) -> str:
    return "none" if v is None else repr(v)


def describe_outcome(o: Outcome, resume_hint: bool = True) -> list:
    """Lines that tell what a run saved and, when interrupted, how to go on."""
    if o.status == "nothing":
        return list(o.notes)
    m, out = o.metrics, o.out
    if o.status == "interrupted":
        it = m["interrupted"]
        where = (f"epoch {it['epoch']}, batch {it['batch']} of {it['batches']}" if it["batch"]
                 else f"the end of epoch {it['epoch']}")
        lines = [f"interrupted at {where} (step {it['step']}): saved {os.path.join(out, FILE)}, "
                 f"{os.path.join(out, 'metrics.json')}, {os.path.join(out, MODEL)} and {os.path.join(out, CONFIG)}"]
        if resume_hint:
            lines.append(f"resume with: edgedfa train --resume {shlex.quote(out)}")
        return lines + o.notes
    return o.notes
