"""A run's settings: ``--config FILE.toml``, command-line flags and defaults, as one document.

A settings document is a dict of sections, each what the TOML file holds::

    [numerics]            # every Numerics field, plus bits = N (the --bits default)
    bits = 8
    update_rounding = "STOCHASTIC"

    [layers.dense1]       # per-layer overrides of [numerics], and layer options
    weight_bits = 12

    [train]               # TrainConfig: algo, epochs, batch_size, lr_shift, ...
    lr_shift = 4

    [model]               # arch = "cnn", or onnx = "net.onnx"
    [data]                # dataset, path (.npz), holdout fraction

    [[modules]]           # optional explicit credit-assignment plan (docs/algorithms.md)
    nodes = ["dense1", "relu2"]
    source = "dfa"
    feedback = { kind = "sparse", k = 1, values = "binary" }

    [hardware]            # read by `edgedfa emulate`

Every key is declared once, on a dataclass field with its meaning and allowed values
(``edgedfa.schema``); checking, ``--print-config``, ``docs/config.md`` and the comparison of a
resumed run with its record all follow from those declarations. Later documents win:
defaults < config file < flags (and, on resume, the run's record < config file < flags).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields

from .arch import ARCHS
from .credit import FeedbackSettings, ModuleSettings, PlanLayerOptions
from .data import BUILTIN, HOLDOUT_SEED
from .errors import EdgeDFAError
from .model import LAYER_OPTION_ALIASES, LayerOptions
from .numerics import WORD_BITS_MAX, Numerics
from .schema import FLAG, NONE, check_value, entries, entry, plain, setting
from .train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# --------------------------------------------------------------------------- the sections

@dataclass
class Bits:
    """``bits`` in ``[numerics]``: the default of every word width."""

    bits: int = setting(8, "word width of weights, activations and errors (biases get twice as many, up to"
                        " 32); the width keys below override it", lo=2, hi=WORD_BITS_MAX, flag="--bits", metavar="N")


@dataclass
class ModelSource:
    """``[model]``: which network is trained."""

    arch: str | None = setting(None, "a built-in architecture", choices=ARCHS, none="mlp, unless onnx is set",
                               flag="--arch", excludes="onnx")
    onnx: str | None = setting(None, "an ONNX file whose network (and initial weights) is trained",
                               none="a built-in architecture", flag="--model", metavar="FILE.onnx", excludes="arch")


@dataclass
class DataSource:
    """``[data]``: what the model is trained on."""

    dataset: str | None = setting(None, "a built-in dataset", choices=tuple(BUILTIN), none="digits, unless path"
                                  " is set", flag="--dataset", excludes="path", resume=True)
    path: str | None = setting(None, "an .npz file with x_train, y_train, x_test, y_test", none="a built-in"
                               " dataset", flag="--data", metavar="FILE.npz", excludes="dataset", resume=True)
    holdout: float | None = setting(None, "fraction of the training split held out for validation"
                                    " (stratified per class); the best epoch by validation accuracy is kept as"
                                    " best.npz", lo=0.01, hi=0.99, none="no validation split", flag="--holdout",
                                    metavar="FRACTION")
    holdout_seed: int = setting(HOLDOUT_SEED, "seed of the validation split (the same split for every run)",
                                lo=0, hi=(1 << 32) - 1)


@dataclass(frozen=True)
class Section:
    """A section of the settings document: its key classes and how its tables nest."""

    name: str
    classes: tuple
    doc: str
    shape: str = "table"  # table | per_layer (a table per layer name) | list (an array of tables)
    training: bool = True  # its settings shape the training (a resumed run compares them)
    resolve: object = None  # table -> the effective table with defaults (table sections)
    subtables: dict = field(default_factory=dict)  # key -> classes of a nested table (docs)


SECTIONS: dict = {}


def register_section(section: Section, replace: bool = False) -> None:
    """A section of the document; ``replace`` fills in one declared here without its classes."""
    if (section.name in SECTIONS) != replace or (replace and SECTIONS[section.name].classes):
        raise EdgeDFAError(f"config section [{section.name}] registered twice or never declared")
    SECTIONS[section.name] = section


register_section(Section("model", (ModelSource,), "The network to train: a built-in architecture or an ONNX file."))
register_section(Section("data", (DataSource,), "The data: a built-in dataset or an .npz file; the validation split."))
register_section(Section("numerics", (Bits, Numerics), "Word widths, rounding and overflow of every layer"
                         " (docs/datapath.md)."))
register_section(Section("layers", (Numerics, LayerOptions), "`[layers.<name>]`: the keys of [numerics] (but"
                         " bits) and these options, for one layer; `backward` is the older spelling of"
                         " `backward_mode`.", shape="per_layer"))
register_section(Section("train", (TrainConfig,), "Training hyper-parameters."))
register_section(Section("modules", (ModuleSettings,), "`[[modules]]`: an explicit credit-assignment plan, one"
                         " entry per module, replacing the plan of `algo` (docs/algorithms.md).", shape="list",
                         subtables={"feedback": (FeedbackSettings,), "layer_options": (PlanLayerOptions,)}))
# the hardware model's own settings (hdl_models.hwconfig), known to the layers above it: they
# fill this section in (edgedfa.session); until then its table is taken as it is
register_section(Section("hardware", (), "The modelled accelerator, read by `edgedfa emulate`.", training=False))


def spec_entry(section: str, key: str):
    """(class, Entry) declaring ``key`` of ``section``, or None."""
    for cls in SECTIONS[section].classes:
        for e in entries(cls):
            if e.name == key:
                return cls, e
    return None


# --------------------------------------------------------------------------- reading and checking

def load_config(path: str) -> dict:
    """A config file as a checked settings document (unknown sections or keys, bad values: the
    error names the file, the section and the key)."""
    return check_doc(read_toml(path), path)


def read_toml(path: str, what: str = "config file") -> dict:
    """A TOML file as a dict; a file that is missing, unreadable or not TOML is one error naming it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as exc:
        raise EdgeDFAError(f"{path}: no such {what}") from exc
    except IsADirectoryError as exc:
        raise EdgeDFAError(f"{path}: is a directory, not a {what}") from exc
    except OSError as exc:
        raise EdgeDFAError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EdgeDFAError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeDFAError(f"{path}: not valid TOML ({exc})") from exc


