"""BatchNorm (docs/datapath.md §8.7): the rsqrt table and its error bound, the reciprocal, the
layer against float BN (inference and training forward within the stated bound, gradients,
running statistics), the refusal of sums beyond 62 bits."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, quantize
from edgedfa.graph import Node
from edgedfa.layers import LayerSpec
from edgedfa.layers.batchnorm import (EPS_FRAC, GUARD, RSQRT_TABLE, BatchNorm, gain_unit, momentum_shift,
                                      reciprocal, rsqrt)
from edgedfa.numerics import Numerics

RSQRT_BOUND = 1.44e-5  # §8.7: interpolation + table + input floor + output rounding
RSQRT_MEASURED = 1.341e-5


def test_rsqrt_table_check_values():
    assert len(RSQRT_TABLE) == 385 and RSQRT_TABLE[0] == 1 << 20 and RSQRT_TABLE[384] == 1 << 19
    assert sum(RSQRT_TABLE) == 269_222_188
    assert zlib.crc32(struct.pack("<385I", *RSQRT_TABLE)) == 0x893C2D5F
    assert list(RSQRT_TABLE) == [math.floor(2 ** 20 / math.sqrt(1 + j / 128) + 0.5) for j in range(385)]
    steps = [a - b for a, b in zip(RSQRT_TABLE, RSQRT_TABLE[1:])]
    assert min(steps) == 513 and max(steps) == 4072


def test_rsqrt_error_bound_over_every_input_segment():
    """Every 16-bit mantissa u, and both ends of the interval [u, u + 1) it stands for."""
    worst = 0.0
    for u in range(1 << 16, 1 << 18):
        t, f = rsqrt(u, 16)  # value u·2^-16 in [1, 4): k = 0
        assert f == 23 and (1 << 22) <= t <= (1 << 23)
        for m in (u, u + 1):
            worst = max(worst, abs(t * 2.0 ** -f * math.sqrt(m * 2.0 ** -16) - 1))
    assert RSQRT_MEASURED - 1e-8 <= worst <= RSQRT_MEASURED + 1e-8 < RSQRT_BOUND


@given(st.integers(1, (1 << 62) - 1), st.integers(-40, 90))
def test_rsqrt_any_value_and_fraction(v, frac):
    t, f = rsqrt(v, frac)
    exact = (v * 2.0 ** -frac) ** -0.5
    assert abs(t * 2.0 ** -f / exact - 1) <= RSQRT_BOUND
    assert rsqrt(0, frac) == (0, 0)


@given(st.integers(1, 1 << 40))
def test_reciprocal_of_a_count(n):
    r, L = reciprocal(n)
    assert L == math.ceil(math.log2(n)) if n & (n - 1) else L == n.bit_length() - 1
    assert abs(r * 2.0 ** -(32 + L) * n - 1) <= 2.0 ** -33
    if n & (n - 1) == 0:
        assert r == 1 << 32


def test_momentum_is_the_nearest_power_of_two():
    assert [momentum_shift(m) for m in (0.9, 0.8, 0.99, 0.5, 0.0, 1.0)] == [3, 2, 7, 1, 0, 16]
    assert momentum_shift(np.float32(0.9)) == 3  # PyTorch's 0.1 as exported


def test_gain_unit_caps_the_shift():
    assert gain_unit(0, 50, 4, 10) == (0, 0, 10 - 4 - GUARD)
    iota, k, f = gain_unit(3 << 40, 50, 4, 10)  # 42 bits: the top 23 kept
    assert iota == 3 << 21 and f == 50 - 19 and k == 4 + GUARD + f - 10 == 33
    iota, k, f = gain_unit(1 << 30, 100, 4, 10)  # a gain far below an LSB of x̂ per LSB of x
    assert k == 36 and f == 36 + 10 - 4 - GUARD
    iota, k, f = gain_unit(1 << 30, -10, 4, 10)  # a gain far above: the mantissa saturates
    assert k == 0 and iota == 1 << 23


# --------------------------------------------------------------------------- the layer

def make_layer(rng, channels, spatial, num: Numerics, eps=1e-5, momentum=0.9):
    params = {"scale": rng.uniform(0.5, 1.5, channels), "B": rng.uniform(-0.5, 0.5, channels),
              "mean": rng.uniform(-0.5, 0.5, channels), "var": rng.uniform(0.3, 2.0, channels)}
    node = Node("bn", "BatchNorm", ["x"], ["y"], {"epsilon": eps, "momentum": momentum}, params)
    return BatchNorm(node, LayerSpec(1, num, 0, [(channels,) + tuple(spatial)]))


def batch(rng, shape, x_fmt: FixedFormat, loc=0.3, spread=1.0):
    x = rng.normal(loc, spread, shape) * rng.uniform(0.2, 1.0, (1, shape[1]) + (1,) * (len(shape) - 2))
    return QTensor(quantize(x, x_fmt), x_fmt)


def float_bn(x, gamma, beta, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = 1 / np.sqrt(var + eps)
    return (x - mean.reshape(shape)) * (inv * gamma).reshape(shape) + beta.reshape(shape), inv.reshape(shape)


def bound(layer, x, f_x, mean, inv, extra=0.0):
    """§8.7 Accuracy: per element, while nothing saturates."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g = np.abs(layer.params["scale"].value()).reshape(shape)
    var = 1 / inv ** 2 - layer.node.attrs["epsilon"]
    delta = 1.44e-5 + 2.0 ** -23 + 2.0 ** -42 / (var + layer.node.attrs["epsilon"])
    lsb_acc = 2.0 ** -(layer.params["scale"].fmt.frac_bits + layer.xhat_fmt.frac_bits)
    per_x = layer.xhat_fmt.lsb / 2 + np.abs(x - mean) * inv * delta + inv * 2.0 ** -(f_x + GUARD + 1) + extra * inv
    return layer.out_fmt.lsb / 2 + lsb_acc / 2 + g * per_x


