"""The int8 route of the kernels (onnxruntime MatMulInteger on 8-bit codes): bit-identical
to the reference for every shape, layout, dtype, accumulator width and overflow mode, on 1
and 2 threads; taken exactly when its bound proves it exact; off when the CPU's int8 sums
are not exact."""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa import Overflow
from edgedfa.kernels import conv as K
from edgedfa.kernels import conv_int8, gemm, int8, onnxrt, reference
from strategies import int_matrices, overflow_modes

INT32_MAX = (1 << 31) - 1


@contextmanager
def threads(n):
    before = onnxrt.threads()
    onnxrt.set_threads(n)
    try:
        yield
    finally:
        onnxrt.set_threads(before)


def layout(x, kind):
    """The same codes as int64 C order, int64 transposed storage, or int8."""
    if kind == "fortran":
        return np.asfortranarray(x)
    return x.astype(np.int8) if kind == "int8" and x.size and -128 <= x.min() and x.max() <= 127 else x


def test_the_backend_is_on_and_exact_here():
    assert onnxrt.available(), onnxrt.status()
    assert onnxrt.status() == "exact (probed)"


# --------------------------------------------------------------------------- GEMM

@given(data=st.data(), overflow=overflow_modes(), n_threads=st.sampled_from((1, 2)),
       kinds=st.tuples(*[st.sampled_from(("c", "fortran", "int8"))] * 2))
def test_int8_gemm_equals_reference(data, overflow, n_threads, kinds):
    m, k, n = (data.draw(st.integers(1, hi)) for hi in (7, 70, 7))
    a = data.draw(int_matrices(m, k, data.draw(st.integers(1, 9))))
    b = data.draw(int_matrices(k, n, data.draw(st.integers(1, 9))))
    init = data.draw(st.one_of(st.none(), int_matrices(1, n, 20), int_matrices(m, n, 12)))
    bound = k * max(1, int(np.abs(a).max())) * max(1, int(np.abs(b).max()))
    acc_bits = data.draw(st.sampled_from(sorted({max(2, bound.bit_length() + d) for d in (-2, 0, 1, 2)} | {32})))
    ref = reference.gemm(a, b, acc_bits, overflow, init)
    with threads(n_threads):
        got = int8.gemm(layout(a, kinds[0]), layout(b, kinds[1]), acc_bits, overflow, init, min_macs=0)
    eight_bit = all(-128 <= x.min() and x.max() <= 127 for x in (a, b))
    fits = bound + (int(np.abs(init).max()) if init is not None else 0) < (1 << (acc_bits - 1))
    if eight_bit and (fits or overflow is Overflow.AP_WRAP):
        assert got is not None  # the bound proves it exact: the route must be taken
    if got is not None:
        assert got.dtype == np.int64 and np.array_equal(got, ref)


@pytest.mark.parametrize("overflow", list(Overflow))
def test_a_saturating_register_that_could_clip_takes_the_exact_loop(overflow):
    a = np.full((2, 40), 127)
    b = np.full((40, 3), -128)
    ref = reference.gemm(a, b, 16, overflow)
    got = int8.gemm(a, b, 16, overflow, min_macs=0)
    if overflow is Overflow.AP_WRAP:
        assert np.array_equal(got, ref)  # modulo 2^16: the exact sum wrapped once
    else:
        assert got is None  # the register clips at some k: only the step-by-step loop knows where
    assert np.array_equal(gemm(a, b, 16, overflow, backend="int8"), ref)


def test_onnxruntime_register_bound():
    """K·255·max|b| is what onnxruntime's int32 register holds (the offset operand a + 128)."""
    k_ok = INT32_MAX // (255 * 128)
    for k, taken in ((k_ok, True), (k_ok + 1, False)):
        a = np.full((1, k), 127, dtype=np.int8)
        b = np.full((k, 1), -128, dtype=np.int8)
        got = int8.gemm(a, b, 62, Overflow.AP_SAT, min_macs=0)
        assert (got is not None) == taken
        if taken:
            assert got.tolist() == [[-127 * 128 * k]]


def test_wider_codes_are_not_narrowed():
    a = np.array([[128, 1]])
    assert int8.narrow(a, 128)[0] is None and int8.narrow(-a, 0)[0] is not None and int8.narrow(-a - 1, 0)[0] is None
    assert int8.narrow(np.array([[200]], dtype=np.uint8), 0)[0] is None
    assert int8.gemm(a, np.ones((2, 2), np.int64), 32, Overflow.AP_SAT, min_macs=0) is None


def test_narrow_keeps_the_codes_and_reports_the_magnitude():
    x = np.array([[-128, 5, 127], [0, -3, 9]])
    for src in (x, np.asfortranarray(x), x.T.copy().T):
        u8, m = int8.narrow(src, 128)
        s8, _ = int8.narrow(src, 0)
        assert m == 128 and u8.flags.c_contiguous and s8.flags.c_contiguous
        assert np.array_equal(u8.astype(np.int64) - 128, x) and np.array_equal(s8, x)


