"""The §9 table unit: table contents, error bounds, symmetry, derivatives, Tanh/Sigmoid layers."""

from __future__ import annotations

import math
import zlib
from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import formats

from edgedfa import lut
from edgedfa.fixed import FixedFormat, quantize
from edgedfa.graph import Node
from edgedfa.fixed import QTensor
from edgedfa.layers.base import LayerSpec, layer_class
from edgedfa.numerics import Numerics


def exact_tanh(k: int) -> Decimal:
    getcontext().prec = 50
    e = (Decimal(2 * k) / Decimal(128)).exp()
    return (e - 1) / (e + 1)


def test_table_is_the_correctly_rounded_tanh_with_no_near_ties():
    t = lut.TANH_TABLE
    assert t.shape == (1025,) and t[0] == 0 and t[1024] == 1 << 17 and t.max() == 1 << 17
    assert np.all(np.diff(t) >= 0)
    margins = []
    for k in range(1024):
        scaled = exact_tanh(k) * (1 << 17)
        assert t[k] == int((scaled + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))
        margins.append(abs(float(scaled - int(scaled)) - 0.5))
    assert min(margins) > 1e-4  # float64 tanh (any libm) rebuilds the same table
    assert int(t[:1024].sum()) == 122_523_052 and zlib.crc32(t[:1024].astype("<u4").tobytes()) == 0xFBC1031B


def spec_tanh(q: int, f_in: int, f_out: int, w_out: int, sigmoid=False) -> int:
    """§9 written out with Python integers, from the text alone (AP_RND = add half, floor)."""
    mag = abs(q)
    shift = f_in + (1 if sigmoid else 0) - 16
    u = mag << -shift if shift <= 0 else (mag + (1 << (shift - 1))) >> shift
    u = min(u, (1 << 19) - 1)
    k, r = u >> 9, u & 511
    T = [math.floor(math.tanh(i / 128) * (1 << 17) + 0.5) for i in range(1024)] + [1 << 17]
    y = (T[k] << 9) + (T[k + 1] - T[k]) * r
    hi = (1 << (w_out - 1)) - 1
    if sigmoid:
        w = (1 << 26) + (y if q >= 0 else -y)
        s = 27 - f_out
        return min(hi, (w + (1 << (s - 1))) >> s)
    s = 26 - f_out
    m = min(hi, (y + (1 << (s - 1))) >> s)
    return -m if q < 0 else m


def test_a_plain_integer_reading_of_the_spec_gives_the_same_codes():
    rng = np.random.default_rng(0)
    for in_fmt, out_fmt in (("ap_fixed<8,3>", "ap_fixed<8,1>"), ("ap_fixed<32,9>", "ap_fixed<16,1>"),
                            ("ap_fixed<20,2>", "ap_fixed<12,1>"), ("ap_fixed<6,6>", "ap_fixed<10,2>")):
        i, o = FixedFormat.parse(in_fmt), FixedFormat.parse(out_fmt)
        q = rng.integers(i.min_code, i.max_code + 1, size=300)
        for sig, fn in ((False, lut.tanh_codes), (True, lut.sigmoid_codes)):
            want = [spec_tanh(int(v), i.frac_bits, o.frac_bits, o.width, sig) for v in q]
            assert fn(q, i, o).tolist() == want


@pytest.mark.parametrize("func", ["tanh", "sigmoid"])
def test_core_error_before_output_rounding(func):
    core = lut.TANH_CORE_BOUND if func == "tanh" else lut.SIGMOID_CORE_BOUND
    measured = max(lut.max_error(func, None, fmt, 1 << 18) for fmt in ("ap_fixed<40,6>", "ap_fixed<24,5>"))
    assert measured <= core
    assert measured >= 0.3 * core  # the analytic bound is not wildly loose


@pytest.mark.parametrize("func", ["tanh", "sigmoid"])
@pytest.mark.parametrize("width", [4, 6, 8, 12, 16, 20])
def test_max_error_within_stated_bound(func, width):
    out = FixedFormat(width, 1)
    err = lut.max_error(func, out, "ap_fixed<32,6>", 1 << 17)
    assert err <= lut.error_bound(func, out)
    assert err >= 0.5 * out.lsb  # rounding to the output grid is visible