@pytest.mark.parametrize("spatial", [(), (7,), (3, 5)])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_forward_within_the_stated_bound(spatial, bits):
    rng = np.random.default_rng(bits + len(spatial))
    num = Numerics.from_bits(bits)
    x_fmt = FixedFormat(bits, 3)
    layer = make_layer(rng, 6, spatial, num)
    x = batch(rng, (40, 6) + spatial, x_fmt)
    layer.calibrate([x])
    xv = x.value()
    g, b = layer.params["scale"].value(), layer.params["B"].value()
    eps = layer.node.attrs["epsilon"]
    # training forward: the batch's statistics
    axes = (0,) + tuple(range(2, xv.ndim))
    mu, var = xv.mean(axis=axes), xv.var(axis=axes)
    y, cache = layer.forward([x], train=True)
    ref, inv = float_bn(xv, g, b, mu, var, eps)
    shape = (1, -1) + (1,) * len(spatial)
    inside = np.abs(y.codes) < y.fmt.max_code
    err = np.abs(y.value() - ref)
    assert (err <= bound(layer, xv, x_fmt.frac_bits, mu.reshape(shape), inv, np.abs(mu).reshape(shape) * 2.0 ** -33))[inside].all()
    # inference: the running statistics (just updated by that step)
    rm, rv = layer.params["mean"].value(), layer.params["var"].value()
    y = layer.forward([x], train=False)[0]
    ref, inv = float_bn(xv, g, b, rm, rv, eps)
    inside = np.abs(y.codes) < y.fmt.max_code
    assert (np.abs(y.value() - ref) <= bound(layer, xv, x_fmt.frac_bits, rm.reshape(shape), inv))[inside].all()
    assert inside.mean() > 0.95


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("spatial", [(), (9,), (4, 4)])
def test_gradients_match_float_batchnorm(spatial):
    rng = np.random.default_rng(len(spatial))
    num = Numerics.from_bits(8)
    layer = make_layer(rng, 5, spatial, num)
    x = batch(rng, (32, 5) + spatial, FixedFormat(8, 3))
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    dy = QTensor(rng.integers(-127, 128, y.codes.shape), FixedFormat(8, 1))
    (dx,), grads = layer.backward(cache, dy, [True])
    xv, g = x.value(), layer.params["scale"].value().reshape((1, -1) + (1,) * len(spatial))
    axes = (0,) + tuple(range(2, xv.ndim))
    n = xv.size // xv.shape[1]
    inv = 1 / np.sqrt(xv.var(axis=axes, keepdims=True) + 1e-5)
    xhat = (xv - xv.mean(axis=axes, keepdims=True)) * inv
    d = np.where(cache["live"].reshape(y.codes.shape), dy.value(), 0.0)
    db, dg = d.sum(axis=axes), (d * xhat).sum(axis=axes)
    dx_ref = g * inv / n * (n * d - db.reshape(g.shape) - xhat * dg.reshape(g.shape))
    assert cosine(grads["B"].value(), db) > 0.9999
    assert cosine(grads["scale"].value(), dg) > 0.999
    assert cosine(dx.value(), dx_ref) > 0.99
    assert dx.fmt.width == num.err_bits


