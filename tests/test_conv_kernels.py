"""Integer convolution kernels: every backend bit-identical to the direct-loop reference,
and the reference equal to an independent float formula whenever nothing overflows."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, Overflow
from edgedfa.kernels import conv as K

OVERFLOWS = [Overflow.AP_WRAP, Overflow.AP_SAT, Overflow.AP_SAT_SYM, Overflow.AP_SAT_ZERO]


@st.composite
def conv_cases(draw, max_side=7):
    """A random convolution: geometry, int codes of x / w / dy, accumulator width and mode."""
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
    eff = [dil[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    assume(all(spatial[i] + pads[i] + pads[i + nd] >= eff[i] for i in range(nd)))
    geo = K.make_geometry(spatial, kernel, strides, pads, dil, groups)
    batch = draw(st.integers(1, 3))
    bits = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    half = 1 << (bits - 1)
    x = rng.integers(-half, half, size=(batch, cg * groups) + spatial)
    w = rng.integers(-half, half, size=(og * groups, cg) + kernel)
    dy = rng.integers(-half, half, size=(batch, og * groups) + geo.out_spatial())
    init = rng.integers(-4 * half, 4 * half, size=og * groups) if draw(st.booleans()) else None
    acc_bits = draw(st.integers(2 * bits - 2, 2 * bits + 8))
    overflow = draw(st.sampled_from(OVERFLOWS))
    return geo, x, w, dy, init, acc_bits, overflow


@given(conv_cases())
def test_backends_bit_identical(case):
    geo, x, w, dy, init, acc_bits, ov = case
    ref_y = K.conv_forward(x, w, geo, acc_bits, ov, init, "reference")
    ref_dw = K.conv_weight_grad(x, dy, geo, acc_bits, ov, "reference")
    ref_dx = K.conv_input_grad(dy, w, geo, acc_bits, ov, "reference")
    assert ref_y.shape == dy.shape and ref_dw.shape == w.shape and ref_dx.shape == x.shape
    for be in [b for b in K.CONV_BACKENDS if b != "reference"]:
        np.testing.assert_array_equal(K.conv_forward(x, w, geo, acc_bits, ov, init, be), ref_y, err_msg=be)
        np.testing.assert_array_equal(K.conv_weight_grad(x, dy, geo, acc_bits, ov, be), ref_dw, err_msg=be)
        np.testing.assert_array_equal(K.conv_input_grad(dy, w, geo, acc_bits, ov, be), ref_dx, err_msg=be)


# ---------------------------------------------------------------- independent float formulas

def _f4(a, geo):
    """Float64 (B, C, L) -> (B, C, 1, L) for 1-d geometries."""
    a = np.asarray(a, dtype=np.float64)
    return a[:, :, None, :] if geo.ndim == 1 else a


def float_conv(x, w, geo):
    """Float64 convolution written per output position (not per tap as the kernels are)."""
    x4, w4 = _f4(x, geo), _f4(w, geo)
    t, lf, b, r = geo.pads
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (lf, r)))
    cout, cg = w4.shape[:2]
    og = cout // geo.groups
    (sh, sw), (dh, dw), (kh, kw) = geo.strides, geo.dilations, geo.kernel
    y = np.zeros((x4.shape[0], cout) + geo.out_hw)
    for oh in range(geo.out_hw[0]):
        for ow in range(geo.out_hw[1]):
            for j in range(geo.groups):
                win = xp[:, j * cg:(j + 1) * cg, oh * sh:oh * sh + dh * (kh - 1) + 1:dh,
                         ow * sw:ow * sw + dw * (kw - 1) + 1:dw]
                y[:, j * og:(j + 1) * og, oh, ow] = np.einsum("bckl,ockl->bo", win, w4[j * og:(j + 1) * og])
    return K.from4d(y, geo)


def float_conv_adjoint(x, w, dy, geo):
    """(dx, dw) of float_conv by scattering each output position's error back."""
    x4, w4, dy4 = (_f4(a, geo) for a in (x, w, dy))
    t, lf, b, r = geo.pads
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (lf, r)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w4)
    cout, cg = w4.shape[:2]
    og = cout // geo.groups
    (sh, sw), (dh, dwl), (kh, kw) = geo.strides, geo.dilations, geo.kernel
    for oh in range(geo.out_hw[0]):
        for ow in range(geo.out_hw[1]):
            for j in range(geo.groups):
                o, c = slice(j * og, (j + 1) * og), slice(j * cg, (j + 1) * cg)
                win = (slice(None), c, slice(oh * sh, oh * sh + dh * (kh - 1) + 1, dh),
                       slice(ow * sw, ow * sw + dwl * (kw - 1) + 1, dwl))
                dxp[win] += np.einsum("bo,ockl->bckl", dy4[:, o, oh, ow], w4[o])
                dw[o] += np.einsum("bo,bckl->ockl", dy4[:, o, oh, ow], xp[win])
    dx = dxp[:, :, t:t + geo.in_hw[0], lf:lf + geo.in_hw[1]]
    return K.from4d(dx, geo), (dw[:, :, 0] if geo.ndim == 1 else dw)


