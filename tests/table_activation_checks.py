"""What the table activations' tests (test_gelu, test_elu) check alike, as a class to mix into
a test class that sets ``GRAPHS = {"mlp": (make, shape), "cnn": (make, shape)}`` (``make(seed)``
a Graph with the activation, ``shape`` its per-sample input): training bit-exact with hdl_models
under every algorithm and at any width, the int export bit-exact in onnxruntime, the integer
model and its float/QDQ exports close to the float reference, BP gradients against central
differences."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_helpers import calibrated
from test_hard_sigmoid import check_bp_gradients
from test_onnx_export import _check_int_exact, ort_run

from edgedfa.cosim import emulate
from edgedfa.float_ref import run_float
from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.onnx.export import build_proto
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig

ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]
KINDS = ["cnn", "mlp"]
model = partial(calibrated, scale=1.5)  # the calibration spread of these checks
# each subclass is its own test (its GRAPHS); a replayed example of another is just an input
SHARED = dict(max_examples=20, suppress_health_check=[HealthCheck.differing_executors])


def check_bit_exact(m, shape, algo: str, seed: int, n: int, scale: float, min_checked: int = 0):
    """Two steps of ``algo`` on n samples of N(0, scale), 3 classes, batch 4: every integer equal."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, scale, (n,) + tuple(shape)), rng.integers(0, 3, n)
    r = emulate(m, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=4, algo=algo))
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= min_checked


def check_step_and_int_export(m, x, y):
    """Calibrated on x, one BP step of batch len(x) bit-exact with hdl_models, the int export
    bit-exact in onnxruntime (an imported fixture's check)."""
    m.calibrate(x)
    r = emulate(m, x, y, 1, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=len(x), algo="bp"))
    assert r["bit_exact"], r["first_mismatch"]
    proto, report = build_proto(m, "int")
    assert report.startswith("int: bit-exact")
    assert np.array_equal(ort_run(proto, x), m.run(x))


