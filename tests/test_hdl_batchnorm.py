"""hdl_models against the engine on networks with BatchNorm (§8.7): BatchNorm2d after a conv,
BatchNorm1d on (N, C) after a dense layer and on (N, C, L), every credit plan, several steps
with the exponents of §13 moving; the normalisation unit's ROM and reciprocal."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa.cosim import emulate
from edgedfa.graph import Graph, Node
from edgedfa.model import IntModel
from edgedfa.numerics import Numerics
from edgedfa.train import TrainConfig, Trainer
from edgedfa.credit import make_plan
from hdl_models.hwconfig import HwConfig
from hdl_models.norm_unit import ROM_CRC32, reciprocal


def bn_node(name, x, y, c, rng, momentum):
    return Node(name, "BatchNorm", [x], [y], {"epsilon": float(rng.choice([1e-5, 1e-3, 0.0])), "momentum": momentum},
                {"scale": rng.uniform(0.5, 1.5, c), "B": rng.uniform(-.3, .3, c), "mean": rng.uniform(-.5, .5, c),
                 "var": rng.uniform(.2, 2, c)})


@st.composite
def bn_nets(draw):
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    one_d = draw(st.booleans())
    cin, c, length = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(4, 7))
    momentum = draw(st.sampled_from([0.9, 0.8, 0.99, 0.0]))
    spatial = (length,) if one_d else (length, length)
    k = [3] if one_d else [3, 3]
    nodes = [Node("conv1", "Conv", ["x"], ["c1"], {"kernel_shape": k, "pads": [1] * 2 * len(k)},
                  {"W": rng.uniform(-.6, .6, (c, cin) + tuple(k)), "B": rng.uniform(-.1, .1, c)}),
             bn_node("bn2", "c1", "b2", c, rng, momentum),
             Node("relu3", "Relu", ["b2"], ["r3"], {}, {}),
             Node("flat4", "Flatten", ["r3"], ["f4"], {"axis": 1}, {})]
    hidden, n_classes = draw(st.integers(2, 6)), draw(st.integers(2, 4))
    feats = c * int(np.prod(spatial))
    nodes += [Node("dense5", "Dense", ["f4"], ["d5"], {}, {"W": rng.uniform(-.5, .5, (hidden, feats))}),
              bn_node("bn6", "d5", "b6", hidden, rng, momentum),
              Node("relu7", "Relu", ["b6"], ["r7"], {}, {}),
              Node("dense8", "Dense", ["r7"], ["y"], {}, {"W": rng.uniform(-.7, .7, (n_classes, hidden)),
                                                        "B": np.zeros(n_classes)})]
    return seed, Graph("bn", "x", (cin,) + spatial, "y", nodes, {}), n_classes


def setup(graph, n_classes, bits, seed, num=None):
    model = IntModel(graph, Numerics.from_bits(bits, **(num or {})), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0.3, 1, (24,) + tuple(graph.input_shape))
    model.calibrate(x)
    return model, x, rng.integers(0, n_classes, 24)


@settings(max_examples=30)
@given(net=bn_nets(), algo=st.sampled_from(["bp", "dfa", "sdfa", "modular", "hybrid"]), bits=st.integers(6, 16),
       batch=st.integers(1, 8), steps=st.integers(1, 3), patience=st.integers(1, 4), lr=st.integers(2, 9),
       rule=st.sampled_from(["adam", "sgd"]))
def test_batchnorm_bit_exact(net, algo, bits, batch, steps, patience, lr, rule):
    seed, graph, n_classes = net
    model, x, y = setup(graph, n_classes, bits, seed, {"exp_patience": patience, "update_rule": rule})
    cfg = TrainConfig(algo=algo, batch_size=batch, lr_shift=lr)
    r = emulate(model, x, y, steps, HwConfig(rows=4, cols=4), train_cfg=cfg)
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 10
    norm = [row for row in r["layers"] if row["layer"] == "bn2" and row["phase"] == "forward"]
    assert norm and norm[0]["cycles"] > 0 and norm[0]["macs"] > 0


def test_exponents_move_while_engine_and_model_agree():
    """A case whose BatchNorm output and running-statistics formats move within the steps."""
    graph, n_classes = _fixed_net()  # momentum 0: the running statistics are the last batch's
    model, x, y = setup(graph, n_classes, 8, 3, {"exp_patience": 1})
    cfg = TrainConfig(algo="bp", batch_size=8, lr_shift=2)
    r = emulate(model, x, y, 4, HwConfig(rows=4, cols=4), train_cfg=cfg)
    assert r["bit_exact"], r["first_mismatch"]
    before = model.formats()
    trainer = Trainer(model, make_plan(model.graph, "bp"), cfg)
    for s in range(4):
        lo = (s * 8) % (len(x) - 7)
        trainer.step(model.quantize_input(x[lo:lo + 8]), y[lo:lo + 8], s, trainer.cfg.shift_at(0))
    after = model.formats()
    moved = {k for layer in ("bn2", "bn6") for k in before[layer] if before[layer][k] != after[layer][k]}
    assert {"output", "mean"} <= moved or {"output", "var"} <= moved, (before, after)


def _fixed_net():
    rng = np.random.default_rng(11)
    nodes = [Node("conv1", "Conv", ["x"], ["c1"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                  {"W": rng.uniform(-.6, .6, (3, 1, 3, 3)), "B": rng.uniform(-.1, .1, 3)}),
             bn_node("bn2", "c1", "b2", 3, rng, 0.0),
             Node("relu3", "Relu", ["b2"], ["r3"], {}, {}),
             Node("flat4", "Flatten", ["r3"], ["f4"], {"axis": 1}, {}),
             Node("dense5", "Dense", ["f4"], ["d5"], {}, {"W": rng.uniform(-.5, .5, (4, 48))}),
             bn_node("bn6", "d5", "b6", 4, rng, 0.0),
             Node("relu7", "Relu", ["b6"], ["r7"], {}, {}),
             Node("dense8", "Dense", ["r7"], ["y"], {}, {"W": rng.uniform(-.7, .7, (3, 4)), "B": np.zeros(3)})]
    return Graph("bn", "x", (1, 4, 4), "y", nodes, {}), 3


def test_the_units_own_rom_and_divider():
    assert ROM_CRC32 == 0x893C2D5F
    for n in (1, 2, 3, 7, 8192, 8191, 32 * 31):
        r, L = reciprocal(n)
        assert r == ((1 << (32 + L)) + n // 2) // n
