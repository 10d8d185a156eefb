"""The compiled Adam update (kernels/adam.py) against the numpy reference of update.py, bit for bit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, QTensor, Rounding
from edgedfa.kernels.adam import adam_step
from edgedfa.numerics import Numerics
from edgedfa.prng import Stream
from edgedfa.update import adam_update, adam_update_reference, bitlen_each

from strategies import adam_operands, moment_registers, overflow_modes, rounding_modes


@st.composite
def adam_cases(draw):
    op = draw(adam_operands())
    num = Numerics.from_bits(8, update_rule="adam", moment_bits=op["bits"], beta1_shift=op["beta1"],
                             beta2_shift=op["beta2"], update_rounding=draw(rounding_modes(stochastic=True)),
                             weight_overflow=draw(overflow_modes()))
    state = {}
    for which in ("m", "v"):
        old = draw(moment_registers(op["shape"], op["bits"]))
        if old is not None:
            state[f"adam_{which}:W"], state[f"adam_{which}_frac:W"] = old[0], np.array(old[1])
    return dict(p=QTensor(op["p"], op["pfmt"]), g=QTensor(op["g"], op["gfmt"]), lr_shift=op["lr"], num=num,
                stream=Stream(draw(st.integers(0, 2**32 - 1)), 0x101), step=op["step"], state=state)


def _run(fn, case):
    """(outcome, state) of one update: the results, or the error the update raised."""
    state = {k: np.copy(v) for k, v in case["state"].items()}
    args = {k: v for k, v in case.items() if k != "state"}
    try:
        new, clipped, zeroed = fn(**args, state=state, name="W")
    except EdgeDFAError as err:
        return ("error", str(err)), state
    return (new.codes, new.codes.dtype, new.fmt, clipped, zeroed), state


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=400, deadline=None)
@given(case=adam_cases(), again=st.booleans())
def test_compiled_adam_is_the_reference_bit_for_bit(case, again):
    got, got_state = _run(adam_update, case)
    want, want_state = _run(adam_update_reference, case)
    assert _same(got, want)
    assert got_state.keys() == want_state.keys()
    assert all(_same(got_state[k], want_state[k]) for k in want_state)
    if again and isinstance(got[0], np.ndarray):  # a second step from the moments the first one left
        case = dict(case, p=QTensor(got[0], case["p"].fmt), step=case["step"] + 1, state=want_state)
        got, got_state = _run(adam_update, case)
        want, want_state = _run(adam_update_reference, case)
        assert _same(got, want) and all(_same(got_state[k], want_state[k]) for k in want_state)


@settings(max_examples=200, deadline=None)
@given(case=adam_cases())
def test_the_kernel_runs_every_case_the_reference_computes(case):
    """Only codes at the int64 rails, where the reference raises, and moment sums whose aligned
    operands could pass 62 bits (the reference takes those on Python integers) leave the
    compiled path."""
    g = case["g"].codes
    if g.max() >= 1 << 62 or g.min() <= -(1 << 62):
        return
    want, _ = _run(adam_update_reference, case)
    s = case["state"]
    old = {w: None if f"adam_{w}:W" not in s or not s[f"adam_{w}:W"].any()
           else (s[f"adam_{w}:W"], int(s[f"adam_{w}_frac:W"])) for w in "mv"}
    fast = adam_step(case["p"].codes, case["p"].fmt, case["g"].codes, case["g"].fmt.frac_bits, old["m"], old["v"],
                     case["lr_shift"], case["num"], case["stream"], case["step"])
    bits = case["num"].moment_bits
    top = int(np.abs(g).max()).bit_length()
    gf = case["g"].fmt.frac_bits - max(0, top - (bits - 1))  # the narrowed gradient's fraction
    gb = min(top + 1, bits)
    mf = gf if old["m"] is None else max(old["m"][1], gf)
    vf = 2 * gf if old["v"] is None else max(old["v"][1], 2 * gf)
    far = max(gb + mf - gf, 2 * gb + vf - 2 * gf, *(bits + f - o[1] for o, f in ((old["m"], mf), (old["v"], vf))
                                                     if o is not None)) > 62
    if not isinstance(want[0], np.ndarray):
        assert fast is None
    elif not far:
        assert fast is not None


@pytest.mark.parametrize("rounding", list(Rounding))
def test_compiled_adam_on_a_training_sized_tensor(rounding):
    rng = np.random.default_rng(3)
    num = Numerics.from_bits(8, update_rule="adam", update_rounding=rounding)
    p0 = p = QTensor(rng.integers(-128, 128, (256, 784)), FixedFormat.with_frac(8, 7))
    states = ({}, {})
    for step in range(3):
        g = QTensor(rng.integers(-(1 << 20), 1 << 20, (256, 784)), FixedFormat.with_frac(32, 24))
        a = adam_update(p, g, 2, num, Stream(1, 0x101), step, states[0], "W")
        b = adam_update_reference(p, g, 2, num, Stream(1, 0x101), step, states[1], "W")
        assert np.array_equal(a[0].codes, b[0].codes) and a[1:] == b[1:]
        assert all(np.array_equal(states[0][k], states[1][k]) for k in states[1])
        p = a[0]
    assert np.any(p.codes != p0.codes)


def test_bitlen_each_is_python_bit_length():
    v = np.array([0, 1, 2, 3, 255, 256, (1 << 62) - 1, 1 << 62, 2**63 - 1], dtype=np.int64)
    assert bitlen_each(v).tolist() == [int(x).bit_length() for x in v.tolist()]

