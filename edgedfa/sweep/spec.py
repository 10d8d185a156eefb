"""The sweep spec (``SPEC.toml``): a base configuration, the axes to vary, seeds, the search.

```toml
[sweep]
seeds = [0, 1]               # or a count: 4 means 0, 1, 2, 3 (default [0])
emulate_steps = 1            # training steps through hdl_models per trial (0: no emulation)
method = "grid"              # grid (default) | random | optuna
trials = 16                  # random / optuna: how many configurations to draw
sampler_seed = 0             # random / optuna: the sampler's seed
objective = "max test_accuracy"                  # optuna; also the report's first objective
constraints = ["weight_memory_bits <= 200000"]   # optuna and the report
batch = 4                    # optuna: configurations asked per round

[base]                       # what every trial starts from: a settings document (docs/config.md)
config = "base.toml"         # optional: a --config file, under the tables below
[base.model]
arch = "mlp"                 # or onnx = "net.onnx" (paths relative to the spec file)
[base.train]                 # any section: model, data, numerics, layers, train, modules, hardware
epochs = 5

[axes]                       # a key is a setting: "section.key" or "layers.NAME.key"
"model.arch" = ["mlp", "cnn"]               # a list: every value (grid) or a choice (random, optuna)
"train.algo" = ["bp", "sdfa"]
"numerics.bits" = [4, 8]
"train.lr_shift" = { low = 3, high = 6 }    # a range (random and optuna): integers when both are
algorithm = [                               # a list of tables: settings that go together, named
  { name = "bp", "train.algo" = "bp" },
  { name = "sdfa k=4", "train.algo" = "sdfa", "train.feedback_sparsity" = 4 },
]
```

A trial is one configuration (a point: one value per axis) with one seed: a settings
document, checked and resolved as ``edgedfa train`` resolves one before anything runs. It is
planned as a plain dict (picklable, JSON-ready) whose ``fingerprint`` names it: a hash of
everything that decides its figures (the effective settings with every default, the model
and data files' contents, the emulated steps), so a restarted sweep recognises what it has
already run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field

from .. import config as C
from .. import session  # noqa: F401  (declares the [hardware] keys the trials are checked against)
from ..errors import EdgeDFAError
from .results import FIGURES

FILE_KEYS = ("model.onnx", "data.path")  # relative to the spec file; a trial hashes their contents
BARE_KEYS = ("model.arch", "model.onnx", "data.dataset", "data.path")  # a label shows their value alone
METHODS = ("grid", "random", "optuna")
SWEEP_KEYS = ("seeds", "emulate_steps", "method", "trials", "sampler_seed", "objective", "constraints", "batch")
RANGE_KEYS = {"low", "high", "log"}
CONSTRAINT_OPS = ("<=", ">=")


@dataclass(frozen=True)
class Axis:
    """One thing that varies: a setting's values, named tables of settings, or a range."""

    name: str
    choices: tuple = ()  # each a dict setting path -> value
    labels: tuple = ()  # the value written in the axis's column, one per choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    named: bool = False  # a list of named tables of settings, not one setting's values

    @property
    def is_range(self) -> bool:
        return not self.choices

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def settings(self, value) -> dict:
        """The settings one value of this axis stands for."""
        if self.is_range:
            return {self.name: value}
        return self.choices[self.labels.index(value)]

    def paths(self) -> set:
        return {self.name} if self.is_range else {p for c in self.choices for p in c}


@dataclass
class Objective:
    """``max FIELD`` or ``min FIELD`` of a row."""

    direction: str
    field: str

    def __str__(self) -> str:
        return f"{self.direction} {self.field}"


@dataclass
class Constraint:
    """``FIELD <= BOUND`` or ``FIELD >= BOUND``: feasible when it holds."""

    field: str
    op: str
    bound: float

    def excess(self, row: dict) -> float:
        """How far ``row`` is past the bound (<= 0: feasible), as Optuna's constraints want."""
        v = row.get(self.field)
        if v is None:
            return float("inf")
        return v - self.bound if self.op == "<=" else self.bound - v

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.bound:g}"


