"""hdl_models' compiled loops (lanes.py: the update unit's Adam, max trackers; layers/window.py: the
address generator's im2col and transposed im2col, max pooling) against the numpy forms, bit for bit."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat
from edgedfa.numerics import Numerics
from edgedfa.kernels.geometry import make_geometry
from hdl_models import lanes
from hdl_models.layers import window
from hdl_models.layers.conv import im2col_reference, transposed_im2col_reference, transposed_taps
from hdl_models.layers.pool import NEG_PAD, scatter
from hdl_models.layers.window import out_hw
from hdl_models.mac_array import F32_EXACT, MacArray, operand_dtype
from hdl_models.update_unit import UpdateUnit, top_bits

from hdl_models.requant_unit import (from_float, from_float_reference, narrow, requant_reference, requant_tracked,
                                     saturate, shift_round)

from strategies import (adam_operands, floats_near, formats, moment_registers, overflow_modes, rounding_modes,
                        wide_codes)

INT64_MIN = -(1 << 63)


@st.composite
def adam_cases(draw):
    op = draw(adam_operands())
    num = Numerics.from_bits(8, update_rule="adam", moment_bits=op["bits"], beta1_shift=op["beta1"],
                             beta2_shift=op["beta2"])
    moments = {k: v for k in ("m", "v") if (v := draw(moment_registers(op["shape"], op["bits"]))) is not None}
    return dict(p=op["p"], p_fmt=op["pfmt"], g=op["g"], f_g=op["gfmt"].frac_bits, lr=op["lr"],
                rounding=draw(rounding_modes(stochastic=True)), weight_overflow=draw(overflow_modes()),
                seed=draw(st.integers(0, 2**32 - 1)), layer_index=draw(st.integers(0, 5)),
                purpose=draw(st.sampled_from([1, 2, 16])), step=op["step"], num=num, moments=moments)


def _run(method, case):
    """(outcome, moments after, PRNG words counted) of one update through a fresh unit."""
    unit = UpdateUnit()
    moments = {k: (np.copy(c), f) for k, (c, f) in case["moments"].items()}
    try:
        out = getattr(unit, method)(**dict(case, moments=moments))
    except EdgeDFAError as err:
        out = ("error", str(err))
    return out, moments, unit.prng.words_generated


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None)
@given(case=adam_cases())
def test_compiled_adam_lanes_are_the_numpy_unit_bit_for_bit(case):
    assert _same(_run("adam", case), _run("adam_reference", case))


@settings(max_examples=100, deadline=None)
@given(case=adam_cases(), scales=st.lists(st.integers(-12, 12), min_size=2, max_size=6))
def test_adam_lanes_on_one_unit_over_steps_whose_shifts_move(case, scales):
    """One update unit carried from step to step against the reference, the gradient rescaled
    each step so that the registers' narrowing shifts move up and down."""
    unit, ref_unit = UpdateUnit(), UpdateUnit()
    fast, ref = {}, {}
    p_fast = p_ref = case["p"]
    for s, k in enumerate(scales):
        g = case["g"] >> -k if k < 0 else np.clip(case["g"], -(1 << 40), 1 << 40) << k
        args = dict(case, g=g, step=s)
        try:
            got = unit.adam(**dict(args, p=p_fast, moments=fast))
        except EdgeDFAError as err:
            got = ("error", str(err))
        try:
            want = ref_unit.adam_reference(**dict(args, p=p_ref, moments=ref))
        except EdgeDFAError as err:
            want = ("error", str(err))
        assert _same(got, want) and _same(fast, ref)
        if not isinstance(got[0], np.ndarray):
            break
        p_fast, p_ref = got[0], want[0]


@settings(max_examples=200, deadline=None)
@given(case=adam_cases())
def test_update_unit_tracks_the_max_of_what_it_writes(case):
    """The peak the exponent unit reads off the update unit's output is max |new code|."""
    unit = UpdateUnit()
    try:
        new, _ = unit.adam(**dict(case, moments={k: (np.copy(c), f) for k, (c, f) in case["moments"].items()}))
    except EdgeDFAError:
        return
    assert unit.peak is None or unit.peak == lanes.maxabs(new)


@settings(max_examples=100, deadline=None)
@given(case=adam_cases(), steps=st.integers(2, 5))
def test_compiled_adam_lanes_follow_the_reference_over_steps(case, steps):
    fast, ref = dict(case, moments={}), dict(case, moments={})
    for s in range(steps):  # the registers carried from step to step, as a layer carries them
        got, want = _run("adam", dict(fast, step=s)), _run("adam_reference", dict(ref, step=s))
        assert _same(got, want)
        fast["moments"], ref["moments"] = got[1], want[1]
        if not isinstance(got[0][0], np.ndarray):
            break
        fast["p"], ref["p"] = got[0][0], want[0][0]


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                    elements=st.one_of(wide_codes(64), st.just(INT64_MIN))), transpose=st.booleans())
def test_maxabs_is_numpys_including_the_int64_rail(x, transpose):
    x = x.T if transpose else x
    want = int(np.max(np.abs(x))) if x.size else 0
    assert lanes.maxabs(x) == want


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.int64, st.integers(0, 9), elements=wide_codes(64)), width=st.integers(4, 32),
       frac=st.integers(-64, 64))
