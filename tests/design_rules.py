"""The design's rules (docs/architecture.md), checked on the source by its syntax tree.

Every import counts, the lazy ones inside functions too. ``from pkg import name`` depends on
the module ``pkg.name`` when there is one, else on ``pkg`` itself; a package's
``__init__`` is a module like the others. ``importlib.import_module("...")`` with a
constant name counts as an import.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from dataclasses import dataclass, field

PACKAGES = ("edgedfa", "hdl_models")

# Lowest first. A module imports only modules of its own layer or of layers below it; a new
# module must be placed here (test_every_module_has_a_layer), and that placement is the
# decision to make on purpose.
LAYERS = [
    ("foundation", ["edgedfa.errors", "edgedfa.version", "edgedfa.registry", "edgedfa.prng", "edgedfa.schema",
                    "edgedfa.progress", "edgedfa.memory"]),
    ("numbers", ["edgedfa.fixed", "edgedfa.rounding", "edgedfa.numerics", "edgedfa.wide", "edgedfa.lut", "edgedfa.scaling"]),
    ("graph", ["edgedfa.graph", "edgedfa.float_ref", "edgedfa.fold_batchnorm", "edgedfa.float_mlp", "edgedfa.data", "edgedfa.arch"]),
    ("kernels", ["edgedfa.kernels", "edgedfa.kernels.*"]),
    ("stages", ["edgedfa.update", "edgedfa.loss", "edgedfa.feedback", "edgedfa.feedback.*",
                "edgedfa.layers", "edgedfa.layers.*"]),
    ("model", ["edgedfa.model", "edgedfa.credit"]),
    ("training", ["edgedfa.train"]),
    ("state", ["edgedfa.checkpoint", "edgedfa.config", "edgedfa.rundir"]),
    ("onnx", ["edgedfa.onnx", "edgedfa.onnx.*"]),
    ("library", ["edgedfa.api"]),
    ("hardware", ["hdl_models", "hdl_models.*"]),
    ("testbench", ["edgedfa.cosim", "edgedfa.cosim.*"]),
    ("benchmarks", ["edgedfa.bench", "edgedfa.bench.*"]),
    ("session", ["edgedfa.session"]),
    ("studies", ["edgedfa.sweep", "edgedfa.sweep.*", "edgedfa.report", "edgedfa.report.*"]),
    ("interface", ["edgedfa.configdoc", "edgedfa.cli", "edgedfa.__main__", "edgedfa"]),
]

# hdl_models computes every integer itself: from edgedfa it takes types, op names, the
# registration mechanism and the settings schema, never arithmetic (kernels, layers, train, credit, model, ...).
HDL_MAY_IMPORT = {
    "edgedfa.errors": {"EdgeDFAError"},
    "edgedfa.fixed": {"FixedFormat", "Rounding", "Overflow"},
    "edgedfa.numerics": {"Numerics"},
    "edgedfa.registry": {"Registry"},
    "edgedfa.schema": {"setting", "check_value", "FLAG"},
    "edgedfa.graph": {"CANONICAL_OPS", "DENSE", "CONV", "ACTIVATIONS", "POOLS", "MOVES", "MERGES",
                      "RECURRENT", "TRAINABLE"},
}

ARITHMETIC_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult,
                  ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor)
ARITHMETIC_CALLS = {"sum", "min", "max", "abs", "round", "pow", "divmod", "mean", "argmax", "argmin", "dot",
                    "matmul", "prod", "std", "var", "log", "exp", "sqrt", "cumsum"}
NUMERIC_MODULES = {"numpy", "math", "statistics", "fractions", "decimal"}
MISSING_REFERENCES = re.compile(r"\b(CONTRACT|FINDINGS)\b|\b[Ii]ssues? #?\d+")  # not in this repository


@dataclass
class Import:
    target: str  # the module depended on (dotted), internal or external
    names: tuple  # names taken from it ("from m import a, b"), () for "import m"
    line: int
    lazy: bool  # inside a function or method


@dataclass
class Module:
    name: str
    path: str
    imports: list = field(default_factory=list)

    def internal(self, modules: dict) -> set:
        return {i.target for i in self.imports if i.target in modules and i.target != self.name}


# --------------------------------------------------------------------------- scanning

def module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def scan(root: str, packages=PACKAGES) -> dict:
    """Module name -> Module for every .py file of ``packages`` under ``root``."""
    paths = {}
    for pkg in packages:
        for dirpath, _, files in os.walk(os.path.join(root, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    paths[module_name(root, path)] = path
    modules = {name: Module(name, path) for name, path in paths.items()}
    for m in modules.values():
        m.imports = list(imports_of(m, set(paths)))
    return modules


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.path.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: Module, known: set):
    """Every import of a module, at any depth of its syntax tree."""
    tree = ast.parse(open(module.path, encoding="utf-8").read(), module.path)
    lazy_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if hasattr(n, "lineno") and n is not f}
    for node in ast.walk(tree):
        lazy = getattr(node, "lineno", 0) in lazy_lines
        if isinstance(node, ast.Import):
            for a in node.names:
                yield Import(a.name, (), node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            plain = [a.name for a in node.names if f"{base}.{a.name}" not in known]
            for a in node.names:
                if f"{base}.{a.name}" in known:  # a submodule: depends on it, not on the package
                    yield Import(f"{base}.{a.name}", (), node.lineno, lazy)
            if plain:
                yield Import(base, tuple(plain), node.lineno, lazy)
        elif _is_import_module_call(node):
            yield Import(node.args[0].value, (), node.lineno, lazy)


def _is_import_module_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."))


# --------------------------------------------------------------------------- rules

def cycles(modules: dict) -> list:
    """Strongly connected groups of more than one module (import cycles), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(modules[v].internal(modules)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_of(name: str, layers=LAYERS):
    """Index of the layer holding module ``name`` (the most specific pattern wins), or None."""
    hits = [(len(p), i) for i, (_, patterns) in enumerate(layers) for p in patterns
            if name == p or fnmatch.fnmatchcase(name, p)]
    return max(hits)[1] if hits else None


def unplaced(modules: dict, layers=LAYERS) -> list:
    return sorted(m for m in modules if layer_of(m, layers) is None)


def upward_imports(modules: dict, layers=LAYERS) -> list:
    """'a (layer) imports b (higher layer)' for every import against the layer order."""
    out = []
    for m in modules.values():
        mine = layer_of(m.name, layers)
        for i in m.imports:
            theirs = layer_of(i.target, layers) if i.target in modules else None
            if mine is not None and theirs is not None and theirs > mine:
                out.append(f"{m.path}:{i.line}: {m.name} ({layers[mine][0]}) imports {i.target} "
                           f"({layers[theirs][0]})")
    return out


def hdl_engine_imports(modules: dict, allowed=HDL_MAY_IMPORT) -> list:
    """Imports of edgedfa by hdl_models beyond its format and configuration types."""
    out = []
    for m in modules.values():
        if not (m.name == "hdl_models" or m.name.startswith("hdl_models.")):
            continue
        for i in m.imports:
            if i.target != "edgedfa" and not i.target.startswith("edgedfa."):
                continue
            extra = set(i.names) - allowed.get(i.target, set()) if i.names else {"(the module)"}
            if i.target not in allowed or extra:
                out.append(f"{m.path}:{i.line}: {m.name} imports {i.target} {sorted(extra)}")
    return out


def onnx_imports_outside(modules: dict, home: str = "edgedfa.onnx") -> list:
    """Imports of the onnx package by any module outside ``home``."""
    return [f"{m.path}:{i.line}: {m.name} imports {i.target}" for m in modules.values()
            if not (m.name == home or m.name.startswith(home + ".")) for i in m.imports
            if i.target == "onnx" or i.target.startswith("onnx.")]


def _stringy(node) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def arithmetic(path: str) -> list:
    """Arithmetic in a module that should only parse, call and print: arithmetic operators
    (string + and % excepted), arithmetic calls, numeric modules."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ARITHMETIC_OPS):
            if not (isinstance(node.op, (ast.Add, ast.Mod)) and (_stringy(node.left) or _stringy(node.right))):
                out.append(f"{where}: {type(node.op).__name__}")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ARITHMETIC_OPS):
            out.append(f"{where}: augmented {type(node.op).__name__}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            out.append(f"{where}: negation")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ARITHMETIC_CALLS:
                out.append(f"{where}: {name}()")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [f"{where}: imports {n}" for n in names if n.split(".")[0] in NUMERIC_MODULES]
    return out


def missing_references(paths) -> list:
    """Lines naming documents or issue numbers that are not in the repository."""
    out = []
    for path in paths:
        for no, line in enumerate(open(path, encoding="utf-8"), 1):
            if MISSING_REFERENCES.search(line):
                out.append(f"{path}:{no}: {line.strip()}")
    return out
