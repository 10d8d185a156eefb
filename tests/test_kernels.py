"""Integer GEMM (docs/datapath.md §4): the reference against a Python-int model and hand
cases, the fast backend against the reference bit for bit, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, Overflow
from edgedfa import kernels
from edgedfa.kernels import fast, gemm, reference
from strategies import gemm_cases, int_matrices, overflow_modes

O = Overflow


def py_gemm(a, b, acc_bits, overflow, init=None):
    """§4 on Python ints: init first, then k ascending, the overflow mode after each add."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1

    def step(v):
        if overflow is O.AP_WRAP:
            return (v - lo) % (1 << acc_bits) + lo
        low = -hi if overflow is O.AP_SAT_SYM else lo
        if low <= v <= hi:
            return v
        return 0 if overflow is O.AP_SAT_ZERO else min(max(v, low), hi)

    (m, kk), n = np.shape(a), np.shape(b)[1]
    a, b = np.asarray(a).tolist(), np.asarray(b).tolist()
    full = np.broadcast_to(np.zeros((m, n), dtype=np.int64) if init is None else init, (m, n))
    out = []
    for i in range(m):
        row = []
        for j in range(n):
            acc = step(int(full[i, j])) if init is not None else 0
            for k in range(kk):
                acc = step(acc + a[i][k] * b[k][j])
            row.append(acc)
        out.append(row)
    return out


# --------------------------------------------------------------------------- hand cases

A1 = np.array([[100, 100, -100]])
B1 = np.array([[1], [1], [1]])


@pytest.mark.parametrize("backend", kernels.BACKENDS)
@pytest.mark.parametrize("overflow, expected", [
    (O.AP_WRAP, 100),       # 100, 200->-56, -156->100: modulo 256, order-free
    (O.AP_SAT, 27),         # 100, 200->127, 27
    (O.AP_SAT_SYM, 27),
    (O.AP_SAT_ZERO, -100),  # 100, 200->0, -100
])
def test_accumulation_order_hand_case(backend, overflow, expected):
    assert gemm(A1, B1, 8, overflow, backend=backend).tolist() == [[expected]]


@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_init_goes_first_and_is_overflowed_too(backend):
    a, b = np.array([[1, 1]]), np.array([[-1], [-1]])
    # init -128 in 8 bits: SAT_SYM clamps it to -127 before any product is added
    assert gemm(a, b, 8, O.AP_SAT_SYM, init=np.array([[-128]]), backend=backend).tolist() == [[-127]]
    assert gemm(a, b, 8, O.AP_SAT, init=np.array([[-128]]), backend=backend).tolist() == [[-128]]
    assert gemm(a, b, 8, O.AP_WRAP, init=np.array([[-128]]), backend=backend).tolist() == [[126]]
    # an init wider than the accumulator is brought into range first: 300 -> 127 -> 125
    assert gemm(a, b, 8, O.AP_SAT, init=np.array([[300]]), backend=backend).tolist() == [[125]]
    assert gemm(a, b, 8, O.AP_SAT_ZERO, init=np.array([[300]]), backend=backend).tolist() == [[-2]]
    # broadcast init: a bias per output column
    a2, b2 = np.eye(2, dtype=np.int64), np.array([[1, 2], [3, 4]])
    got = gemm(a2, b2, 16, O.AP_WRAP, init=np.array([10, 20]), backend=backend)
    assert got.tolist() == [[11, 22], [13, 24]]


@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_widest_accumulator_and_largest_products(backend):
    big = (1 << 30) - 1  # products just under 2**60; 62-bit accumulator saturates after 2-3
    a = np.full((2, 5), big, dtype=np.int64)
    b = np.full((5, 3), big, dtype=np.int64)
    hi = (1 << 61) - 1
    assert (gemm(a, b, 62, O.AP_SAT, backend=backend) == hi).all()
    exact = 5 * big * big
    wrapped = (exact + (1 << 61)) % (1 << 62) - (1 << 61)
    assert (gemm(a, b, 62, O.AP_WRAP, backend=backend) == wrapped).all()
    assert gemm(a, -b, 62, O.AP_SAT_SYM, backend=backend).min() == -hi


@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_empty_shapes(backend):
    assert gemm(np.zeros((0, 3), np.int64), np.zeros((3, 4), np.int64), backend=backend).shape == (0, 4)
    assert gemm(np.zeros((2, 0), np.int64), np.zeros((0, 4), np.int64), backend=backend).tolist() \
        == [[0] * 4] * 2
    got = gemm(np.zeros((2, 0), np.int64), np.zeros((0, 2), np.int64), 4, O.AP_SAT,
               init=np.array([[100, -3], [2, 1]]), backend=backend)
    assert got.tolist() == [[7, -3], [2, 1]]