@given(conv_cases())
def test_reference_equals_float_without_overflow(case):
    geo, x, w, dy, init, _, _ = case
    y = K.conv_forward(x, w, geo, 48, Overflow.AP_SAT, init, "reference")
    expect = float_conv(x, w, geo)
    if init is not None:
        expect = expect + init.reshape((1, -1) + (1,) * geo.ndim)
    np.testing.assert_array_equal(y, expect)
    dx, dw = float_conv_adjoint(x, w, dy, geo)
    np.testing.assert_array_equal(K.conv_input_grad(dy, w, geo, 48, Overflow.AP_SAT, "reference"), dx)
    np.testing.assert_array_equal(K.conv_weight_grad(x, dy, geo, 48, Overflow.AP_SAT, "reference"), dw)


@given(conv_cases())
def test_float_adjoint_identity(case):
    """<dy, conv(x)> == <dx, x> == <dw, w>: the float reference is a true adjoint."""
    geo, x, w, dy, _, _, _ = case
    y = float_conv(x, w, geo)
    dx, dw = float_conv_adjoint(x, w, dy, geo)
    lhs = float((dy * y).sum())
    assert lhs == float((dx * x).sum()) == float((dw * w).sum())


def test_saturation_follows_ascending_k():
    """Under AP_SAT the order of §8 decides: +100, +100 then -100 in 8 bits gives 27, not 100."""
    geo = K.make_geometry((3,), (3,))
    x = np.array([[[1, 1, 1]]])
    w = np.array([[[100, 100, -100]]])
    for be in K.CONV_BACKENDS:
        assert K.conv_forward(x, w, geo, 8, "AP_SAT", None, be).item() == 27
        assert K.conv_forward(x, w, geo, 8, "AP_WRAP", None, be).item() == 100
    dy = np.array([[[1]]])
    for be in K.CONV_BACKENDS:  # dx: each input gets one product, no saturation
        assert K.conv_input_grad(dy, w, geo, 8, "AP_SAT", be).tolist() == [[[100, 100, -100]]]


def test_im2col_column_order_is_channel_row_col():
    x = np.arange(2 * 3 * 3).reshape(1, 2, 3, 3)
    geo = K.make_geometry((3, 3), (2, 2))
    cols = K.im2col(x, geo)
    assert cols.shape == (1, 4, 8)
    # output (0, 0): channel 0 rows 0..1 cols 0..1, then channel 1
    assert cols[0, 0].tolist() == [0, 1, 3, 4, 9, 10, 12, 13]
    assert cols[0, 1].tolist() == [1, 2, 4, 5, 10, 11, 13, 14]


@given(conv_cases(max_side=5))
def test_col2im_is_adjoint_of_im2col(case):
    geo, x, _, _, _, _, _ = case
    x4 = K.to4d(x, geo)
    cols = K.im2col(x4, geo)
    c = np.random.default_rng(1).integers(-9, 10, size=cols.shape)
    assert int((cols * c).sum()) == int((x4 * K.col2im(c, geo, *x4.shape[:2])).sum())