def test_moment_narrowing_matches_top_bits(x, width, frac):
    codes, f = top_bits(x, frac, width)
    d = max(0, lanes.maxabs(x).bit_length() - (width - 1))
    assert f == frac - d
    assert np.array_equal(lanes.round_clamp(x, d, (1 << (width - 1)) - 1), codes)


@settings(max_examples=300, deadline=None)
@given(q=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
                    elements=st.one_of(wide_codes(64), st.just(INT64_MIN), st.integers(-1 << 20, 1 << 20))),
       f_in=st.one_of(st.integers(12, 22), st.integers(-70, 80)),  # mid-ROM addresses, or any shift
       out=st.one_of(formats(min_width=12, max_width=30, min_frac=12, max_frac=28),
                     formats(min_width=2, max_width=48, min_frac=-8, max_frac=60)),
       rounding=rounding_modes(stochastic=True), gate=st.sampled_from(["tanh", "sigmoid", "normal_cdf"]),
       transpose=st.booleans())
def test_compiled_rom_gates_are_the_numpy_unit(q, f_in, out, rounding, gate, transpose):
    """tanh, sigmoid and GELU's Phi through their ROMs (address at every shift, left or right,
    the rails, every output format and rounding) against the numpy forms, raising where they
    raise."""
    from hdl_models import activation_unit as act

    q = q.T if transpose else q
    fast, ref = getattr(act, gate), getattr(act, f"{gate}_reference")
    outcome = []
    for fn in (fast, ref):
        try:
            outcome.append(fn(q, f_in, out, rounding))
        except EdgeDFAError as err:
            outcome.append(("error", str(err)))
    assert _same(*outcome)


@st.composite
def cell_terms(draw, same_shape: bool):
    """Terms of the cell unit's ⊕ / concatenation: absent, all zero, small or at the int64
    rails, at any fraction; same-shaped, or blocks of one height and any widths."""
    from hdl_models.layers.recurrent import V

    rows = draw(st.integers(1, 3))
    widths = [draw(st.integers(0, 4))] * 4 if same_shape else [draw(st.integers(0, 4)) for _ in range(4)]
    terms = []
    for w in widths[:draw(st.integers(1, 4))]:
        kind = draw(st.sampled_from(["none", "zero", "small", "wide"]))
        if kind == "none":
            terms.append(None)
            continue
        elems = st.integers(-300, 300) if kind == "small" else st.one_of(wide_codes(64), st.just(INT64_MIN))
        codes = draw(hnp.arrays(np.int64, (rows, w), elements=elems))
        if kind == "zero":
            codes[...] = 0
        terms.append(V(codes, draw(st.one_of(st.integers(-8, 40), st.integers(-120, 120)))))
    return terms


def _outcome(fn, *args):
    try:
        out = fn(*args)
    except EdgeDFAError as err:
        return ("error", str(err))
    return None if out is None else (out.codes, out.frac)


@settings(max_examples=400, deadline=None)
@given(terms=cell_terms(same_shape=True), rounding=rounding_modes(stochastic=True))
def test_compiled_cell_sum_is_the_numpy_form(terms, rounding):
    """⊕ through the compiled aligners against the term-by-term numpy form (common fraction
    near the 2^60 guard, rails, right shifts past 62, dead and absent terms)."""
    from hdl_models.layers.recurrent import oplus, oplus_reference

    assert _same(_outcome(oplus, terms, rounding), _outcome(oplus_reference, terms, rounding))


def test_adam_lanes_fall_back_when_a_register_shift_leaves_the_lane():
    num = Numerics.from_bits(8, update_rule="adam")
    p, g = np.array([3, -5, 7], dtype=np.int64), np.array([100, -3, 0], dtype=np.int64)
    old = (np.array([1, 2, 3], dtype=np.int64), -200)  # F 200 bits coarser than g's: no 64-bit lane shifts it
    case = dict(p=p, p_fmt=FixedFormat(8, 1), g=g, f_g=10, lr=3, rounding="STOCHASTIC", weight_overflow="AP_SAT",
                seed=1, layer_index=0, purpose=1, step=3, num=num, moments={"m": old})
    got, want = _run("adam", case), _run("adam_reference", case)
    assert _same(got, want)
    assert got[2] == 3  # the reference drew the words