@given(in_fmt=formats(min_width=1, max_width=48, signed=True, min_frac=-8, max_frac=44),
       width=st.integers(2, 20), int_bits=st.integers(1, 3), data=st.data())
def test_any_input_and_output_format(in_fmt, width, int_bits, data):
    out = FixedFormat(width, int_bits)
    q = np.array(data.draw(st.lists(st.integers(in_fmt.min_code, in_fmt.max_code), min_size=1, max_size=40)))
    x = q * 2.0 ** -in_fmt.frac_bits
    for fn, ref, name in ((lut.tanh_codes, np.tanh(x), "tanh"), (lut.sigmoid_codes, 0.5 + 0.5 * np.tanh(x / 2), "sigmoid")):
        y = fn(q, in_fmt, out)
        assert np.all(np.abs(y * out.lsb - ref) <= lut.error_bound(name, out))
        assert np.all((y >= out.min_code) & (y <= out.max_code))


def test_tanh_is_odd_sigmoid_is_symmetric_and_both_monotone():
    fmt, out = FixedFormat(12, 4), FixedFormat(8, 1)
    q = np.arange(fmt.min_code + 1, fmt.max_code + 1)
    t, s = lut.tanh_codes(q, fmt, out), lut.sigmoid_codes(q, fmt, out)
    assert np.array_equal(t, -lut.tanh_codes(-q, fmt, out))
    assert np.abs(s + lut.sigmoid_codes(-q, fmt, out) - (1 << out.frac_bits)).max() <= 1
    assert np.all(np.diff(t) >= 0) and np.all(np.diff(s) >= 0)
    assert t.min() == -out.max_code and s.min() >= 0


@pytest.mark.parametrize("width", [6, 8, 16])
def test_integer_derivatives_from_output_codes(width):
    out = FixedFormat(width, 1)
    x = np.linspace(-9, 9, 4001)
    fmt = FixedFormat(32, 6)
    q = quantize(x, fmt)
    xv = q * fmt.lsb
    t, s = lut.tanh_codes(q, fmt, out), lut.sigmoid_codes(q, fmt, out)
    dt, ds = lut.dtanh_codes(t, out), lut.dsigmoid_codes(s, out)
    ft, fs = lut.dtanh_format(out), lut.dsigmoid_format(out)
    assert str(ft) == f"ap_ufixed<{width},1>" and str(fs) == f"ap_ufixed<{width},-1>"
    et, es = lut.error_bound("tanh", out), lut.error_bound("sigmoid", out)
    assert np.abs(dt * ft.lsb - (1 - np.tanh(xv) ** 2)).max() <= 2 * et + et * et + ft.lsb / 2
    sig = 0.5 + 0.5 * np.tanh(xv / 2)
    assert np.abs(ds * fs.lsb - sig * (1 - sig)).max() <= es + fs.lsb / 2
    assert dt.max() == 1 << out.frac_bits and ds.max() == 1 << (fs.frac_bits - 2)  # 1 and 1/4


@pytest.mark.parametrize("op,f,df", [("Tanh", np.tanh, lambda y: 1 - y * y),
                                    ("Sigmoid", lambda v: 0.5 + 0.5 * np.tanh(v / 2), lambda y: y * (1 - y))])
def test_tanh_and_sigmoid_layers(op, f, df):
    num = Numerics.from_bits(8)
    layer = layer_class(op)(Node("a", op, ["x"], ["y"]), LayerSpec(2, num, 0, [(5,)]))
    assert str(layer.out_fmt) == "ap_fixed<8,1>" and not layer.trainable
    rng = np.random.default_rng(3)
    xf = FixedFormat(16, 4)
    x = QTensor(quantize(rng.normal(size=(64, 5)) * 2, xf), xf)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    assert np.abs(y.value() - f(x.value())).max() <= lut.error_bound(op.lower(), y.fmt)
    dy = QTensor(rng.integers(-127, 128, size=(64, 5)), FixedFormat(8, 1))
    dxs, grads = layer.backward(cache, dy, [True])
    dx = dxs[0]
    assert grads == {} and dx.fmt.width == 8
    ref = dy.value() * df(f(x.value()))
    assert np.abs(dx.value() - ref).max() <= 0.02 * np.abs(ref).max()