def check_doc(doc: dict, where: str) -> dict:
    """Every section and key of a settings document checked; values in TOML form."""
    bad = [k for k in doc if k not in SECTIONS]
    if bad:
        raise EdgeDFAError(f"{where}: unknown section(s) {bad}; expected {', '.join(SECTIONS)}")
    out = {}
    for name, table in doc.items():
        out[name] = _CHECKS[SECTIONS[name].shape](SECTIONS[name], table, FLAG if where == FLAG else f"{where} [{name}]")
    return out


def _check_table(section: Section, table, where: str) -> dict:
    if not isinstance(table, dict):
        raise EdgeDFAError(f"{where}: expected a table of settings")
    if not section.classes:
        return dict(table)
    out = {}
    for key, value in table.items():
        hit = spec_entry(section.name, key)
        if hit is None:
            known = [e.name for cls in section.classes for e in entries(cls)]
            raise EdgeDFAError(f"{where}: unknown key {key!r}; expected one of {', '.join(known)}")
        out[key] = plain(check_value(hit[0], key, value, where))
    return out


def _check_per_layer(section: Section, table, where: str) -> dict:
    if not isinstance(table, dict) or any(not isinstance(v, dict) for v in table.values()):
        raise EdgeDFAError(f"{where}: expected one table per layer name, e.g. [layers.dense1]")
    out = {}
    for layer, sub in table.items():
        sub = {LAYER_OPTION_ALIASES.get(k, k): v for k, v in sub.items()}
        out[layer] = _check_table(section, sub, f"{where[:-len('[layers]')]}[layers.{layer}]")
    return out


def _check_list(section: Section, table, where: str) -> list:
    if not isinstance(table, list) or any(not isinstance(v, dict) for v in table):
        raise EdgeDFAError(f"{where}: expected an array of tables ([[{section.name}]])")
    return [_check_table(section, entry, f"{where} entry {i}") for i, entry in enumerate(table)]


_CHECKS = {"table": _check_table, "per_layer": _check_per_layer, "list": _check_list}


# --------------------------------------------------------------------------- merging

def merge(*docs) -> dict:
    """Later documents win key by key (a layer's table key by key, a list as a whole); a key
    that excludes another (``arch``/``onnx``, ``dataset``/``path``) drops it from earlier ones."""
    out: dict = {}
    for doc in docs:
        for name, table in (doc or {}).items():
            shape = SECTIONS[name].shape
            if shape == "list":
                out[name] = list(table)
                continue
            base = dict(out.get(name, {}))
            if shape == "per_layer":
                for layer, sub in table.items():
                    base[layer] = {**base.get(layer, {}), **sub}
            else:
                for key in table:
                    other = spec_entry(name, key)[1].spec.excludes
                    if other and table.get(key) not in (None, NONE):
                        base.pop(other, None)
                base.update(table)
            out[name] = base
    return out


# --------------------------------------------------------------------------- resolving

@dataclass
class RunSettings:
    """Everything a run is built from, and the effective document it was built from."""

    numerics: Numerics
    layer_numerics: dict
    train: TrainConfig
    modules: list | None
    hardware: dict
    model: ModelSource
    data: DataSource
    doc: dict  # effective: every key, defaults included (what config.toml holds)


def _value(section: str, table: dict, key: str):
    cls, e = spec_entry(section, key)
    return check_value(cls, key, table[key], f"[{section}]") if key in table else e.default


def _build(cls, section: str, table: dict, defaults: dict | None = None):
    kw = dict(defaults or {})
    kw.update({e.name: _value(section, table, e.name) for e in entries(cls) if e.name in table})
    return cls(**kw)