@st.composite
def window_cases(draw):
    """A window geometry (1-d or 2-d, strides, pads, dilations), codes under it incl. ties and
    rails, and errors for its outputs."""
    n = draw(st.sampled_from([1, 2]))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(n))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple(draw(st.integers(0, (kernel[i % n] - 1) * dil[i % n])) for i in range(2 * n))
    try:
        geo = make_geometry(spatial, kernel, tuple(draw(st.integers(1, 3)) for _ in range(n)), pads, dil)
    except EdgeDFAError:
        assume(False)
    assume(min(out_hw(geo)) >= 1)
    rails = st.sampled_from([-(1 << 47), (1 << 47) - 1, NEG_PAD, 0])
    x = draw(hnp.arrays(np.int64, (2, 4) + geo.in_hw, elements=st.one_of(st.integers(-3, 3), rails,
                                                                         st.integers(-(1 << 47), 1 << 47))))
    dy = draw(hnp.arrays(np.int64, (2, 4) + out_hw(geo), elements=st.integers(-(1 << 40), 1 << 40)))
    return geo, x, dy


@settings(max_examples=300, deadline=None)
@given(case=window_cases(), c0=st.integers(0, 2), cg=st.integers(1, 2))
def test_compiled_address_loops_are_the_numpy_forms(case, c0, cg):
    geo, x, dy = case
    assert np.array_equal(window.im2col(x, geo, c0, cg), im2col_reference(x, geo, c0, cg))
    oh_i, ow_i = transposed_taps(geo, geo.in_hw, out_hw(geo))
    tcol = window.gather_rows(dy, oh_i, ow_i, c0, cg)
    assert tcol.dtype == np.int64 and np.array_equal(tcol, transposed_im2col_reference(dy, oh_i, ow_i, c0, cg))
    small = np.clip(x, -(1 << 23), (1 << 23) - 1)  # float32 holds these exactly
    for dtype in (np.float32, np.float64):
        got = window.im2col(small, geo, c0, cg, dtype)
        assert got.dtype == dtype and np.array_equal(got.astype(np.int64), im2col_reference(small, geo, c0, cg))


@settings(max_examples=300, deadline=None)
@given(case=window_cases())
def test_compiled_max_pool_is_the_numpy_form(case):
    geo, x, dy = case
    flat = window.patches(x, geo, NEG_PAD).reshape(x.shape[:2] + out_hw(geo) + (-1,))
    arg_ref = flat.argmax(axis=4)  # first maximal tap in (kh, kw) order
    y, arg = window.window_max(x, geo, NEG_PAD)
    assert np.array_equal(y, np.take_along_axis(flat, arg_ref[..., None], axis=4)[..., 0])
    assert np.array_equal(arg, arg_ref)
    k = geo.kernel[0] * geo.kernel[1]
    per_tap = np.where(arg_ref[..., None] == np.arange(k), dy[..., None], 0).reshape(dy.shape + tuple(geo.kernel))
    assert np.array_equal(window.route_back(arg, dy, geo, x.shape), scatter(per_tap, geo, x.shape))