@dataclass
class Spec:
    path: str
    base: dict  # the settings document every trial starts from (paths absolute)
    axes: list
    seeds: list
    emulate_steps: int = 1
    method: str = "grid"
    trials: int = 0
    sampler_seed: int = 0
    objective: Objective | None = None
    constraints: list = field(default_factory=list)
    batch: int = 4
    digest: str = ""  # hash of the parsed spec: a sweep directory belongs to one spec
    _hashes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- parsing

def load_spec(path: str) -> Spec:
    """Parse and check a spec file; errors name the file and the key."""
    return parse_spec(C.read_toml(path, "sweep spec"), path)


def parse_spec(raw: dict, path: str = "spec") -> Spec:
    """A Spec from the parsed TOML (``path`` names it in errors and anchors relative paths)."""
    unknown = sorted(set(raw) - {"sweep", "base", "axes"})
    if unknown:
        raise EdgeDFAError(f"{path}: unknown section(s) {unknown}; expected sweep, base, axes")
    where = os.path.dirname(os.path.abspath(path))
    base = _base(_table(raw, "base", path), where, path)
    axes = _axes(_table(raw, "axes", path), where, path)
    spec = Spec(path, base, axes, seeds=[0])
    _sweep_options(spec, _table(raw, "sweep", path))
    options = {k: v for k, v in raw.get("sweep", {}).items() if k != "trials"}  # more trials extend a search
    spec.digest = _digest({"base": base, "sweep": options,
                           "axes": [(a.name, a.choices, a.labels, a.low, a.high, a.log) for a in axes]})
    return spec


def _table(raw: dict, name: str, path: str) -> dict:
    t = raw.get(name, {})
    if not isinstance(t, dict):
        raise EdgeDFAError(f"{path}: [{name}] must be a table")
    return t


def _base(base: dict, where: str, path: str) -> dict:
    """The base settings document: a config file (``config``) under the sections given."""
    bad = sorted(set(base) - set(C.SECTIONS) - {"config"})
    if bad:
        raise EdgeDFAError(f"{path} [base]: unknown key(s) {bad}; expected config or a section: "
                           f"{', '.join(C.SECTIONS)}")
    file_doc = C.load_config(_resolve_path("config", base["config"], where)) if "config" in base else {}
    tables = {k: v for k, v in base.items() if k != "config"}
    for name in ("model", "data"):
        for key, val in list(tables.get(name, {}).items()) if isinstance(tables.get(name), dict) else []:
            tables[name][key] = _resolve_path(f"{name}.{key}", val, where)
    return C.merge(file_doc, C.check_doc(tables, f"{path} [base]"))


def _resolve_path(key: str, val, where: str):
    if key in FILE_KEYS + ("config",) and isinstance(val, str) and val.lower() != "none":
        return os.path.normpath(os.path.join(where, val))
    return val


