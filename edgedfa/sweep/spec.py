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

[base]                       # what every trial starts from
arch = "mlp"                 # or model = "net.onnx"
dataset = "digits"           # or data = "my.npz" (paths relative to the spec file)
config = "base.toml"         # optional: a --config file, under the tables below
[base.train]                 # any --config section: numerics, layers, train, modules, hardware
epochs = 5

[axes]                       # a key is a setting: "section.key", "layers.NAME.key", arch, data, ...
"train.algo" = ["bp", "sdfa"]               # a list: every value (grid) or a choice (random, optuna)
"numerics.bits" = [4, 8]
"train.lr_shift" = { low = 3, high = 6 }    # a range (random and optuna): integers when both are
algorithm = [                               # a list of tables: settings that go together, named
  { name = "bp", "train.algo" = "bp" },
  { name = "sdfa k=4", "train.algo" = "sdfa", "train.feedback_sparsity" = 4 },
]
```

A trial is one configuration (a point: one value per axis) with one seed. It is planned as
a plain dict (picklable, JSON-ready) whose ``fingerprint`` names it: a hash of everything
that decides its figures (the merged configuration, the seed, the model and data contents,
the emulated steps), so a restarted sweep recognises what it has already run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

from ..config import SECTIONS, load_config, read_toml, resolve_run
from ..errors import EdgeDFAError
from .results import FIGURES

SOURCE_KEYS = ("arch", "model", "dataset", "data")
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
    source: dict  # arch / model / dataset / data (paths absolute)
    config: dict  # the --config tables every trial starts from
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
    return parse_spec(read_toml(path, "sweep spec"), path)


def parse_spec(raw: dict, path: str = "spec") -> Spec:
    """A Spec from the parsed TOML (``path`` names it in errors and anchors relative paths)."""
    unknown = sorted(set(raw) - {"sweep", "base", "axes"})
    if unknown:
        raise EdgeDFAError(f"{path}: unknown section(s) {unknown}; expected sweep, base, axes")
    where = os.path.dirname(os.path.abspath(path))
    source, config = _base(_table(raw, "base", path), where, path)
    axes = _axes(_table(raw, "axes", path), where, path)
    spec = Spec(path, source, config, axes, seeds=[0])
    _sweep_options(spec, _table(raw, "sweep", path))
    options = {k: v for k, v in raw.get("sweep", {}).items() if k != "trials"}  # more trials extend a search
    spec.digest = _digest({"source": source, "config": config, "sweep": options,
                           "axes": [(a.name, a.choices, a.labels, a.low, a.high, a.log) for a in axes]})
    return spec


def _table(raw: dict, name: str, path: str) -> dict:
    t = raw.get(name, {})
    if not isinstance(t, dict):
        raise EdgeDFAError(f"{path}: [{name}] must be a table")
    return t


def _base(base: dict, where: str, path: str) -> tuple:
    source, config = {}, {}
    for key, val in base.items():
        if key in SOURCE_KEYS:
            source[key] = _resolve_path(key, val, where)
        elif key == "config":
            cfg = load_config(_resolve_path(key, val, where))
            config = _merge(config, {k: v for k, v in cfg.items() if k in SECTIONS})
        elif key in SECTIONS:
            config = _merge(config, {key: val})
        else:
            raise EdgeDFAError(f"{path} [base]: unknown key {key!r}; expected one of "
                               f"{', '.join(SOURCE_KEYS + ('config',) + SECTIONS)}")
    return source, config


def _resolve_path(key: str, val, where: str):
    if key in ("model", "data", "config") and isinstance(val, str):
        return os.path.normpath(os.path.join(where, val))
    return val


def _merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, tables merged key by key, anything else replaced."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


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
    root = setting.split(".")[0]
    if root in SOURCE_KEYS and setting != root:
        raise EdgeDFAError(f"{where}: {setting!r}: {root} takes a value, not sub-keys")
    if root not in SOURCE_KEYS and (root not in SECTIONS or "." not in setting and root != "modules"):
        raise EdgeDFAError(f"{where}: {setting!r} is not a setting; use one of {', '.join(SOURCE_KEYS)} or "
                           f"SECTION.KEY with SECTION one of {', '.join(SECTIONS)}")


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
    """One trial as a plain dict, its settings checked now rather than on a worker."""
    settings = {}
    for axis in spec.axes:
        settings.update(axis.settings(point[axis.name]))
    source = dict(spec.source)
    config = copy.deepcopy(spec.config)
    for key, val in settings.items():
        if key in SOURCE_KEYS:
            source[key] = val
        else:
            config = _merge(config, _nest(key, val))
    config = _merge(config, {"train": {"seed": seed}})
    label = point_label(spec, point)
    source = _check_source(source, f"{spec.path}: trial {label!r}")
    _check_config(config, source, f"{spec.path}: trial {label!r}")
    trial = {"label": label, "point": dict(point), "seed": seed, **source, "config": config,
             "emulate_steps": spec.emulate_steps}
    for key in ("model", "data"):
        trial[f"{key}_sha256"] = _file_hash(spec, source[key]) if source.get(key) else None
    trial["fingerprint"] = fingerprint(trial)
    return trial


def _nest(path: str, val) -> dict:
    out = val
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def point_label(spec: Spec, point: dict) -> str:
    """A configuration's name in tables and plots: its axis values, briefly."""
    parts = []
    for axis in spec.axes:
        v = point[axis.name]
        v = f"{v:.4g}" if isinstance(v, float) else v
        parts.append(str(v) if axis.named or axis.name in SOURCE_KEYS else f"{short_name(axis.name)}={v}")
    return " ".join(parts) or "base"


def _check_source(source: dict, where: str) -> dict:
    if source.get("arch") and source.get("model"):
        raise EdgeDFAError(f"{where}: both arch and model are set; a trial trains one of them")
    if source.get("dataset") and source.get("data"):
        raise EdgeDFAError(f"{where}: both dataset and data are set; a trial trains on one of them")
    from ..arch import ARCHS
    from ..data import BUILTIN

    if not source.get("model") and source.setdefault("arch", "mlp") not in ARCHS:
        raise EdgeDFAError(f"{where}: arch {source['arch']!r}; expected one of {', '.join(ARCHS)}")
    if not source.get("data") and source.setdefault("dataset", "digits") not in BUILTIN:
        raise EdgeDFAError(f"{where}: dataset {source['dataset']!r}; expected one of {', '.join(BUILTIN)}")
    return {k: source.get(k) for k in SOURCE_KEYS}


def _check_config(config: dict, source: dict, where: str) -> None:
    from hdl_models.hwconfig import hw_config

    bad = sorted(set(config) - set(SECTIONS))
    if bad:
        raise EdgeDFAError(f"{where}: unknown config section(s) {bad}; expected {', '.join(SECTIONS)}")
    try:
        resolve_run({**config, "_path": "config"}, SimpleNamespace(model=source.get("model"), arch=source.get("arch")))
        hw_config(config.get("hardware"))
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"{where}: {exc}") from None


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


def fingerprint(trial: dict) -> str:
    """What decides a trial's figures, hashed: settings, seed, model and data contents."""
    keys = ("arch", "model_sha256", "dataset", "data_sha256", "config", "emulate_steps")
    return _digest({k: trial.get(k) for k in keys})[:16]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
