"""The gate-level netlists yosys synthesizes from the RTL, co-simulated like the RTL: what
synthesis makes of the Verilog computes the same bits as hdl_models (a check that the
units are synthesizable as written, not only simulatable)."""

from __future__ import annotations

import pytest

import test_rtl_mac_array as mac
import test_rtl_max_tracker as tracker
import test_rtl_requant as requant
import test_rtl_sparse_epu as epu
import test_rtl_update as update
from rtlsim import examples
from hdl_models.rtl import MODE_PORT

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def gates(units):
    return units.netlists()


def test_requant_netlist(gates):
    p = dict(LANES=1, IN_W=24, OUT_W=6, OUT_SIGNED=1, RND=MODE_PORT, OVF=MODE_PORT)
    requant.check(gates, p, requant.mode_cases(p))


def test_mac_array_netlist(gates):
    p = dict(ROWS=2, COLS=2, A_W=4, B_W=6, ACC_W=12, OVF=MODE_PORT)
    mac.check_array(gates, p, examples(mac.gemms(p, tuple(mac.Overflow)), f"netlist mac array {p}"))


def test_update_netlist(gates):
    p = dict(LANES=1, G_W=16, P_W=6, MOMENTUM=1, V_W=32)
    update.check_updates(gates, p, update.per_mode(p))


def test_sparse_epu_netlist(gates):
    p = dict(LANES=2, E_W=6, VALUES=epu.KIND["ternary"], VB=6, K_MAX=4, C_W=6, N_W=12, BB_W=4, A_W=14, REGEN=1)
    epu.check_projections(gates, p, examples(epu.projections(2, 4, 6, "ternary", 6), "netlist sparse epu"))


def test_max_tracker_netlist(gates):
    tracker.check_tracker(gates, examples(tracker.tracked_tensors(), "netlist max tracker"))
