"""edgedfa.prng against docs/datapath.md §5: lowbias32 values, key chaining, C-order indexing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa import prng
from edgedfa.prng import Stream, key32, mix32, stream_id, words
from strategies import seeds, small_shapes

M32 = 0xFFFFFFFF


def py_mix32(x: int) -> int:
    """lowbias32 on Python ints, transcribed from the spec (no numpy)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def py_word(seed: int, stream: int, step: int, i: int) -> int:
    key = py_mix32(py_mix32(py_mix32((seed & M32) ^ 0x9E3779B9) ^ (stream & M32)) ^ (step & M32))
    return py_mix32(key ^ (i & M32))


def test_mix32_by_hand():
    # mix32(1), one line at a time on paper-sized numbers:
    x = 1 ^ (1 >> 16)                      # 0x00000001
    x = (x * 0x7FEB352D) % 2**32           # 0x7feb352d
    assert x == 0x7FEB352D
    x ^= x >> 15                           # 0x7feb352d ^ 0x0000ffd6
    assert x == 0x7FEBCAFB
    x = (x * 0x846CA68B) % 2**32
    x ^= x >> 16
    assert x == 0x688990C0
    assert int(mix32(1)) == 0x688990C0
    assert int(mix32(0)) == 0  # 0 is the one fixed point: no constant is added


# Reference values computed with an independent C implementation (uint32_t arithmetic).
KNOWN_MIX32 = {0x00000000: 0x00000000, 0x00000001: 0x688990C0, 0x00000002: 0xD1132181,
               0xDEADBEEF: 0xE628C683, 0xFFFFFFFF: 0x6768824A, 12345: 0x912EFCF7}


@pytest.mark.parametrize("x, expected", sorted(KNOWN_MIX32.items()))
def test_mix32_known_values(x, expected):
    assert py_mix32(x) == expected
    assert int(mix32(x)) == expected
    assert int(mix32(np.array([x], dtype=np.uint32))[0]) == expected


def test_key_and_words_known_values():
    assert key32(0, 0, 0) == 0x944FB554
    assert key32(42, 0x107, 3) == 0xD2DAC5B9
    assert words(42, 0x107, 3, 4).tolist() == [0xE7DF18E1, 0xFADF6F8B, 0x3BF22F2D, 0x510629B5]
    assert int(words(-1, 1, 0, 6)[5]) == 0x984578F8  # seed taken modulo 2**32
    assert [py_word(42, 0x107, 3, i) for i in range(4)] == words(42, 0x107, 3, 4).tolist()


@given(x=st.lists(st.integers(0, M32), min_size=1, max_size=32))
def test_mix32_vectorised_equals_python(x):
    assert mix32(np.array(x, dtype=np.uint64)).tolist() == [py_mix32(v) for v in x]


@given(seed=st.integers(-(2**40), 2**40), stream=st.integers(0, 2**40), step=st.integers(0, 2**40))
def test_key_is_the_spec_chain_modulo_2_32(seed, stream, step):
    expected = py_mix32(py_mix32(py_mix32((seed ^ 0x9E3779B9) & M32) ^ (stream & M32)) ^ (step & M32))
    assert key32(seed, stream, step) == expected
    assert key32(seed + 2**32, stream + 2**32, step + 2**32) == expected


@given(seed=seeds(), stream=st.integers(0, 2**16), step=st.integers(0, 10**6), shape=small_shapes())
def test_words_are_c_order_flat_indexed(seed, stream, step, shape):
    w = words(seed, stream, step, shape)
    assert w.shape == shape and w.dtype == np.uint32
    for idx in np.ndindex(*shape):
        flat = int(np.ravel_multi_index(idx, shape))  # C (row-major) order
        assert int(w[idx]) == py_word(seed, stream, step, flat)
    # a shape is a view of the flat sequence: same words whatever the shape
    n = int(np.prod(shape))
    assert (w.ravel() == words(seed, stream, step, n)).all()
    assert (Stream(seed, stream).words(step, shape) == w).all()


def test_words_scalar_and_empty_shapes():
    assert words(1, 2, 3, ()).shape == ()
    assert int(words(1, 2, 3, ())) == py_word(1, 2, 3, 0)
    assert words(1, 2, 3, (0, 4)).shape == (0, 4)
    assert words(1, 2, 3, np.int64(3)).tolist() == [py_word(1, 2, 3, i) for i in range(3)]


def test_stream_ids_and_purposes():
    assert stream_id(0, prng.PURPOSE_QUANTIZE) == 7
    assert stream_id(3, prng.PURPOSE_WEIGHT_UPDATE) == 0x301
    assert stream_id(1, prng.PURPOSE_FEEDBACK) == 0x103
    purposes = [prng.PURPOSE_WEIGHT_UPDATE, prng.PURPOSE_BIAS_UPDATE, prng.PURPOSE_FEEDBACK,
                prng.PURPOSE_FEEDBACK_INDEX, prng.PURPOSE_INIT, prng.PURPOSE_SHUFFLE,
                prng.PURPOSE_QUANTIZE, prng.PURPOSE_AUX]
    assert purposes == list(range(1, 9))
    s = Stream(-1, stream_id(2, 5))
    assert (s.seed, s.stream) == (M32, 0x205)
    assert "0x205" in repr(s)


def test_streams_and_steps_are_distinct():
    """Different (seed, stream, step) give unrelated words; a stream is stateless."""
    base = words(9, 0x101, 0, 4096)
    for other in (words(9, 0x101, 1, 4096), words(9, 0x102, 0, 4096), words(10, 0x101, 0, 4096)):
        assert (other == base).mean() < 0.01
    s = Stream(9, 0x101)
    assert (s.words(0, 4096) == base).all() and (s.words(0, 4096) == base).all()


def test_words_look_uniform():
    """Each bit of 2**16 words is set about half the time (5 sigma), as rounding needs."""
    w = words(123, stream_id(0, 1), 0, 1 << 16).astype(np.uint64)
    n = w.size
    sigma = math.sqrt(0.25 / n)
    for bit in range(32):
        frac = float(((w >> np.uint64(bit)) & np.uint64(1)).mean())
        assert abs(frac - 0.5) <= 5 * sigma, bit
    top = (w >> np.uint64(28)).astype(np.int64)  # top 4 bits: the u of a 4-bit shift
    counts = np.bincount(top, minlength=16)
    chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert chi2 < 50  # 15 degrees of freedom; p ~ 1e-5