def test_running_statistics_follow_the_batch_as_pytorch_does():
    rng = np.random.default_rng(3)
    layer = make_layer(rng, 4, (6,), Numerics.from_bits(8), momentum=0.9)
    x = batch(rng, (20, 4, 6), FixedFormat(8, 3), loc=1.0)
    layer.calibrate([x])
    rm0, rv0 = layer.params["mean"].value(), layer.params["var"].value()
    layer.forward([x], train=True)
    xv = x.value()
    mu, var_u = xv.mean(axis=(0, 2)), xv.var(axis=(0, 2), ddof=1)  # PyTorch keeps the unbiased one
    k = 2.0 ** -momentum_shift(0.9)
    mean, var = layer.params["mean"], layer.params["var"]
    # the batch mean is kept to 2^-(F_x + G), the EMA rounds to the running statistic's LSB
    np.testing.assert_allclose(mean.value(), rm0 + k * (mu - rm0), rtol=0,
                               atol=k * 2.0 ** -(x.fmt.frac_bits + GUARD + 1) + mean.fmt.lsb)
    np.testing.assert_allclose(var.value(), rv0 + k * (var_u - rv0), rtol=2.0 ** -32, atol=var.fmt.lsb)
    one = QTensor(x.codes[:1, :, :1], x.fmt)  # one value per channel: the variance stays
    layer2 = make_layer(np.random.default_rng(3), 4, (1,), Numerics.from_bits(8))
    layer2.calibrate([one])
    before = layer2.params["var"].codes.copy()
    layer2.forward([one], train=True)
    np.testing.assert_array_equal(layer2.params["var"].codes, before)


def test_epsilon_is_an_integer_of_2_to_the_minus_40():
    layer = make_layer(np.random.default_rng(0), 2, (), Numerics.from_bits(8), eps=1e-5)
    assert layer.eps_code == round(1e-5 * 2 ** EPS_FRAC)
    with pytest.raises(EdgeDFAError, match="epsilon"):
        make_layer(np.random.default_rng(0), 2, (), Numerics.from_bits(8), eps=-1.0)


def test_sums_beyond_62_bits_are_refused_by_name():
    num = Numerics.from_bits(24)
    layer = make_layer(np.random.default_rng(0), 2, (256, 256), num)
    x = QTensor(np.zeros((2, 2, 256, 256), np.int64), FixedFormat(24, 4))
    with pytest.raises(EdgeDFAError, match="'bn'.*62"):
        layer.batch_statistics(x)