def _gemm_loops(a, b, init, width):
    """Saturating accumulator registers, one k at a time (§4), in Python integers."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    acc = [[min(max(int(init[0, j]), lo), hi) for j in range(b.shape[1])] for _ in range(a.shape[0])]
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            for kk in range(a.shape[1]):
                acc[i][j] = min(max(acc[i][j] + int(a[i, kk]) * int(b[kk, j]), lo), hi)
    return np.array(acc, dtype=np.int64).reshape(a.shape[0], b.shape[1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(1, 4), n=st.integers(1, 4), k=st.integers(1, 1400),
       bits=st.sampled_from([(8, 8), (12, 12), (16, 16), (24, 8), (30, 30)]), width=st.sampled_from([24, 32, 48]),
       as_float=st.booleans(), rails=st.booleans())
def test_mac_array_float_operands_and_k_slices_are_exact(seed, m, n, k, bits, width, as_float, rails):
    """Operands stored in float (as the gathers write them) and products over slices of k (a
    long k whose float32 partial sums would pass 2^24) give the per-step registers."""
    rng = np.random.default_rng(seed)
    ta, tb = (1 << (bits[0] - 1)) - 1, (1 << (bits[1] - 1)) - 1
    a = rng.integers(-ta, ta + 1, (m, k))
    b = rng.integers(-tb, tb + 1, (k, n))
    if rails:  # every product at its largest: the partial sums run to k * ta * tb
        a[:], b[:] = ta, -tb
    init = rng.integers(-(1 << 20), 1 << 20, (1, n))
    want = _gemm_loops(a, b, init, width)
    ops = [x.astype(operand_dtype(int(np.abs(x).max()))) if as_float else x for x in (a, b)]
    got, _ = MacArray(4, 4).gemm(*ops, init, width, "AP_SAT", a_max=int(np.abs(a).max()))
    np.testing.assert_array_equal(got, want)


def test_k_sliced_float32_product_is_taken_where_the_whole_sum_would_round():
    """k * 127 * 127 passes 2^24 at k = 1041, an odd sum float32 cannot hold: still exact."""
    k = 1041
    a, b = np.full((2, k), 127), np.full((k, 3), 127)
    assert k * 127 * 127 > F32_EXACT and float(np.float32(k * 127 * 127)) != k * 127 * 127
    got, _ = MacArray().gemm(a.astype(np.float32), b, None, 48, "AP_SAT")
    assert (got == k * 127 * 127).all()


@settings(max_examples=400, deadline=None)
@given(x=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
                    elements=st.one_of(wide_codes(64), st.sampled_from([INT64_MIN, -(1 << 62), 7, -7]))),
       dst=formats(), f_src=st.integers(-8, 80), rounding=rounding_modes(),
       overflow=overflow_modes(), transpose=st.booleans())
def test_compiled_requantizer_is_the_numpy_unit(x, dst, f_src, rounding, overflow, transpose):
    """Every shift (left shifts, 0..62 and beyond take their own path), rounding and overflow
    mode, signed and unsigned formats, values at the int64 rails, non-contiguous layouts."""
    x = x.T if transpose else x
    try:
        want = requant_reference(x, f_src, dst, rounding, overflow)
    except EdgeDFAError:
        return  # a left shift out of 64 bits: the unit refuses it on either path
    got, top = requant_tracked(x, f_src, dst, rounding, overflow)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert top == lanes.maxabs(x)


def test_compiled_requantizer_on_every_mode_at_the_edges():
    """Each shift 0..62 x rounding x overflow x signedness on ties, residuals of 1 and 2^s - 1,
    the code range's edges after the shift and the int64 rails."""
    from edgedfa.fixed import Overflow, Rounding

    for s in range(63):
        base = np.array([0, 1, -1, 2, 3, 5, 127, 128, -128, -129, 255, 256, 1 << 20, -(1 << 30)], dtype=np.int64)
        edge = np.concatenate([(base << min(s, 30)) + d for d in (0, 1, -1, (1 << s) >> 1, ((1 << s) >> 1) - 1)])
        x = np.concatenate([edge, [INT64_MIN, INT64_MIN + 1, (1 << 63) - 1, -(1 << 62), (1 << 62) - 1]])
        for dst in (FixedFormat(8, 3), FixedFormat(12, 12, signed=False), FixedFormat(1, 1), FixedFormat(32, 5)):
            for rnd in [r for r in Rounding if r is not Rounding.STOCHASTIC]:
                for ovf in Overflow:
                    f_src = dst.frac_bits + s
                    want = requant_reference(x, f_src, dst, rnd, ovf)
                    got, top = requant_tracked(x, f_src, dst, rnd, ovf)
                    assert np.array_equal(got, want), (s, dst, rnd, ovf)
                    assert top == lanes.maxabs(x)


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.int64, st.integers(0, 12), elements=wide_codes(60)), width=st.integers(2, 16),
       f=st.integers(0, 40), rounding=rounding_modes())
def test_narrowing_through_the_lanes_is_shift_round_and_saturate(x, width, f, rounding):
    codes, fmt = narrow(x, f, width, rounding)
    s = max(0, int(np.abs(x).max(initial=0)).bit_length() - (width - 1))
    top = FixedFormat.with_frac(width, f - s)
    want = saturate(shift_round(x, s, rounding), top, "AP_SAT")
    if top.frac_bits > 32:  # then once more to the error floor, 2^-32
        want = saturate(shift_round(want, top.frac_bits - 32, rounding), fmt, "AP_SAT")
    assert fmt.frac_bits == min(top.frac_bits, 32)
    assert np.array_equal(codes, want)


@st.composite
def float_inputs(draw):
    fmt = draw(formats())
    x = draw(hnp.arrays(np.float64, st.integers(0, 8), elements=st.one_of(
        floats_near(fmt), st.sampled_from([np.inf, -np.inf, 1e308, -1e308]))))
    return fmt, x


@settings(max_examples=400, deadline=None)
@given(case=float_inputs(), nan=st.booleans())
def test_compiled_input_conversion_is_the_numpy_form(case, nan):
    """Ties and near-ties of the LSB, the range's edges and beyond, infinities, subnormals, NaN."""
    fmt, x = case
    if nan:
        x = np.append(x, np.nan)
        for conv in (from_float, from_float_reference):
            with pytest.raises(EdgeDFAError, match="NaN"):
                conv(x, fmt)
        return
    with np.errstate(under="ignore"):  # numpy's ldexp of a subnormal warns; the value is exact
        want = from_float_reference(x, fmt)
    assert np.array_equal(from_float(x, fmt), want)
