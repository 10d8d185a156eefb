"""The compiled max pooling (kernels/pool.py) against the patch-based numpy form it replaced."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.errors import EdgeDFAError
from edgedfa.kernels import conv as K
from edgedfa.kernels.pool import PAD, _inside, _tiled, max_backward, max_forward


def reference_forward(x4, geo):
    """MaxPool's numpy forward before the kernel: argmax over the (B, C, K, OH, OW) patches."""
    p = K.patches(x4, geo, PAD)
    flat = p.reshape(p.shape[:2] + (geo.k,) + geo.out_hw)
    arg = flat.argmax(axis=2)
    return np.take_along_axis(flat, arg[:, :, None], axis=2)[:, :, 0], arg


def reference_backward(arg, dy4, geo):
    """MaxPool's numpy backward before the kernel: per-tap errors scattered onto the padded input."""
    taps = np.arange(geo.k).reshape(geo.kernel)
    per_tap = np.where(arg[:, :, None, None] == taps[None, None, :, :, None, None], dy4[:, :, None, None], 0)
    t, lf, bo, r = geo.pads
    h, w = geo.in_hw
    xp = np.zeros(dy4.shape[:2] + (h + t + bo, w + lf + r), dtype=np.int64)
    for kh in range(geo.kernel[0]):
        for kw in range(geo.kernel[1]):
            xp[K.tap_slice(geo, kh, kw)] += per_tap[:, :, kh, kw]
    return xp[:, :, t:t + h, lf:lf + w]


@st.composite
def pool_cases(draw):
    one_d = draw(st.booleans())
    n = 1 if one_d else 2
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(n))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple(draw(st.integers(0, (kernel[i % n] - 1) * dil[i % n])) for i in range(2 * n))
    try:
        geo = K.make_geometry(spatial, kernel, tuple(draw(st.integers(1, 3)) for _ in range(n)), pads, dil,
                              ceil_mode=draw(st.booleans()))
    except EdgeDFAError:
        assume(False)
    assume(min(geo.out_hw) >= 1)
    return geo, *draw(codes(geo, st.sampled_from([-(1 << 47), (1 << 47) - 1, PAD, 0]), 47))


@st.composite
def codes(draw, geo, rails, bits):
    """(input codes, output errors) for a geometry: many ties, the given rails, wide values."""
    small = st.integers(-3, 3)
    x = draw(hnp.arrays(np.int64, (2, 3) + geo.in_hw,
                        elements=st.one_of(small, rails, st.integers(-(1 << bits), 1 << bits))))
    dy = draw(hnp.arrays(np.int64, (2, 3) + geo.out_hw, elements=st.integers(-(1 << 40), 1 << 40)))
    return x, dy


@settings(max_examples=300, deadline=None)
@given(case=pool_cases())
def test_compiled_max_pool_is_the_numpy_form(case):
    geo, x, dy = case
    y, arg = max_forward(x, geo)
    y_ref, arg_ref = reference_forward(x, geo)
    assert y.dtype == y_ref.dtype and np.array_equal(y, y_ref)
    assert arg.dtype == arg_ref.dtype and np.array_equal(arg, arg_ref)
    dx = max_backward(arg, dy, geo)
    assert dx.dtype == np.int64 and np.array_equal(dx, reference_backward(arg_ref, dy, geo))


@st.composite
def unpadded_pool_cases(draw):
    """Windows that never reach padding (the kernels' fast paths): tiling ones and others."""
    n = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    if draw(st.booleans()):  # tiled: stride = kernel, the map a whole number of windows
        strides, dil = kernel, (1,) * n
        spatial = tuple(k * draw(st.integers(1, 4)) for k in kernel)
    else:
        strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
        dil = tuple(draw(st.integers(1, 2)) for _ in range(n))
        spatial = tuple((k - 1) * d + draw(st.integers(1, 8)) for k, d in zip(kernel, dil))
    geo = K.make_geometry(spatial, kernel, strides, (0,) * (2 * n), dil)
    return geo, *draw(codes(geo, st.sampled_from([-(1 << 62), (1 << 62) - 1, 0]), 62))


@settings(max_examples=200, deadline=None)
@given(case=unpadded_pool_cases())
def test_the_unpadded_fast_paths_are_the_numpy_form(case):
    geo, x, dy = case
    assert _inside(geo)
    y, arg = max_forward(x, geo)
    y_ref, arg_ref = reference_forward(x, geo)
    assert np.array_equal(y, y_ref) and np.array_equal(arg, arg_ref) and arg.dtype == arg_ref.dtype
    dx = max_backward(arg, dy, geo)
    assert dx.dtype == np.int64 and np.array_equal(dx, reference_backward(arg_ref, dy, geo))


def test_the_fast_paths_serve_the_usual_pools():
    assert _tiled(K.make_geometry((28, 28), (2, 2), (2, 2))) and _inside(K.make_geometry((28, 28), (2, 2), (2, 2)))
    assert _inside(K.make_geometry((9, 9), (3, 3), (2, 2))) and not _tiled(K.make_geometry((9, 9), (3, 3), (2, 2)))
    assert not _inside(K.make_geometry((8, 8), (3, 3), (1, 1), (1, 1, 1, 1)))
