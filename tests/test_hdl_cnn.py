"""hdl_models against the engine on random small CNNs: conv geometry, pooling, groups,
group error propagation, channel and dilated feedback, every credit plan."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from edgedfa.cosim import emulate
from hdl_models.hwconfig import HwConfig


@st.composite
def cnn_cases(draw):
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    cin = draw(st.sampled_from([1, 2]))
    h = draw(st.integers(4, 7))
    w = draw(st.integers(4, 7))
    group = draw(st.sampled_from([1, cin]))
    cout = group * draw(st.integers(1, 3)) * (2 if draw(st.booleans()) else 1)
    k = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k - 1))
    stride = draw(st.integers(1, 2))
    dil = draw(st.integers(1, 2)) if k > 1 else 1
    oh = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    if min(oh, ow) < 2:
        oh = ow = 0
    bwd_groups = None
    if draw(st.booleans()) and cout % 2 == 0 and cin % 2 == 0:
        bwd_groups = 2
    pool = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    pk = draw(st.integers(1, 2))
    ps = draw(st.integers(1, 2))
    n_classes = draw(st.integers(2, 5))
    conv_attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4, "dilations": [dil] * 2,
                  "group": group}
    if bwd_groups:
        conv_attrs.update(backward="group", backward_groups=bwd_groups)
    nodes = []
    lim = np.sqrt(6.0 / (cin // group * k * k))
    nodes.append(Node("conv1", "Conv", ["input"], ["c1"], conv_attrs,
                      {"W": rng.uniform(-lim, lim, (cout, cin // group, k, k)), "B": rng.uniform(-.1, .1, cout)}))
    nodes.append(Node("relu2", "Relu", ["c1"], ["r2"], {}, {}))
    if min(oh, ow) >= 2 and pool != "GlobalAveragePool":
        nodes.append(Node("pool3", pool, ["r2"], ["p3"], {"kernel_shape": [pk, pk], "strides": [ps, ps],
                                                           "pads": [0, 0, 0, 0]}, {}))
        ph, pw = (oh - pk) // ps + 1, (ow - pk) // ps + 1
    else:
        nodes.append(Node("pool3", "GlobalAveragePool", ["r2"], ["p3"], {}, {}))
        ph = pw = 1
    if min(oh, ow) < 2:
        ph = pw = 1
    nodes.append(Node("conv4", "Conv", ["p3"], ["c4"], {"kernel_shape": [1, 1], "group": 1},
                      {"W": rng.uniform(-.7, .7, (3, cout, 1, 1)), "B": np.zeros(3)}))
    nodes.append(Node("relu5", "Relu", ["c4"], ["r5"], {}, {}))
    nodes.append(Node("flat6", "Flatten", ["r5"], ["f6"], {"axis": 1}, {}))
    nodes.append(Node("dense7", "Dense", ["f6"], ["out"], {},
                      {"W": rng.uniform(-.5, .5, (n_classes, 3 * ph * pw)), "B": np.zeros(n_classes)}))
    graph = Graph("cnn", "input", (cin, h, w), "out", nodes, {})
    return seed, graph, n_classes, draw(st.integers(4, 10))


def run(graph, n_classes, bits, seed, cfg, modules=None, steps=1, num=None):
    model = IntModel(graph, Numerics.from_bits(bits, **(num or {})), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0, 1, (24,) + tuple(graph.input_shape))
    y = rng.integers(0, n_classes, 24)
    model.calibrate(x)
    return emulate(model, x, y, steps, HwConfig(rows=4, cols=4), train_cfg=cfg, modules=modules)


@settings(max_examples=25)
@given(case=cnn_cases(), algo=st.sampled_from(["bp", "dfa", "sdfa", "modular", "hybrid"]),
       values=st.sampled_from(["uniform", "binary", "ternary"]), regenerate=st.booleans(),
       batch=st.integers(1, 6), steps=st.integers(1, 2))
def test_cnn_bit_exact(case, algo, values, regenerate, batch, steps):
    seed, graph, n_classes, bits = case
    cfg = TrainConfig(algo=algo, batch_size=batch, feedback_values=values, feedback_regenerate=regenerate, lr_shift=2)
    r = run(graph, n_classes, bits, seed, cfg, steps=steps)
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 8


@settings(max_examples=15)
@given(case=cnn_cases(), values=st.sampled_from(["uniform", "binary", "ternary"]), taps=st.integers(1, 3),
       grid=st.sampled_from([None, "full"]), regenerate=st.booleans())
def test_cnn_dilated_feedback(case, values, taps, grid, regenerate):
    seed, graph, n_classes, bits = case
    fb = {"kind": "dilated", "values": values, "k": min(taps, n_classes), "regenerate": regenerate}
    if grid is not None:
        fb["grid"] = grid
    modules = [{"nodes": ["conv1", "relu2", "pool3"], "source": "dfa", "feedback": fb},
               {"nodes": ["conv4", "relu5", "flat6", "dense7"], "source": "bp"}]
    r = run(graph, n_classes, bits, seed, TrainConfig(algo="custom", batch_size=4), modules=modules)
    assert r["bit_exact"], r["first_mismatch"]


def test_default_cnn_all_algorithms():
    from edgedfa import arch
    from edgedfa.data import digits

    ds = digits()
    x = ds.x_train[:64].reshape(-1, 1, 8, 8)
    model = IntModel(arch.cnn(0), Numerics.from_bits(8), 0)
    model.calibrate(x)
    cycles = {}
    for algo in ("bp", "modular", "sdfa"):
        r = emulate(model, x, ds.y_train[:64], 1, HwConfig(), train_cfg=TrainConfig(algo=algo, batch_size=32))
        assert r["bit_exact"], (algo, r["first_mismatch"])
        cycles[algo] = r["cycles"]
        conv = [l for l in r["layers"] if l["layer"] == "conv4" and l["phase"] == "forward"][0]
        assert conv["macs"] == 32 * 8 * 8 // 4 * 64 * 32 * 9  # M*N*K of the im2col GEMM
    assert cycles["sdfa"] < cycles["bp"]
