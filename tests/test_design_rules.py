"""The design's rules hold for the source tree, and each check fails on a module that breaks it."""

from __future__ import annotations

import glob
import os
import textwrap

import pytest

import design_rules as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = R.scan(ROOT)


# --------------------------------------------------------------------------- the tree

def test_the_import_graph_has_no_cycle():
    assert R.cycles(MODULES) == []


def test_every_module_has_a_layer():
    assert R.unplaced(MODULES) == []


def test_no_module_imports_upwards():
    assert R.upward_imports(MODULES) == []


def test_hdl_models_imports_no_engine_arithmetic():
    assert R.hdl_engine_imports(MODULES) == []


def test_only_edgedfa_onnx_imports_onnx():
    assert R.onnx_imports_outside(MODULES) == []


def test_the_cli_only_parses_calls_and_prints():
    assert R.arithmetic(os.path.join(ROOT, "edgedfa", "cli.py")) == []


def test_no_reference_to_documents_or_issues_outside_the_repository():
    mine = {os.path.abspath(R.__file__), os.path.abspath(__file__)}
    paths = [p for d in ("edgedfa", "hdl_models", "tools", "tests")
             for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True) if os.path.abspath(p) not in mine]
    assert R.missing_references(paths) == []


def test_the_scan_sees_lazy_imports_and_every_package():
    assert {"edgedfa", "edgedfa.cli", "hdl_models.controller", "edgedfa.cosim.driver"} <= set(MODULES)
    lazy = [i for i in MODULES["edgedfa"].imports if i.lazy]
    assert {"edgedfa.api", "edgedfa.checkpoint"} <= {i.target for i in lazy}


# --------------------------------------------------------------------------- each check fails when broken

def tree(tmp_path, files: dict) -> dict:
    """A source tree of ``files`` (path -> source) scanned like the real one."""
    for rel, src in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    return R.scan(str(tmp_path))


BASE = {"edgedfa/__init__.py": "", "edgedfa/errors.py": "", "edgedfa/fixed.py": "from .errors import X\n",
        "edgedfa/kernels/__init__.py": "from ..fixed import Y\n", "hdl_models/__init__.py": ""}


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    mods = tree(tmp_path, {**BASE, "edgedfa/errors.py": "def f():\n    from .fixed import Z\n"})
    assert R.cycles(mods) == [["edgedfa.errors", "edgedfa.fixed"]]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    mods = tree(tmp_path, {**BASE, "edgedfa/kernels/__init__.py": "from . import conv\n",
                           "edgedfa/kernels/conv.py": "from . import gemm\n"})
    assert R.cycles(mods) == [["edgedfa.kernels", "edgedfa.kernels.conv"]]


def test_an_upward_import_is_found(tmp_path):
    mods = tree(tmp_path, {**BASE, "edgedfa/fixed.py": "def f():\n    from .kernels import gemm\n"})
    assert R.upward_imports(mods) and "edgedfa.fixed (numbers) imports edgedfa.kernels (kernels)" in R.upward_imports(mods)[0]


def test_an_unplaced_module_is_found(tmp_path):
    mods = tree(tmp_path, {**BASE, "edgedfa/newthing.py": ""})
    assert R.unplaced(mods) == ["edgedfa.newthing"]


@pytest.mark.parametrize("src", ["from edgedfa.kernels import gemm\n", "from edgedfa.fixed import requantize\n",
                                 "import edgedfa\n", "def f():\n    from edgedfa.layers.dense import Dense\n"])
def test_hdl_models_importing_engine_arithmetic_is_found(tmp_path, src):
    mods = tree(tmp_path, {**BASE, "hdl_models/unit.py": src})
    assert len(R.hdl_engine_imports(mods)) == 1


def test_hdl_models_may_import_types(tmp_path):
    mods = tree(tmp_path, {**BASE, "hdl_models/unit.py": "from edgedfa.fixed import FixedFormat, Overflow\n"})
    assert R.hdl_engine_imports(mods) == []


def test_onnx_outside_its_package_is_found(tmp_path):
    mods = tree(tmp_path, {**BASE, "edgedfa/onnx/__init__.py": "import onnx\n",
                           "edgedfa/model.py": "def f():\n    from onnx import helper\n"})
    assert [m.split(": ")[1] for m in R.onnx_imports_outside(mods)] == ["edgedfa.model imports onnx"]


def test_arithmetic_in_the_cli_is_found(tmp_path):
    path = tmp_path / "cli.py"
    path.write_text(textwrap.dedent("""\
        import numpy as np

        def cmd(args, y):
            print("--" + args.name, "%d" % 3, f"{args.x:.2f}")  # string building is fine
            acc = (args.logits.argmax(axis=1) == y).mean()
            n = args.a * 2
            return -n
        """))
    found = R.arithmetic(str(path))
    assert len(found) == 5, found  # numpy, argmax(), mean(), *, negation


def test_references_to_missing_documents_are_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("x = 1  # as " + "CON" + "TRACT says\ny = 2  # see is" + "sue 12\nz = '#444'\n")
    assert len(R.missing_references([str(path)])) == 2
