"""RTL co-simulation tests (marker ``rtl``): skipped with the reason when Icarus Verilog or
cocotb is missing, except in CI (CI=true), where a missing tool is a failure."""

import os

import pytest

from rtlsim import Units, missing_tools

collect_ignore = ["tb_vectors.py"]  # a cocotb module: it runs inside the simulator only


@pytest.fixture(scope="session")
def units(tmp_path_factory):
    reason = missing_tools()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"RTL tests need their tools in CI: {reason}")
        pytest.skip(f"RTL co-simulation skipped: {reason}")
    return Units(tmp_path_factory.mktemp("rtl"))
