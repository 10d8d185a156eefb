"""hdl_models against the engine on random small MLPs, and the accelerator's accounting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import arch
from edgedfa.fixed import Overflow, Rounding
from edgedfa.numerics import Numerics
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from edgedfa.cosim import emulate
from hdl_models.hwconfig import HwConfig
from hdl_models.mac_array import MacArray
from hdl_models.requant_unit import requant, saturate


def small_mlp(seed, n_in, hidden, n_classes, bits, n=48, **num):
    model = IntModel(arch.mlp(seed, n_in, tuple(hidden), n_classes), Numerics.from_bits(bits, **num), seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, n_in))
    y = rng.integers(0, n_classes, n)
    model.calibrate(x)
    return model, x, y


def run(model, x, y, steps=1, **cfg):
    return emulate(model, x, y, steps, HwConfig(rows=4, cols=8), train_cfg=TrainConfig(**cfg))


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n_in=st.integers(2, 12), hidden=st.lists(st.integers(1, 12), min_size=1, max_size=2),
       n_classes=st.integers(2, 6), bits=st.integers(4, 12), algo=st.sampled_from(["bp", "dfa", "sdfa"]),
       values=st.sampled_from(["uniform", "binary", "ternary"]), k=st.integers(1, 4), regenerate=st.booleans(),
       batch=st.integers(1, 8), steps=st.integers(1, 2))
def test_mlp_bit_exact(seed, n_in, hidden, n_classes, bits, algo, values, k, regenerate, batch, steps):
    model, x, y = small_mlp(seed, n_in, hidden, n_classes, bits)
    r = run(model, x, y, steps, algo=algo, batch_size=batch, feedback_values=values, feedback_sparsity=k,
            feedback_regenerate=regenerate, lr_shift=2)
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= steps * (2 + 2 * len(hidden))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 12), acc_bits=st.integers(10, 20),
       acc_ovf=st.sampled_from([Overflow.AP_SAT, Overflow.AP_WRAP, Overflow.AP_SAT_SYM]),
       err_rnd=st.sampled_from([Rounding.AP_RND, Rounding.AP_RND_CONV, Rounding.AP_TRN, Rounding.AP_RND_ZERO]),
       upd_rnd=st.sampled_from([Rounding.STOCHASTIC, Rounding.AP_RND_CONV, Rounding.AP_TRN]),
       algo=st.sampled_from(["bp", "dfa", "sdfa"]))
def test_mlp_narrow_accumulators_and_modes(seed, bits, acc_bits, acc_ovf, err_rnd, upd_rnd, algo):
    """Small accumulators make the per-step saturation order of §4 matter."""
    model, x, y = small_mlp(seed, 10, [12], 4, bits, acc_bits=acc_bits, acc_overflow=acc_ovf,
                            err_rounding=err_rnd, update_rounding=upd_rnd, act_rounding=err_rnd)
    r = run(model, x * 4, y, 2, algo=algo, batch_size=8, lr_shift=1)
    assert r["bit_exact"], r["first_mismatch"]


def test_mismatch_is_reported():
    """A corrupted accelerator weight must be caught and located."""
    import hdl_models.controller as ctl

    model, x, y = small_mlp(3, 8, [6], 3, 8)
    orig = ctl.Controller.__init__

    def broken(self, *a, **kw):
        orig(self, *a, **kw)
        w = self.layers["dense3"].params["W"]
        w.codes[0, 0] += 1

    ctl.Controller.__init__ = broken
    try:
        r = run(model, x, y, algo="bp", batch_size=4)
    finally:
        ctl.Controller.__init__ = orig
    assert r["bit_exact"] is False
    assert r["first_mismatch"]["layer"] == "dense3" and r["first_mismatch"]["kind"] in ("fwd", "dx")


# ------------------------------------------------------------------ units
@settings(max_examples=40)
@given(seed=st.integers(0, 2**16), m=st.integers(1, 9), n=st.integers(1, 9), k=st.integers(1, 12),
       width=st.integers(6, 20), ovf=st.sampled_from([Overflow.AP_SAT, Overflow.AP_WRAP, Overflow.AP_SAT_SYM]),
       tile=st.booleans())
def test_mac_array_per_step_overflow(seed, m, n, k, width, ovf, tile):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    init = rng.integers(-(1 << (width - 2)), 1 << (width - 2), (1, n))
    got, st_ = MacArray(3, 4).gemm(a, b, init, width, ovf, tile_by_tile=tile)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    want = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            acc = int(init[0, j])
            for kk in range(k):
                acc += int(a[i, kk]) * int(b[kk, j])
                acc = (((acc - lo) % (1 << width)) + lo if ovf is Overflow.AP_WRAP
                       else min(max(acc, -hi if ovf is Overflow.AP_SAT_SYM else lo), hi))
            want[i, j] = acc
    np.testing.assert_array_equal(got, want)
    assert st_.macs == m * n * k


@given(x=st.integers(-(1 << 40), 1 << 40), s=st.integers(1, 30),
       rnd=st.sampled_from([r for r in Rounding if r is not Rounding.STOCHASTIC]))
def test_requant_unit_matches_fraction_arithmetic(x, s, rnd):
    from fractions import Fraction
    import math

    v = Fraction(x, 1 << s)
    q = math.floor(v)
    r = v - q
    half = Fraction(1, 2)
    up = {Rounding.AP_TRN: False, Rounding.AP_TRN_ZERO: r != 0 and x < 0, Rounding.AP_RND: r >= half,
          Rounding.AP_RND_ZERO: r > half or (r == half and x < 0), Rounding.AP_RND_MIN_INF: r > half,
          Rounding.AP_RND_INF: r > half or (r == half and x >= 0),
          Rounding.AP_RND_CONV: r > half or (r == half and q % 2 == 1)}[rnd]
    from edgedfa.fixed import FixedFormat

    fmt = FixedFormat(48, 48)
    assert int(requant(np.array([x]), s, fmt, rnd, Overflow.AP_SAT)[0]) == q + up
    assert int(saturate(np.array([300]), FixedFormat(8, 8), Overflow.AP_WRAP)[0]) == 300 - 256


# ------------------------------------------------------------------ accounting
@pytest.fixture(scope="module")
def default_mlp():
    from edgedfa.data import digits

    ds = digits()
    model = IntModel(arch.mlp(0), Numerics.from_bits(8), 0)
    model.calibrate(ds.x_train[:256])
    return model, ds.x_train[:64], ds.y_train[:64]


def reports(default_mlp, **variants):
    model, x, y = default_mlp
    return {name: emulate(model, x, y, 1, HwConfig(), train_cfg=TrainConfig(batch_size=32, **cfg))
            for name, cfg in variants.items()}


def error_path(r):
    return [l for l in r["layers"] if l["phase"] == "error"]


def test_accounting_properties(default_mlp):
    rs = reports(default_mlp, bp=dict(algo="bp"), dfa=dict(algo="dfa", feedback_regenerate=False),
                 sdfa=dict(algo="sdfa", feedback_regenerate=False), regen=dict(algo="dfa", feedback_regenerate=True))
    assert all(r["bit_exact"] for r in rs.values())
    fwd = [l for l in rs["bp"]["layers"] if l["layer"] == "dense3" and l["phase"] == "forward"][0]
    assert fwd["macs"] == 32 * 256 * 256  # M*N*K
    ops = lambda r: sum(l["macs"] + l["adds"] for l in error_path(r))  # noqa: E731
    fbytes = lambda r: sum(l["feedback_bytes"] for l in r["layers"])  # noqa: E731
    assert ops(rs["sdfa"]) * 5 < ops(rs["dfa"])
    assert fbytes(rs["sdfa"]) * 5 < fbytes(rs["dfa"]) and fbytes(rs["dfa"]) > 0
    assert fbytes(rs["regen"]) == 0 and rs["regen"]["feedback_memory_bytes"] == 0
    assert rs["dfa"]["cycles"] < rs["bp"]["cycles"] and rs["sdfa"]["cycles"] < rs["bp"]["cycles"]
    assert rs["bp"]["pe_utilization"] <= 1.0


def test_overlap_shortens_dfa_step(default_mlp):
    model, x, y = default_mlp
    cfg = TrainConfig(algo="sdfa", batch_size=32)
    on = emulate(model, x, y, 1, HwConfig(overlap=True), train_cfg=cfg, compare_engine=False)
    off = emulate(model, x, y, 1, HwConfig(overlap=False), train_cfg=cfg, compare_engine=False)
    assert on["cycles"] < off["cycles"] == off["busy_cycles"]


@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), bits=st.integers(4, 12), act=st.sampled_from(["Tanh", "Sigmoid"]),
       algo=st.sampled_from(["bp", "dfa", "sdfa"]), scale=st.sampled_from([0.5, 2.0, 8.0]))
def test_lut_tanh_sigmoid_layers(seed, bits, act, algo, scale):
    """The activation unit's interpolated ROM (§9) against the engine, forward and backward."""
    from edgedfa.graph import Graph, Node

    rng = np.random.default_rng(seed)
    nodes = [Node("d1", "Dense", ["input"], ["h"], {}, {"W": rng.uniform(-1, 1, (10, 5)), "B": np.zeros(10)}),
             Node("a2", act, ["h"], ["a"], {}, {}),
             Node("d3", "Dense", ["a"], ["out"], {}, {"W": rng.uniform(-1, 1, (3, 10)), "B": np.zeros(3)})]
    model = IntModel(Graph("t", "input", (5,), "out", nodes, {}), Numerics.from_bits(bits), seed)
    x = rng.normal(0, scale, (16, 5))
    model.calibrate(x)
    r = run(model, x, rng.integers(0, 3, 16), 2, algo=algo, batch_size=8)
    assert r["bit_exact"], r["first_mismatch"]


def test_tanh_rom_check_values():
    from hdl_models.activation_unit import ROM_CRC32, TANH_ROM

    assert ROM_CRC32 == 0xFBC1031B and int(TANH_ROM[:1024].sum()) == 122523052
