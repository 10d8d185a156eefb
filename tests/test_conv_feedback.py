"""Structured sparse feedback for conv maps (edgedfa.feedback.dilated, docs/datapath.md §8.5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, FixedFormat
from edgedfa.feedback import FeedbackSpec, make_projector
from edgedfa.feedback.dilated import DilatedProjector
from edgedfa.graph import Node
from edgedfa.fixed import QTensor, narrow_dynamic
from edgedfa.layers.base import LayerSpec
from edgedfa.numerics import Numerics
from edgedfa.layers.conv import Conv
from edgedfa.prng import words
from test_conv_kernels import float_conv_adjoint


def spec(values="binary", k=3, **options):
    return FeedbackSpec("dilated", values, k, options=tuple(sorted(options.items())))


def error(rng, batch, c, bits=8):
    return QTensor(rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), size=(batch, c)), FixedFormat(bits, 1))


@st.composite
def projector_cases(draw):
    c = draw(st.integers(2, 12))
    taps = draw(st.integers(1, c))
    nd = draw(st.sampled_from([1, 2]))
    target = (draw(st.integers(1, 5)),) + tuple(draw(st.integers(1, 6)) for _ in range(nd))
    grid = draw(st.sampled_from([None, "full", 1, 2]))
    opts = {}
    if grid is not None:
        opts["grid"] = grid if grid == "full" else tuple(min(grid, s) for s in target[1:])
    if draw(st.booleans()):
        opts["dilation"] = draw(st.integers(1, 4))
    values = draw(st.sampled_from(["binary", "ternary", "uniform"]))
    return spec(values, taps, **opts), draw(st.integers(0, 50)), draw(st.integers(0, 2**32 - 1)), target, c


@given(projector_cases())
def test_regenerated_equals_stored_and_dense_matrix(case):
    fs, layer, seed, target, c = case
    regen = make_projector(fs, layer, seed, target, c)
    stored = make_projector(FeedbackSpec(fs.kind, fs.values, fs.k, fs.bits, False, fs.options), layer, seed,
                            target, c)
    assert isinstance(regen, DilatedProjector) and regen._stored is None and stored._stored is not None
    for a, b in zip(regen.stored_matrix(), stored.stored_matrix()):
        np.testing.assert_array_equal(a, b)
    e = error(np.random.default_rng(seed % 1000), 4, c)
    y1, y2 = regen.project(e, 8, "AP_RND"), stored.project(e, 8, "AP_RND")
    np.testing.assert_array_equal(y1.codes, y2.codes)
    assert y1.fmt == y2.fmt and y1.codes.shape == (4,) + target
    dense = regen.dense_matrix()
    assert dense.shape == (int(np.prod(target)), c)
    wide = e.codes @ dense.T
    expect = narrow_dynamic(wide, FixedFormat.with_frac(32, e.fmt.frac_bits + regen.frac_bits()), 8, "AP_RND")
    np.testing.assert_array_equal(y1.codes.reshape(4, -1), expect.codes)
    # sparsity: at most `taps` classes per unit, binary/ternary values are +-1 (adders only)
    assert ((dense != 0).sum(axis=1) <= regen.taps).all()
    distinct = len({(m * regen.dilation) % c for m in range(regen.taps)}) == regen.taps
    if fs.values != "uniform" and distinct:
        assert set(np.unique(dense).tolist()) <= {-1, 0, 1}
        if fs.values == "binary":
            assert ((dense != 0).sum(axis=1) == regen.taps).all()


def test_bits_follow_the_spec_text():
    """Offsets and kernel recomputed from §5/§8.5 alone."""
    fs = spec("ternary", 3, grid=(2, 1), dilation=2)
    p = make_projector(fs, 4, 99, (3, 4, 5), 10)
    stream_val, stream_idx = (4 << 8) | 3, (4 << 8) | 4
    w_idx = words(99, stream_idx, 0, (3, 2, 1)).astype(np.int64)
    offsets = (w_idx * 10) >> 32
    top = words(99, stream_val, 0, (3, 3)).astype(np.int64) >> 30
    kernel = np.where(top == 3, 1, np.where(top == 0, -1, 0))
    got_o, got_k = p.stored_matrix()
    np.testing.assert_array_equal(got_o, offsets)
    np.testing.assert_array_equal(got_k, kernel)
    dense = p.dense_matrix().reshape(3, 4, 5, 10)
    for c in range(3):
        for h in range(4):
            for w in range(5):
                row = np.zeros(10, int)
                for m in range(3):
                    row[(offsets[c, h * 2 // 4, 0] + 2 * m) % 10] += kernel[c, m]
                np.testing.assert_array_equal(dense[c, h, w], row)


def test_default_is_per_channel_and_shared_across_positions():
    p = make_projector(spec("binary", 2), 1, 5, (6, 4, 4), 10)
    assert p.grid == (1, 1) and p.dilation == 5
    y = p.project(error(np.random.default_rng(0), 3, 10), 8, "AP_RND").codes
    assert (y == y[:, :, :1, :1]).all()  # one value per (sample, channel)
    assert p.memory_bits() == 6 * 4 + 6 * 2 and p.macs_per_sample() == 6 * 2
    full = make_projector(spec("binary", 2, grid="full"), 1, 5, (6, 4, 4), 10)
    assert full.memory_bits() == 6 * 16 * 4 + 6 * 2 and full.macs_per_sample() == 6 * 16 * 2


def test_layers_and_seeds_get_different_feedback():
    a = make_projector(spec(), 1, 5, (8, 3, 3), 10).dense_matrix()
    b = make_projector(spec(), 2, 5, (8, 3, 3), 10).dense_matrix()
    c = make_projector(spec(), 1, 6, (8, 3, 3), 10).dense_matrix()
    assert (a != b).any() and (a != c).any()


@pytest.mark.parametrize("options,match", [
    ({"taps": 11}, "taps 11"),
    ({"dilation": 0}, "dilation 0"),
    ({"grid": (5, 1)}, "grid"),
    ({"grid": "half"}, "grid"),
])
def test_bad_options(options, match):
    with pytest.raises(EdgeDFAError, match=match):
        make_projector(spec("binary", 1, **options), 1, 0, (4, 4, 4), 10)


def test_dfa_step_direction_matches_float():
    """One DFA step of a conv layer fed by dilated feedback: the integer dW (8 bits) points
    the same way as the float dW computed with the same feedback matrix (cosine > 0.95)."""
    rng = np.random.default_rng(8)
    w = rng.uniform(-0.5, 0.5, (8, 2, 3, 3))
    layer = Conv(Node("c", "Conv", ["x"], ["y"], {"pads": [1, 1, 1, 1]}, {"W": w}),
                 LayerSpec(1, Numerics(), 3, [(2, 6, 6)]))
    fmt = FixedFormat(8, 1)
    from edgedfa import quantize
    x = QTensor(quantize(rng.uniform(-1, 1, (32, 2, 6, 6)), fmt), fmt)
    layer.calibrate([x])
    y, cache = layer.forward([x], train=True)
    proj = make_projector(spec("binary", 3, grid=(2, 2)), 1, 3, (8, 6, 6), 10)
    e = error(rng, 32, 10)
    fb = proj.project(e, 8, "AP_RND")
    dy = QTensor(np.where(y.codes > 0, fb.codes, 0), fb.fmt)  # relu derivative
    _, grads = layer.backward(cache, dy, [False])
    f_dy = (e.value() @ proj.dense_matrix().T.astype(float)).reshape(y.codes.shape) * (y.codes > 0)
    _, f_dw = float_conv_adjoint(x.value(), layer.params["W"].value(), f_dy, layer.geo)
    got = grads["W"].value()
    assert (got * f_dw).sum() / np.linalg.norm(got) / np.linalg.norm(f_dw) > 0.95