def test_small_products_go_elsewhere():
    a, b = np.ones((2, 3), np.int64), np.ones((3, 2), np.int64)
    assert int8.gemm(a, b, 32, Overflow.AP_SAT) is None  # below MIN_MACS
    assert int8.gemm(np.ones((2, 0), np.int64), np.ones((0, 2), np.int64), 32, Overflow.AP_SAT, min_macs=0) is None


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (96, 300))
    b = rng.integers(-128, 128, (300, 80))
    outs = []
    for n in (1, 2):
        with threads(n):
            outs.append(int8.gemm(a, b, 32, Overflow.AP_SAT))
    assert outs[0] is not None and np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], a @ b)


# --------------------------------------------------------------------------- the probe

class SaturatingSession:
    """A u8 x s8 product that adds pairs of products in a saturating int16 (AVX2 vpmaddubsw)."""

    def run(self, _, feeds):
        a = feeds["A"].astype(np.int64)
        b = feeds["B"].astype(np.int64)
        k = a.shape[1] + a.shape[1] % 2
        a = np.pad(a, ((0, 0), (0, k - a.shape[1])))
        b = np.pad(b, ((0, k - b.shape[0]), (0, 0)))
        pairs = a[:, 0::2, None] * b[None, 0::2] + a[:, 1::2, None] * b[None, 1::2]
        total = np.clip(pairs, -32768, 32767).sum(axis=1) - 128 * b.sum(axis=0)
        return [total.astype(np.int32)]


class ExactSession:
    def run(self, _, feeds):
        return [((feeds["A"].astype(np.int64) - 128) @ feeds["B"].astype(np.int64)).astype(np.int32)]


def test_probe_rejects_saturating_int8_sums():
    assert onnxrt._probe(ExactSession()) is None
    assert "not exact" in onnxrt._probe(SaturatingSession())


def test_a_failed_probe_turns_the_route_off(monkeypatch):
    monkeypatch.setattr(onnxrt, "_sessions", {})
    monkeypatch.setattr(onnxrt, "new_session", lambda n: SaturatingSession())
    assert not onnxrt.available() and "not exact" in onnxrt.status()
    a = np.full((8, 64), 127)
    b = np.full((64, 8), -128)
    assert int8.gemm(a, b, 32, Overflow.AP_SAT, min_macs=0) is None
    assert np.array_equal(gemm(a, b, 32, Overflow.AP_SAT, backend="int8"), a @ b)


def test_disabled_route_falls_back():
    onnxrt.enable(False)
    try:
        assert not onnxrt.available() and onnxrt.status() == "disabled"
        assert int8.gemm(np.ones((64, 64), np.int64), np.ones((64, 64), np.int64), 32, Overflow.AP_SAT) is None
    finally:
        onnxrt.enable(True)


def test_the_shipped_model_is_what_the_builder_writes():
    import onnx

    from edgedfa.onnx.kernel_models import MODELS

    for name, build in MODELS.items():
        shipped = onnx.load(os.path.join(os.path.dirname(onnxrt.__file__), name))
        assert shipped == build(), f"{name}: rerun tools/make_kernel_models.py"


# --------------------------------------------------------------------------- convolution