# --------------------------------------------------------------------------- properties

@given(case=gemm_cases(max_m=4, max_k=12, max_n=4))
def test_reference_matches_python_int_model(case):
    a, b, acc_bits, overflow, init = case
    got = reference.gemm(a, b, acc_bits, overflow, init)
    assert got.dtype == np.int64
    assert got.tolist() == py_gemm(a, b, acc_bits, overflow, init)


@given(case=gemm_cases())
def test_fast_equals_reference_bit_for_bit(case):
    a, b, acc_bits, overflow, init = case
    ref = gemm(a, b, acc_bits, overflow, init=init, backend="reference")
    got = gemm(a, b, acc_bits, overflow, init=init, backend="fast")
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert np.array_equal(got, ref)
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    assert ((ref >= lo) & (ref <= hi)).all()


@given(data=st.data(), overflow=overflow_modes(), with_init=st.booleans(),
       bits=st.sampled_from((8, 16)))
def test_fast_equals_reference_at_the_exactness_bounds(data, overflow, with_init, bits):
    """Shapes that put the partial-sum bound on either side of the fast path's switches:
    the accumulator limit, 2**24 (float32) and 2**53 (float64)."""
    k = data.draw(st.sampled_from((1, 2, 3, 64, 255, 256, 257) + ((1023, 1024, 1025) if bits == 8 else ())))
    a = data.draw(int_matrices(5, k, bits))
    b = data.draw(int_matrices(k, 6, bits))
    init = data.draw(int_matrices(5, 6, 20)) if with_init else None
    bound = fast.partial_sum_bound(a, b, init)
    acc_bits = data.draw(st.sampled_from(sorted({
        max(2, min(62, bound.bit_length() + d)) for d in (-1, 0, 1, 2)} | {25, 26, 54, 55})))
    ref = reference.gemm(a, b, acc_bits, overflow, init)
    assert np.array_equal(fast.gemm(a, b, acc_bits, overflow, init), ref)


@pytest.mark.parametrize("a_val, b_val, k, init", [
    (4097, 4097, 1, 0),               # 2**24 + 2**13 + 1: odd, above float32's exact range
    (4095, 4097, 1, 2),               # 2**24 - 1, and init pushes it to 2**24 + 1
    (4095, 4097, 1, 0),               # 2**24 - 1: the largest float32-exact sum
    (2049, 2047, 4, 5),               # four products and an init, just over 2**24
    ((1 << 27) + 1, (1 << 26) + 1, 1, 0),   # odd, above 2**53: float64 would round
    ((1 << 26) + 1, (1 << 26) + 1, 2, 1),   # 2**53 + 2**28 + 3
    ((1 << 26) + 1, (1 << 26) - 1, 2, -3),  # 2**53 - 5: float64-exact
])
def test_fast_float_paths_exact_at_their_limits(a_val, b_val, k, init):
    """Sums at 2**24 and 2**53, where a float path taken on too loose a bound would round."""
    a = np.full((2, k), a_val, dtype=np.int64)
    b = np.full((k, 3), b_val, dtype=np.int64)
    b[:, 1] *= -1
    init_arr = np.full((2, 3), init, dtype=np.int64)
    for acc_bits in (62, 55, 54, 26, 25):
        ref = py_gemm(a, b, acc_bits, O.AP_WRAP, init_arr)
        for overflow in Overflow:
            assert fast.gemm(a, b, acc_bits, overflow, init_arr).tolist() == \
                py_gemm(a, b, acc_bits, overflow, init_arr)
        assert gemm(a, b, acc_bits, O.AP_WRAP, init=init_arr).tolist() == ref


@pytest.mark.parametrize("acc_bits", [2, 8, 16, 24, 25, 33, 53, 54, 62])
def test_fast_at_the_accumulator_limit(acc_bits):
    """A sum of exactly hi fits; hi + 1 and lo - 1 (by products or by init) overflow."""
    hi = (1 << (acc_bits - 1)) - 1
    cases = [
        (np.array([[hi]]), np.array([[1]]), None),                 # exactly hi
        (np.array([[hi + 1]]), np.array([[1]]), None),             # hi + 1 in one product
        (np.array([[1, 1]]), np.array([[hi], [1]]), None),         # hi + 1 in two
        (np.array([[1]]), np.array([[-hi - 1]]), np.array([[-1]])),  # lo - 1 through init
        (np.array([[1]]), np.array([[-hi - 1]]), None),            # lo: in range but not SAT_SYM
        (np.array([[1]]), np.array([[hi]]), np.array([[1]])),      # init + hi
    ]
    for a, b, init in cases:
        if max(abs(int(a.max())), abs(int(a.min()))) * max(abs(int(b.max())), abs(int(b.min()))) >= 1 << 62:
            continue
        for overflow in Overflow:
            expected = py_gemm(a, b, acc_bits, overflow, init)
            assert fast.gemm(a, b, acc_bits, overflow, init).tolist() == expected, (a, b, init, overflow)
            assert reference.gemm(a, b, acc_bits, overflow, init).tolist() == expected