def _flatten(table: dict, prefix: str = "") -> dict:
    """Nested tables to dotted setting paths; a range table or any non-table is a leaf."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (v and set(v) <= RANGE_KEYS):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_path(setting: str, where: str) -> None:
    parts = setting.split(".")
    shape = C.SECTIONS[parts[0]].shape if parts[0] in C.SECTIONS else None
    need = {"table": 2, "per_layer": 3, "list": 1}.get(shape)
    if need is None or len(parts) != need:
        raise EdgeDFAError(f"{where}: {setting!r} is not a setting; use SECTION.KEY (SECTION one of"
                           f" {', '.join(C.SECTIONS)}), layers.NAME.KEY or modules")


def _axes(table: dict, where: str, path: str) -> list:
    axes, seen = [], {}
    for name, val in _flatten(table).items():
        axis = _axis(name, val, where, f"{path} [axes] {name}")
        for p in axis.paths():
            _check_path(p, f"{path} [axes] {name}")
            if p in seen:
                raise EdgeDFAError(f"{path} [axes]: {p!r} is set by both {seen[p]!r} and {name!r}")
            seen[p] = name
        axes.append(axis)
    return axes


def _axis(name: str, val, where: str, at: str) -> Axis:
    if isinstance(val, dict):
        return _range_axis(name, val, at)
    if not isinstance(val, list) or not val:
        raise EdgeDFAError(f"{at}: expected a non-empty list of values or a range {{ low = .., high = .. }}")
    if all(isinstance(v, dict) for v in val):
        choices = [_flatten(v) for v in val]
        labels = [str(c.pop("name", None) or _auto_label(c)) for c in choices]
        choices = [{k: _resolve_path(k, v, where) for k, v in c.items()} for c in choices]
        if any(not c for c in choices):
            raise EdgeDFAError(f"{at}: every table needs at least one setting besides its name")
    elif any(isinstance(v, dict) for v in val):
        raise EdgeDFAError(f"{at}: mixes tables and plain values")
    else:
        choices = [{name: _resolve_path(name, v, where)} for v in val]
        labels = list(val)
    if len({json.dumps(l, sort_keys=True) for l in labels}) != len(labels):
        raise EdgeDFAError(f"{at}: the values (or table names) must be distinct, got {labels}")
    return Axis(name, tuple(choices), tuple(labels), named=isinstance(val[0], dict))


def _range_axis(name: str, val: dict, at: str) -> Axis:
    lo, hi, log = val.get("low"), val.get("high"), val.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    if not numbers or not lo <= hi or not isinstance(log, bool) or (log and lo <= 0):
        raise EdgeDFAError(f"{at}: a range needs numbers low <= high (and low > 0 with log = true), got {val}")
    return Axis(name, low=lo, high=hi, log=log)


def _auto_label(settings: dict) -> str:
    return " ".join(f"{short_name(k)}={v}" for k, v in settings.items())


def short_name(setting: str) -> str:
    """The last part of a setting path: what a label or a column shows."""
    return setting.rsplit(".", 1)[-1]


def _sweep_options(spec: Spec, t: dict) -> None:
    where = f"{spec.path} [sweep]"
    bad = sorted(set(t) - set(SWEEP_KEYS))
    if bad:
        raise EdgeDFAError(f"{where}: unknown key(s) {bad}; expected one of {', '.join(SWEEP_KEYS)}")
    seeds = t.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or any(not _nonneg_int(s) for s in seeds) or len(set(seeds)) < len(seeds):
        raise EdgeDFAError(f"{where}: seeds must be a count >= 1 or a list of distinct integers >= 0, got {seeds!r}")
    spec.seeds = seeds
    for key in ("emulate_steps", "trials", "sampler_seed", "batch"):
        if key in t and not _nonneg_int(t[key]):
            raise EdgeDFAError(f"{where}: {key} must be an integer >= 0, got {t[key]!r}")
        setattr(spec, key, t.get(key, getattr(spec, key)))
    spec.method = t.get("method", "grid")
    if spec.method not in METHODS:
        raise EdgeDFAError(f"{where}: method {spec.method!r}; expected one of {', '.join(METHODS)}")
    spec.objective = parse_objective(t["objective"], where) if "objective" in t else None
    cons = t.get("constraints", [])
    if not isinstance(cons, list):
        raise EdgeDFAError(f"{where}: constraints must be a list of strings like \"weight_memory_bits <= 65536\"")
    spec.constraints = [parse_constraint(c, where) for c in cons]
    _check_method(spec, where)


def _nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_method(spec: Spec, where: str) -> None:
    ranges = [a.name for a in spec.axes if a.is_range]
    if spec.method == "grid" and ranges:
        raise EdgeDFAError(f"{where}: range axes {ranges} need method = \"random\" or \"optuna\"")
    if spec.method != "grid" and spec.trials < 1:
        raise EdgeDFAError(f"{where}: method {spec.method!r} needs trials >= 1 (configurations to draw)")
    if spec.method == "optuna" and spec.objective is None:
        raise EdgeDFAError(f"{where}: method \"optuna\" needs an objective, e.g. \"max test_accuracy\"")
    if spec.method == "optuna" and spec.batch < 1:
        raise EdgeDFAError(f"{where}: batch must be >= 1")


def parse_objective(text, where: str) -> Objective:
    parts = str(text).split()
    if len(parts) != 2 or parts[0] not in ("max", "min"):
        raise EdgeDFAError(f"{where}: objective {text!r}; expected \"max FIELD\" or \"min FIELD\"")
    _check_field(parts[1], where)
    return Objective(parts[0], parts[1])


def parse_constraint(text, where: str) -> Constraint:
    parts = str(text).split()
    if len(parts) != 3 or parts[1] not in CONSTRAINT_OPS:
        raise EdgeDFAError(f"{where}: constraint {text!r}; expected \"FIELD <= NUMBER\" or \"FIELD >= NUMBER\"")
    _check_field(parts[0], where)
    try:
        bound = float(parts[2])
    except ValueError:
        raise EdgeDFAError(f"{where}: constraint {text!r}: {parts[2]!r} is not a number") from None
    return Constraint(parts[0], parts[1], bound)


def _check_field(name: str, where: str) -> None:
    if name not in FIGURES:
        raise EdgeDFAError(f"{where}: {name!r} is not a figure of a trial; expected one of {', '.join(FIGURES)}")


# --------------------------------------------------------------------------- planning

def grid_points(spec: Spec) -> list:
    """Every combination of the axes' values, the first axis varying slowest."""
    points = [{}]
    for axis in spec.axes:
        points = [{**p, axis.name: label} for p in points for label in axis.labels]
    return points