@st.composite
def int8_conv_cases(draw):
    """A random convolution with codes of at most 8 bits."""
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
    eff = [dil[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    spatial = tuple(max(spatial[i], eff[i] - pads[i] - pads[i + nd]) for i in range(nd))
    geo = K.make_geometry(spatial, kernel, strides, pads, dil, groups)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    bits = draw(st.integers(1, 8))
    half = 1 << (bits - 1)
    x = rng.integers(-half, half, size=(draw(st.integers(1, 3)), cg * groups) + spatial)
    w = rng.integers(-half, half, size=(og * groups, cg) + kernel)
    dy = rng.integers(-half, half, size=(x.shape[0], og * groups) + geo.out_spatial())
    init = rng.integers(-4 * half, 4 * half, size=og * groups) if draw(st.booleans()) else None
    return geo, x, w, dy, init


@given(int8_conv_cases(), overflow_modes(), st.sampled_from((1, 2)))
def test_int8_conv_equals_reference(case, overflow, n_threads):
    geo, x, w, dy, init = case
    x4, w4, dy4 = K.to4d(x, geo), K.to4d(w, geo), K.to4d(dy, geo)
    with threads(n_threads):
        y = conv_int8.forward(x4, w4, geo, 32, overflow, init, min_macs=0)
        dw = conv_int8.weight_grad(x4, dy4, geo, 32, overflow, min_macs=0)
        dx = conv_int8.input_grad(dy4, w4, geo, 32, overflow, min_macs=0)
    assert y is not None and dw is not None and dx is not None  # 8-bit codes, 32-bit register: exact
    np.testing.assert_array_equal(K.from4d(y, geo), K.conv_forward(x, w, geo, 32, overflow, init, "reference"))
    np.testing.assert_array_equal(dw, K.to4d(K.conv_weight_grad(x, dy, geo, 32, overflow, "reference"), geo))
    np.testing.assert_array_equal(K.from4d(dx, geo), K.conv_input_grad(dy, w, geo, 32, overflow, "reference"))


@given(int8_conv_cases(), overflow_modes(), st.integers(4, 18))
def test_int8_conv_narrow_registers(case, overflow, acc_bits):
    """Narrow accumulators: the int8 route only where it is exact (or wraps), the others
    elsewhere; the dispatched result always equals the reference."""
    geo, x, w, dy, init = case
    for be in ("int8", "fast"):
        np.testing.assert_array_equal(K.conv_forward(x, w, geo, acc_bits, overflow, init, be),
                                      K.conv_forward(x, w, geo, acc_bits, overflow, init, "reference"))
        np.testing.assert_array_equal(K.conv_weight_grad(x, dy, geo, acc_bits, overflow, be),
                                      K.conv_weight_grad(x, dy, geo, acc_bits, overflow, "reference"))
        np.testing.assert_array_equal(K.conv_input_grad(dy, w, geo, acc_bits, overflow, be),
                                      K.conv_input_grad(dy, w, geo, acc_bits, overflow, "reference"))


def test_wide_codes_leave_the_int8_conv_route():
    geo = K.make_geometry((5, 5), (3, 3), pads=(1, 1, 1, 1))
    x = np.full((1, 2, 5, 5), 300)
    w = np.ones((3, 2, 3, 3), np.int64)
    assert conv_int8.forward(x, w, geo, 32, Overflow.AP_SAT, None, min_macs=0) is None
    np.testing.assert_array_equal(K.conv_forward(x, w, geo, 32, "AP_SAT", None, "int8"),
                                  K.conv_forward(x, w, geo, 32, "AP_SAT", None, "reference"))


def test_training_sized_conv_takes_the_int8_route():
    rng = np.random.default_rng(2)
    geo = K.make_geometry((14, 14), (3, 3), pads=(1, 1, 1, 1))
    x = rng.integers(0, 128, (8, 16, 14, 14))
    w = rng.integers(-128, 128, (32, 16, 3, 3))
    dy = rng.integers(-128, 128, (8, 32, 14, 14))
    x4 = K.to4d(x, geo)
    assert conv_int8.forward(x4, w, geo, 32, Overflow.AP_SAT, None) is not None
    assert conv_int8.weight_grad(x4, dy, geo, 32, Overflow.AP_SAT) is not None
    assert conv_int8.input_grad(dy, w, geo, 32, Overflow.AP_SAT) is not None
    np.testing.assert_array_equal(K.conv_input_grad(dy, w, geo, 32, "AP_SAT", "fast"),
                                  K.conv_input_grad(dy, w, geo, 32, "AP_SAT", "im2col-reference"))


# --------------------------------------------------------------------------- training

def _steps(graph, backend, algo, n_threads=1, steps=3):
    """State after ``steps`` training steps of ``graph`` on the digits with one backend."""
    from edgedfa import data
    from edgedfa.api import build_model, make_trainer
    from edgedfa.numerics import Numerics
    from edgedfa.train import TrainConfig

    ds = data.digits()
    x = ds.x_train.reshape((len(ds.x_train),) + tuple(graph.input_shape))
    m = build_model(graph, Numerics.from_bits(8), 0, backend=backend)
    m.calibrate(x[:256])
    tr = make_trainer(m, TrainConfig(algo=algo, batch_size=32))
    with threads(n_threads):
        for s in range(steps):
            tr.step(m.quantize_input(x[s * 32:(s + 1) * 32]), ds.y_train[s * 32:(s + 1) * 32], s, 9)
    return m.state_arrays()


@pytest.mark.parametrize("kind", ["cnn", "gru"])
@pytest.mark.parametrize("algo", ["bp", "sdfa"])
def test_training_steps_are_identical_on_every_backend(kind, algo):
    from edgedfa import arch

    graph = arch.cnn(0, (1, 8, 8), channels=(8, 16)) if kind == "cnn" else arch.recurrent("gru", 0, 8, 8, hidden=32)
    ref = _steps(graph, "reference", algo)
    runs = [_steps(graph, "fast", algo), _steps(graph, "int8", algo), _steps(graph, "int8", algo, n_threads=2)]
    onnxrt.enable(False)
    try:
        runs.append(_steps(graph, "fast", algo))
    finally:
        onnxrt.enable(True)
    for got in runs:
        for k in ref:
            assert np.array_equal(ref[k], got[k]), k