def resolve_run(doc: dict | None, where: str = "config") -> RunSettings:
    """Built-in defaults < ``doc``: the objects a run needs and its effective document."""
    doc = check_doc(doc or {}, where)
    model = _build(ModelSource, "model", doc.get("model", {}))
    if model.arch and model.onnx:
        raise EdgeDFAError(f"{where} [model]: arch and onnx exclude each other (--arch or --model)")
    data = _build(DataSource, "data", doc.get("data", {}))
    data.dataset = None if data.path else (data.dataset or "digits")  # a file wins over a name
    data.path = os.path.abspath(data.path) if data.path else None  # the record works from any directory
    model.onnx = os.path.abspath(model.onnx) if model.onnx else None
    kind = "model" if model.onnx else (model.arch or "mlp")
    if not model.onnx:
        model.arch = kind
    table = doc.get("numerics", {})
    bits = _value("numerics", table, "bits")
    base = Numerics.from_bits(bits)
    num_kw = {k: v for k, v in table.items() if k != "bits"}  # the same defaults for every graph (§13)
    numerics = base.with_overrides(num_kw, f"{where} [numerics]")
    check_widths(numerics, f"{_in(where)}[numerics]" + ("" if "bits" not in table else f" (bits = {bits})"))
    layers = doc.get("layers", {})
    for name, sub in layers.items():
        nums = {k: v for k, v in sub.items() if spec_entry("layers", k)[0] is Numerics}
        check_widths(numerics.with_overrides(nums, f"{where} [layers.{name}]"), f"{_in(where)}[layers.{name}]")
    train = _build(TrainConfig, "train", doc.get("train", {}))
    hardware = doc.get("hardware", {})
    effective = {"model": _plain_fields(model), "data": _plain_fields(data),
                 "numerics": {"bits": bits, **_plain_fields(numerics)}, "layers": layers,
                 "train": _plain_fields(train)}
    if "modules" in doc:
        effective["modules"] = doc["modules"]
    for name, section in SECTIONS.items():
        if section.resolve is not None:
            effective[name] = section.resolve(doc.get(name, {}), f"{where} [{name}]")
    return RunSettings(numerics, layers, train, doc.get("modules"), hardware, model, data, effective)


def _in(where: str) -> str:
    return "" if where in (FLAG, "settings") else f"{where} "


def _plain_fields(obj) -> dict:
    return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}


def check_widths(num: Numerics, where: str) -> None:
    """Widths the datapath supports together: the accumulator holds one product (docs/datapath.md §4)."""
    for a, b in (("weight_bits", "act_bits"), ("err_bits", "weight_bits")):
        need = getattr(num, a) + getattr(num, b)
        if num.acc_bits < need:
            raise EdgeDFAError(f"{where}: {a} + {b} = {getattr(num, a)} + {getattr(num, b)} = {need} bits exceed"
                               f" acc_bits = {num.acc_bits} (the accumulator holds at least one product); set"
                               f" acc_bits >= {need} (at most {entry(Numerics, 'acc_bits').spec.hi:g}) or use"
                               " narrower words")
    if num.bias_bits > num.acc_bits:
        raise EdgeDFAError(f"{where}: bias_bits = {num.bias_bits} is wider than acc_bits = {num.acc_bits}")


# --------------------------------------------------------------------------- comparing

def differences(old: dict, new: dict) -> tuple:
    """(fixed, changeable): the (key, old, new) of every training setting that differs, split by
    whether a resumed run may change it."""
    fixed, changeable = [], []
    for name, section in SECTIONS.items():
        if not section.training:
            continue
        a, b = old.get(name, _EMPTY[section.shape]), new.get(name, _EMPTY[section.shape])
        if section.shape != "table":
            if _canon(a) != _canon(b):
                fixed.append((f"[{name}]", a, b))
            continue
        for key in list(dict.fromkeys([*a, *b])):
            va, vb = a.get(key), b.get(key)
            if _canon(va) == _canon(vb):
                continue
            hit = spec_entry(name, key)
            (changeable if hit and hit[1].spec.resume else fixed).append((f"{name}.{key}", va, vb))
    return fixed, changeable


_EMPTY = {"table": {}, "per_layer": {}, "list": []}


def _canon(v):
    if isinstance(v, str) and v.lower() == NONE:
        return None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return v
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    return v


# --------------------------------------------------------------------------- writing

def toml_dumps(doc: dict, header: str = "") -> str:
    """A settings document as TOML that ``load_config`` reads back to the same document
    (None as "none": TOML has no null)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, section in SECTIONS.items():
        if name not in doc:
            continue
        table = doc[name]
        if section.shape == "list":
            for entry in table:
                lines += ["", f"[[{name}]]"] + [f"{_key(k)} = {_toml(v)}" for k, v in entry.items()]
        elif section.shape == "per_layer":
            for layer, sub in table.items():
                lines += ["", f"[{name}.{_key(layer)}]"] + [f"{_key(k)} = {_toml(v)}" for k, v in sub.items()]
        else:
            lines += ["", f"[{name}]"] + [f"{_key(k)} = {_toml(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    bare = k and all(c.isalnum() or c in "-_" for c in k) and k.isascii()
    return k if bare else _string(k)


def _string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml(v) -> str:
    v = plain(v)
    if v is None:
        return _string(NONE)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise EdgeDFAError(f"cannot write {v!r} as TOML")
