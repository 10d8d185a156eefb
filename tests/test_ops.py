"""The one list of canonical ops (edgedfa.graph.CANONICAL_OPS): every op has an integer layer,
a float reference, a hardware layer and both export paths, and nothing else is registered."""

from __future__ import annotations

import pytest

from edgedfa.float_ref import OPS as FLOAT_REF
from edgedfa.graph import CANONICAL_OPS, MOVES, RECURRENT, TRAINABLE
from edgedfa.layers import supported_ops
from edgedfa.onnx.export_float import FLOAT_OPS
from edgedfa.onnx.export_int import INT_OPS
from hdl_models.layers import HW_LAYERS

TABLES = {"layer": supported_ops, "float reference": FLOAT_REF.names, "hardware layer": HW_LAYERS.names,
          "float/qdq export": FLOAT_OPS.names, "int export": INT_OPS.names}


def test_canonical_ops_are_unique_and_families_are_within_them():
    assert len(set(CANONICAL_OPS)) == len(CANONICAL_OPS)
    assert set(MOVES + RECURRENT + TRAINABLE) <= set(CANONICAL_OPS)


@pytest.mark.parametrize("where", sorted(TABLES))
def test_every_canonical_op_has_an_implementation(where):
    names = set(TABLES[where]())
    assert not set(CANONICAL_OPS) - names, f"canonical ops without a {where}"
    assert not names - set(CANONICAL_OPS), f"{where}s of ops that are not canonical"