def plan(spec: Spec, points: list) -> list:
    """The trials of ``points``, each point once per seed, in that order."""
    return [make_trial(spec, p, s) for p in points for s in spec.seeds]


def make_trial(spec: Spec, point: dict, seed: int) -> dict:
    """One trial as a plain dict, its settings checked and resolved now rather than on a worker."""
    label = point_label(spec, point)
    where = f"{spec.path}: trial {label!r}"
    try:
        doc = spec.base
        for axis in spec.axes:
            for key, val in axis.settings(point[axis.name]).items():
                doc = C.merge(doc, C.check_doc(_nest(key, val), f"{spec.path} [axes] {axis.name}"))
        doc = C.merge(doc, {"train": {"seed": seed}})
        effective = C.resolve_run(doc, where).doc
    except EdgeDFAError as exc:  # some checks do not say where: name the spec and the trial
        raise EdgeDFAError(str(exc) if spec.path in str(exc) else f"{where}: {exc}") from None
    files = {key: _file_hash(spec, _get(effective, key)) for key in FILE_KEYS if _get(effective, key)}
    trial = {"label": label, "point": dict(point), "seed": seed, "settings": doc, "files": files,
             "emulate_steps": spec.emulate_steps}
    trial["fingerprint"] = fingerprint(effective, files, spec.emulate_steps)
    return trial


def _nest(path: str, val) -> dict:
    out = val
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def _get(doc: dict, path: str):
    section, key = path.split(".")
    v = doc.get(section, {}).get(key)
    return None if v is None or (isinstance(v, str) and v.lower() == "none") else v


def point_label(spec: Spec, point: dict) -> str:
    """A configuration's name in tables and plots: its axis values, briefly."""
    parts = []
    for axis in spec.axes:
        v = point[axis.name]
        v = f"{v:.4g}" if isinstance(v, float) else os.path.basename(v) if axis.name in FILE_KEYS else v
        parts.append(str(v) if axis.named or axis.name in BARE_KEYS else f"{short_name(axis.name)}={v}")
    return " ".join(parts) or "base"


def _file_hash(spec: Spec, path: str) -> str:
    if path not in spec._hashes:
        spec._hashes[path] = file_sha256(path)
    return spec._hashes[path]


def file_sha256(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError as exc:
        raise EdgeDFAError(f"{path}: cannot read ({exc.strerror})") from None


def fingerprint(effective: dict, files: dict, emulate_steps: int) -> str:
    """What decides a trial's figures, hashed: every setting (defaults included), the files'
    contents in place of their paths, the emulated steps."""
    doc = copy.deepcopy(effective)
    for key, digest in files.items():
        section, name = key.split(".")
        doc[section][name] = f"sha256:{digest}"
    return _digest({"settings": doc, "emulate_steps": emulate_steps})[:16]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