def check_pytorch_fixture(path: str, model) -> None:
    """An imported fixture (input "x"): the import equals onnxruntime in float, one BP step of 8
    samples is bit-exact with hdl_models, the int export bit-exact, the float export within float
    tolerance of the float reference."""
    import onnxruntime as ort
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (8,) + tuple(model.graph.input_shape)).astype(np.float32).astype(np.float64)
    ref = ort.InferenceSession(path).run(None, {"x": x.astype(np.float32)})[0]
    assert np.abs(run_float(model.graph, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    check_step_and_int_export(model, x, rng.integers(0, 3, 8))
    out = ort_run(build_proto(model, "float")[0], x)
    assert np.abs(out - run_float(model.to_graph(), x)).max() <= 1e-5 * max(1.0, np.abs(out).max())


ROUNDINGS = ("AP_RND", "AP_RND_CONV", "AP_TRN", "AP_TRN_ZERO", "AP_RND_ZERO", "AP_RND_INF", "AP_RND_MIN_INF")


def check_int_export_every_rounding(graph, bits: int, x) -> None:
    """Under every rounding of §2 but stochastic, calibrated on N(0, 2): the int export of
    ``graph`` equals the engine on ``x`` in onnxruntime."""
    for rounding in ROUNDINGS:
        m = calibrated(graph, bits, 0, scale=2.0, act_rounding=rounding)
        proto, report = build_proto(m, "int")
        assert report.startswith("int: bit-exact")
        assert np.array_equal(ort_run(proto, x), m.run(x)), rounding


def mlp_graph(name: str, acts, seed: int, n_in=5, hidden=6, n_classes=3) -> Graph:
    """Dense -> acts[0] -> Dense -> acts[1] -> Dense; ``acts[i](x, i + 1)`` gives (nodes, output)."""
    rng = np.random.default_rng(seed)
    dense = lambda name, i, o, n_o, n_i: Node(name, "Dense", [i], [o], {}, {  # noqa: E731
        "W": rng.uniform(-1, 1, (n_o, n_i)) * np.sqrt(3 / n_i), "B": rng.uniform(-.2, .2, n_o)})
    nodes = [dense("d1", "input", "h1", hidden, n_in)]
    act1, a1 = acts[0]("h1", 1)
    nodes += act1 + [dense("d2", a1, "h2", hidden, hidden)]
    act2, a2 = acts[1]("h2", 2)
    return Graph(name, "input", (n_in,), "y", nodes + act2 + [dense("out", a2, "y", n_classes, hidden)], {})


def cnn_graph(name: str, acts, seed: int, c=3, n_classes=3) -> Graph:
    """conv -> acts[0] -> MaxPool -> conv -> acts[1] -> Flatten -> Dense (input 2x4x4)."""
    rng = np.random.default_rng(seed)
    conv = lambda name, i, o, cin: Node(name, "Conv", [i], [o], {"kernel_shape": [3, 3], "pads": [1] * 4},  # noqa: E731
                                        {"W": rng.uniform(-.5, .5, (c, cin, 3, 3)), "B": rng.uniform(-.2, .2, c)})
    nodes = [conv("conv1", "input", "c1", 2)]
    act1, a1 = acts[0]("c1", 1)
    nodes += act1 + [Node("pool", "MaxPool", [a1], ["m1"], {"kernel_shape": [2, 2], "strides": [2, 2]}, {}),
                     conv("conv2", "m1", "c2", c)]
    act2, a2 = acts[1]("c2", 2)
    nodes += act2 + [Node("flat", "Flatten", [a2], ["f"], {"axis": 1}, {}),
                     Node("dense", "Dense", ["f"], ["out"], {}, {"W": rng.uniform(-.3, .3, (n_classes, c * 4)),
                                                                "B": np.zeros(n_classes)})]
    return Graph(name, "input", (2, 4, 4), "out", nodes, {})


class TableActivationChecks:
    GRAPHS: dict = {}

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("algo", ALGOS)
    def test_trains_bit_exact_with_the_datapath_model(self, algo, kind):
        make, shape = self.GRAPHS[kind]
        check_bit_exact(model(make(3), 8, 3), shape, algo, seed=4, n=12, scale=1.5, min_checked=16)

    @settings(**SHARED)
    @given(seed=st.integers(0, 2**16), bits=st.integers(6, 14), algo=st.sampled_from(ALGOS),
           kind=st.sampled_from(KINDS), rounding=st.sampled_from(["AP_RND", "AP_RND_CONV", "AP_TRN"]),
           scaling=st.sampled_from(["adaptive", "static"]))
    def test_bit_exact_with_the_datapath_model_any_width(self, seed, bits, algo, kind, rounding, scaling):
        make, shape = self.GRAPHS[kind]
        m = model(make(seed), bits, seed, act_rounding=rounding, err_rounding=rounding, scaling=scaling)
        check_bit_exact(m, shape, algo, seed=seed, n=8, scale=3)

    @settings(**SHARED)
    @given(seed=st.integers(0, 2**16), bits=st.integers(4, 16), kind=st.sampled_from(KINDS))
    def test_int_export_equals_engine(self, seed, bits, kind):
        _check_int_exact(self.GRAPHS[kind][0](seed), Numerics.from_bits(bits), seed)

    @pytest.mark.parametrize("kind", KINDS)
    def test_follows_the_float_reference_at_16_bits(self, kind):
        """The engine within 2% of the float reference, the float export within 1e-5, QDQ 5%."""
        make, shape = self.GRAPHS[kind]
        m = model(make(5), 16, 5)
        x = np.clip(np.random.default_rng(6).normal(0, 1.5, (64,) + shape), -3.9, 3.9)  # inside the input format
        ref = run_float(m.to_graph(), x)
        assert np.abs(m.run(x) - ref).max() < 0.02 * np.abs(ref).max()
        for fmt in ("float", "qdq"):
            y = ort_run(build_proto(m, fmt)[0], x)
            assert np.abs(y - ref).max() <= (1e-5 if fmt == "float" else 0.05) * max(1.0, np.abs(ref).max()), fmt

    @pytest.mark.parametrize("kind", KINDS)
    def test_bp_gradients_match_the_float_adjoint(self, kind):
        """Central differences of the float reference against the engine's BP at 16 bits."""
        make, shape = self.GRAPHS[kind]
        check_bp_gradients(make(3), shape)