@given(a=int_matrices(6, 50, 12), b=int_matrices(50, 7, 12), acc_bits=st.integers(2, 30))
def test_wrap_accumulation_is_arithmetic_modulo_2_pow_a(a, b, acc_bits):
    """Under AP_WRAP the order does not matter: the result is the exact product, wrapped."""
    exact = a.astype(object) @ b.astype(object)
    lo = -(1 << (acc_bits - 1))
    expected = [[(int(v) - lo) % (1 << acc_bits) + lo for v in row] for row in exact]
    for backend in kernels.BACKENDS:
        assert gemm(a, b, acc_bits, O.AP_WRAP, backend=backend).tolist() == expected


@given(a=int_matrices(4, 20, 8), b=int_matrices(20, 5, 8))
def test_wide_accumulator_is_exact_matmul(a, b):
    expected = a @ b  # int64: |sum| < 20 * 2**14
    for overflow in Overflow:
        for backend in kernels.BACKENDS:
            assert np.array_equal(gemm(a, b, 32, overflow, backend=backend), expected)


def test_input_dtypes_give_the_same_bits():
    rng = np.random.default_rng(11)
    a = rng.integers(-128, 128, size=(7, 30))
    b = rng.integers(-128, 128, size=(30, 5))
    ref = gemm(a, b, 12, O.AP_SAT, backend="reference")
    for da, db in ((np.int8, np.int8), (np.int16, np.int32), (np.int64, np.int8)):
        for backend in kernels.BACKENDS:
            got = gemm(a.astype(da), b.astype(db), 12, O.AP_SAT, backend=backend)
            assert got.dtype == np.int64 and np.array_equal(got, ref)
    # non-contiguous views (a transposed weight matrix) are the same numbers
    bt = np.ascontiguousarray(b.T)
    assert np.array_equal(gemm(a, bt.T, 12, O.AP_SAT, backend="fast"), ref)
    assert np.array_equal(gemm(a, b, 12, "ap_sat", backend="fast"), ref)  # mode by name


# --------------------------------------------------------------------------- backends, bad input

def test_default_backend_switch():
    assert kernels.default_backend() == "fast"
    try:
        kernels.set_default_backend("reference")
        assert kernels.default_backend() == "reference"
        assert gemm(A1, B1, 8, O.AP_SAT).tolist() == [[27]]
    finally:
        kernels.set_default_backend("fast")
    with pytest.raises(EdgeDFAError, match="'blas'.*reference, fast"):
        kernels.set_default_backend("blas")
    with pytest.raises(EdgeDFAError, match="'gpu'"):
        gemm(A1, B1, backend="gpu")


@pytest.mark.parametrize("call, match", [
    (lambda: gemm(np.ones((2, 3), int), np.ones((4, 2), int)), r"\(2, 3\) and \(4, 2\)"),
    (lambda: gemm(np.ones(3, int), np.ones((3, 2), int)), r"\(3,\) and \(3, 2\)"),
    (lambda: gemm(np.ones((2, 3)), np.ones((3, 2), int)), "a holds float64"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), np.float32)), "b holds float32"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), init=np.ones(2) * 0.5),
     "init holds float64"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), init=np.ones((3, 2), int)),
     r"init of shape \(3, 2\)"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), acc_bits=1), "width 1 outside"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), acc_bits=63), "width 63 outside"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), acc_bits=32.0), "32.0"),
    (lambda: gemm(np.ones((2, 3), int), np.ones((3, 2), int), overflow="AP_CLAMP"), "AP_CLAMP"),
    (lambda: gemm(np.full((1, 1), 1 << 31), np.full((1, 1), 1 << 31)), "exceeds 62 bits"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(EdgeDFAError, match=match):
        call()


def test_product_bound_is_exact_at_62_bits():
    ok = gemm(np.full((1, 1), (1 << 31) - 1), np.full((1, 1), 1 << 31), 62, O.AP_SAT)
    assert ok.tolist() == [[(1 << 61) - 1]]  # product 2**62 - 2**31: allowed, saturates
    with pytest.raises(EdgeDFAError):
        gemm(np.full((1, 1), -(1 << 31)), np.full((1, 1), -(1 << 31)), 62)
