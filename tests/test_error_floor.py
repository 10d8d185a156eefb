"""No error is finer than 2^-32 (datapath §7): a narrowed error whose block exponent would go
below it is rounded there, in the engine and in hdl_models alike, so that errors made small by
a confident network cannot push a product past the 64 fraction bits a format holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import wide_codes

from edgedfa.cosim import emulate
from edgedfa.fixed import ERR_FRAC_MAX, narrow_wide, round_shift
from edgedfa.graph import Graph, Node
from edgedfa.model import IntModel
from edgedfa.numerics import Numerics
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig
from hdl_models.requant_unit import narrow as hw_narrow

DETERMINISTIC = st.sampled_from(["AP_RND", "AP_RND_CONV", "AP_TRN", "AP_RND_ZERO", "AP_RND_INF"])


@given(x=st.lists(wide_codes(60), min_size=1, max_size=30), bits=st.integers(2, 32),
       frac=st.integers(-8, 120), rounding=DETERMINISTIC)
def test_narrowed_errors_stop_at_the_floor_in_both_implementations(x, bits, frac, rounding):
    codes = np.array(x, dtype=np.int64)
    q = narrow_wide(codes, frac, bits, rounding)
    hw_codes, hw_fmt = hw_narrow(codes, frac, bits, rounding)
    assert q.fmt == hw_fmt and q.codes.tolist() == hw_codes.tolist()
    lim = (1 << (bits - 1)) - 1
    s = max(0, int(np.abs(codes).max()).bit_length() - (bits - 1), frac - 64)
    want = np.clip(round_shift(codes, s, rounding), -lim - 1, lim)  # the top bits: one rounding
    if frac - s > ERR_FRAC_MAX:  # then the floor: a second one
        want = np.clip(round_shift(want, frac - s - ERR_FRAC_MAX, rounding), -lim - 1, lim)
    assert q.codes.tolist() == want.tolist()
    assert q.fmt.frac_bits == min(frac - s, ERR_FRAC_MAX)


def sigmoid_mlp(depth: int, seed: int) -> Graph:
    """``depth`` Dense layers with small weights and sigmoids between them: the forward stays
    in the sigmoids' bounded format, the error shrinks by ~2^-5 per layer on its way back."""
    rng = np.random.default_rng(seed)
    nodes, prev = [], "input"
    for i in range(depth):
        last = i == depth - 1
        w = rng.uniform(-0.05, 0.05, (3 if last else 8, 8))
        nodes.append(Node(f"fc{i}", "Dense", [prev], [f"d{i}"], {}, {"W": w, "B": np.zeros(len(w))}))
        prev = f"d{i}"
        if not last:
            nodes.append(Node(f"sig{i}", "Sigmoid", [prev], [f"s{i}"], {}, {}))
            prev = f"s{i}"
    return Graph("deep", "input", (8,), prev, nodes, {})


@pytest.mark.parametrize("algo", ["bp", "hybrid"])
def test_a_settled_deep_network_trains_at_16_bits_bit_exact(algo):
    """Before the floor, the error's fraction grew with every layer it went back through and
    a Dense layer's backward refused its accumulator's format (more than 64 fraction bits)."""
    graph = sigmoid_mlp(9, 1)
    model = IntModel(graph, Numerics.from_bits(16), 1)
    rng = np.random.default_rng(2)
    model.calibrate(rng.uniform(0, 1, (32, 8)))
    x, y = rng.uniform(0, 1, (8, 8)), np.zeros(8, dtype=np.int64)
    r = emulate(model, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=4, algo=algo))
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 12
