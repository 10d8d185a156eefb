"""Settings as data: every configuration field carries its meaning and allowed values.

A configuration dataclass declares each field with ``setting(default, doc, ...)``; from the
field's type and that metadata follow the strict check of a value read from a config file
or a flag (``check_value``), the text of ``docs/config.md`` (``allowed``), the command-line
flag when one is named, and whether a resumed run may change the value (``resume``).
Adding a field is one line.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     width: int = setting(8, "word width", lo=2, hi=24)
>>> check_value(Demo, "width", 12, "demo.toml")
12
>>> check_value(Demo, "width", True, "demo.toml")
Traceback (most recent call last):
...
edgedfa.errors.EdgeDFAError: demo.toml: width = true: expected an integer in 2..24
"""

from __future__ import annotations

import enum
import functools
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from .errors import EdgeDFAError

NONE = "none"  # how a config file spells "unset" (TOML has no null)
FLAG = "command line"  # ``where`` of a value given by its flag: the error names the flag


@dataclass(frozen=True)
class Spec:
    """What a setting means and which values it takes (the metadata of one field)."""

    doc: str
    lo: float | None = None  # inclusive bounds of a number (of each item for a list)
    hi: float | None = None
    choices: tuple | typing.Callable | None = None  # allowed strings (or a function giving them)
    none: str | None = None  # what "none" means, when the field may be unset
    resume: bool = False  # a resumed run may change it (applied and recorded in the history)
    flag: str | None = None  # the command-line flag that sets it
    metavar: str | None = None
    increasing: bool = False  # a list: strictly increasing
    excludes: str | None = None  # a key of the same table this one replaces (arch / onnx)
    const: object = None  # a flag without a value stores this (e.g. --stored-feedback: False)
    words: str | None = None  # allowed values in words, for a field of type ``object`` (checked where used)

    def options(self) -> tuple:
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices or ())


def setting(default=MISSING, doc: str = "", *, factory=MISSING, **spec):
    """A dataclass field with its ``Spec`` (``factory`` for mutable defaults)."""
    meta = {"setting": Spec(doc, **spec)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Entry:
    """One setting of a configuration class: name, resolved type, optional, spec, default."""

    name: str
    kind: type  # int, float, bool, str, list, dict or an Enum class
    optional: bool
    spec: Spec
    default: object
    item: type | None = None  # a list's item type (int or str)


@functools.cache
def entries(cls) -> tuple:
    """The settings of a dataclass, in field order; a field without a Spec is an error."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with schema.setting(...)")
        kind, optional, item = _kind(hints[f.name])
        default = f.default_factory() if f.default is MISSING else f.default
        out.append(Entry(f.name, kind, optional, spec, default, item))
    return tuple(out)


def entry(cls, name: str) -> Entry | None:
    return next((e for e in entries(cls) if e.name == name), None)


def _kind(hint):
    """(kind, optional, list item type) of a type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0])[0], True, _kind(rest[0])[2]
    origin = typing.get_origin(hint)
    return (origin or hint), False, (args[0] if origin is list and args else None)


# --------------------------------------------------------------------------- checking

def allowed(e: Entry) -> str:
    """The allowed values of a setting, in words."""
    s = e.spec
    if e.kind is object:
        text = s.words or "any value"
    elif e.kind is bool:
        text = "true or false"
    elif isinstance(e.kind, type) and issubclass(e.kind, enum.Enum):
        text = "one of " + ", ".join(s.options() or e.kind.__members__)
    elif e.kind is str:
        text = "one of " + ", ".join(s.options()) if s.options() else "a string"
    elif e.kind is list and e.item is str:
        text = "a list of strings"
    elif e.kind is list:
        text = ("a strictly increasing " if s.increasing else "a ") + "list of " + _number("integer", s, plural=True)
    elif e.kind is dict:
        text = "a table"
    else:
        text = _number("integer" if e.kind is int else "number", s)
    return text + (f', or "{NONE}" ({s.none})' if e.optional else "")


def _number(what: str, s: Spec, plural: bool = False) -> str:
    what = what + ("s" if plural else "")
    art = "" if plural else ("an " if what[0] in "aeiou" else "a ")
    if s.lo is not None and s.hi is not None:
        return f"{art}{what} in {_n(s.lo)}..{_n(s.hi)}"
    if s.lo is not None:
        return f"{art}{what} >= {_n(s.lo)}"
    if s.hi is not None:
        return f"{art}{what} <= {_n(s.hi)}"
    return f"{art}{what}"


def _n(v) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def check_value(cls, name: str, value, where: str):
    """``value`` for setting ``name`` of ``cls``, checked strictly (a bool is no integer);
    returns it in the field's type; EdgeDFAError names the key, the value and what is allowed."""
    e = entry(cls, name)
    if e is None:
        raise EdgeDFAError(f"{where}: unknown key {name!r}; expected one of {', '.join(names(cls))}")
    if e.optional and (value is None or (isinstance(value, str) and value.strip().lower() == NONE)):
        return None
    ok, out = _convert(e, value)
    if not ok:
        said = f"{e.spec.flag} {_show(value)}" if where == FLAG and e.spec.flag else f"{where}: {name} = {_show(value)}"
        raise EdgeDFAError(f"{said}: expected {allowed(e)}")
    return out


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _convert(e: Entry, v):
    """(ok, value in the field's type)."""
    s = e.spec
    if e.kind is object:
        return True, v
    if e.kind is bool:
        return isinstance(v, bool), v
    if isinstance(e.kind, type) and issubclass(e.kind, enum.Enum):
        key = v.strip().upper() if isinstance(v, str) else None
        ok = key in e.kind.__members__ and (not s.options() or key in s.options())
        return ok, e.kind[key] if ok else None
    if e.kind is str:
        return isinstance(v, str) and (not s.options() or v in s.options()), v
    if e.kind is dict:
        return isinstance(v, dict), v
    if e.kind is list and e.item is str:
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), list(v) if isinstance(v, (list, tuple)) else v
    if e.kind is list:
        if not isinstance(v, (list, tuple)) or not all(_in_range(x, s, int) for x in v):
            return False, None
        steps_up = all(a < b for a, b in zip(v, v[1:]))
        return steps_up or not s.increasing, [int(x) for x in v]
    if not _in_range(v, s, e.kind):
        return False, None
    return True, e.kind(v)


def _in_range(v, s: Spec, kind) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
        return False
    if kind is float and not math.isfinite(v):
        return False
    return (s.lo is None or v >= s.lo) and (s.hi is None or v <= s.hi)


def check_table(cls, table, where: str) -> dict:
    """Every key of a config table checked against ``cls``: {name: value in its type}."""
    if not isinstance(table, dict):
        raise EdgeDFAError(f"{where}: expected a table of settings, got {_show(table)}")
    return {k: check_value(cls, k, v, where) for k, v in table.items()}


def names(cls) -> list:
    return [e.name for e in entries(cls)]


def plain(value):
    """A setting's value as TOML/JSON sees it: enums by name, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return list(value)
    return value