def test_fast_input_grad_both_routes():
    """Wide accumulator: col2im route; narrow: transposed-im2col route; both equal the loops."""
    rng = np.random.default_rng(3)
    geo = K.make_geometry((6, 5), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 2)
    w = rng.integers(-128, 128, size=(4, 2, 3, 2))
    dy = rng.integers(-128, 128, size=(2, 4) + geo.out_hw)
    for acc_bits in (32, 15):
        for ov in OVERFLOWS:
            ref = K.conv_input_grad(dy, w, geo, acc_bits, ov, "reference")
            np.testing.assert_array_equal(K.conv_input_grad(dy, w, geo, acc_bits, ov, "fast"), ref)
    sat = K.conv_input_grad(dy, w, geo, 15, "AP_SAT", "fast")
    assert sat.max() == (1 << 14) - 1 and sat.min() == -(1 << 14)  # the narrow case did saturate


@pytest.mark.parametrize("auto_pad,expect", [("SAME_UPPER", (0, 1, 1, 1)), ("SAME_LOWER", (1, 1, 0, 1)),
                                             ("VALID", (0, 0, 0, 0))])
def test_auto_pad(auto_pad, expect):
    geo = K.make_geometry((5, 5), (2, 3), (2, 1), auto_pad=auto_pad)
    assert geo.pads == expect
    if auto_pad != "VALID":
        assert geo.out_hw == (3, 5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_spatial=(4, 4, 4), kernel=(1, 1, 1)), "1-d and 2-d"),
    (dict(in_spatial=(4, 4), kernel=(5, 5)), "larger than"),
    (dict(in_spatial=(4, 4), kernel=(3,)), "kernel_shape"),
    (dict(in_spatial=(4, 4), kernel=(3, 3), strides=(0, 1)), ">= 1"),
    (dict(in_spatial=(4, 4), kernel=(3, 3), auto_pad="SAME"), "auto_pad"),
])
def test_geometry_errors(kwargs, match):
    with pytest.raises(EdgeDFAError, match=match):
        K.make_geometry(**kwargs)


def test_shape_errors():
    geo = K.make_geometry((4, 4), (3, 3), groups=2)
    with pytest.raises(EdgeDFAError, match="do not fit"):
        K.conv_forward(np.zeros((1, 3, 4, 4), int), np.zeros((2, 1, 3, 3), int), geo)
    with pytest.raises(EdgeDFAError, match="does not match"):
        K.conv_input_grad(np.zeros((1, 2, 3, 3), int), np.zeros((2, 1, 3, 3), int), geo)


@given(st.sampled_from([(1, 1), (1, 2), (1, 4), (2, 2), (2, 4), (4, 4)]), st.integers(0, 99))
def test_block_diagonal_is_masked_dense_weight(groups_pair, seed):
    g, gb = groups_pair
    rng = np.random.default_rng(seed)
    cin, cout = 8, 4
    w = rng.integers(-9, 10, size=(cout, cin // g, 3))
    dense = np.zeros((cout, cin, 3), int)
    for o in range(cout):
        lg = o // (cout // g)
        dense[o, lg * (cin // g):(lg + 1) * (cin // g)] = w[o]
    mask = (np.arange(cout)[:, None] // (cout // gb)) == (np.arange(cin)[None, :] // (cin // gb))
    bd = K.block_diagonal(w, g, gb)
    assert bd.shape == (cout, cin // gb, 3)
    for o in range(cout):
        j = o // (cout // gb)
        np.testing.assert_array_equal(bd[o], (dense * mask[:, :, None])[o, j * (cin // gb):(j + 1) * (cin // gb)])
    if gb == g:
        np.testing.assert_array_equal(bd, w)


def test_block_diagonal_errors():
    with pytest.raises(EdgeDFAError, match="multiple of the layer's group"):
        K.block_diagonal(np.zeros((4, 2, 3)), 2, 3)
    with pytest.raises(EdgeDFAError, match="must divide"):
        K.block_diagonal(np.zeros((4, 6, 3)), 1, 4)
