"""hdl_models against the engine for credit plans whose DFA modules project a tensor's
error (``error_from``) and for ``inside = "dfa"`` modules, on the built-in CNN: every
integer bit-exact, the projection scheduled after the error it reads, honest cost figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, arch
from edgedfa.api import build_model, make_trainer
from edgedfa.feedback import FeedbackSpec, make_projector
from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from edgedfa.cosim import plan_dicts
from hdl_models.controller import Controller
from hdl_models.layers import T
from edgedfa.cosim import emulate
from hdl_models.error_projection_unit import Feedback
from hdl_models.hwconfig import HwConfig
from hdl_models.requant_unit import from_float

CNN_NODES = ["conv1", "relu2", "maxpool3", "conv4", "relu5", "maxpool6", "flatten7", "dense8"]


def cnn(seed=0, n=24):
    model = build_model(arch.build("cnn", seed, (1, 8, 8)), Numerics.from_bits(8), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(0, 1, (n, 1, 8, 8))
    y = rng.integers(0, 10, n)
    model.calibrate(x)
    return model, x, y


def run(table, seed=0, steps=2, batch=8, algo="custom"):
    model, x, y = cnn(seed)
    return emulate(model, x, y, steps, HwConfig(rows=4, cols=4),
                   train_cfg=TrainConfig(algo=algo, batch_size=batch, lr_shift=2), modules=table)


def block1_from(source, fb):
    return [{"nodes": CNN_NODES[:3], "source": "dfa", "error_from": source, "feedback": fb},
            {"nodes": CNN_NODES[3:]}]


def inside_dfa(fb, source="bp"):
    return [{"name": "body", "nodes": CNN_NODES[:6], "source": source, "inside": "dfa", "inside_feedback": fb},
            {"nodes": CNN_NODES[6:]}]


def assert_exact(r, steps=2):
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 30 * steps


def test_block1_dilated_from_conv4_error():
    """(a) block 1 by DFA from the error at conv4's output, dilated binary k=3: the source
    (32, 4, 4) has the target's grid, each cell reads the source at its own position."""
    r = run(block1_from("conv4_out", {"kind": "dilated", "values": "binary", "k": 3}))
    assert_exact(r)
    assert r["plan"][0]["error_from"] == "conv4_out"


def test_block1_dense_from_maxpool6_error():
    """(b) dense feedback reads the (32, 2, 2) error at maxpool6's output flattened."""
    assert_exact(run(block1_from("maxpool6_out", {"kind": "dense", "values": "uniform"})))


@pytest.mark.parametrize("regenerate", [True, False])
def test_inside_dfa_body(regenerate):
    """(c) inside = "dfa" on conv1..maxpool6 (source bp): block 1 takes the body's error at
    maxpool6_out through its own feedback, stored in the feedback buffer or regenerated."""
    r = run(inside_dfa({"kind": "dense", "values": "binary", "regenerate": regenerate}))
    assert_exact(r)
    assert [(m["name"], m["source"], m["error_from"]) for m in r["plan"]] == [
        ("body.0", "dfa", "maxpool6_out"), ("body", "bp", None), ("m1", "output", None)]
    assert (r["feedback_memory_bytes"] > 0) == (not regenerate)


def test_inside_dfa_dilated_stored_from_a_coarser_map():
    """inside = "dfa" with stored dilated feedback: a (64, 2, 2) source upsampled onto the
    (32, 4, 4) target; the gain shift counts the 32 x 4 target units per source cell."""
    r = run(inside_dfa({"kind": "dilated", "values": "ternary", "k": 4, "regenerate": False}))
    assert_exact(r)
    model, _, _ = cnn()
    ctl = Controller(model, plan_dicts(make_trainer(model, TrainConfig(algo="custom"), inside_dfa(
        {"kind": "dilated", "values": "ternary", "k": 4, "regenerate": False})).plan))
    f = ctl.feedback["body.0"]
    assert (f.grid, f.gain_shift) == ((2, 2), 3)
    assert r["feedback_memory_bytes"] == -(-f.memory_bits() // 8)


@settings(max_examples=25, deadline=None)
@given(source=st.sampled_from(["conv4_out", "relu5_out", "maxpool6_out", "flatten7_out", "dense8_out"]),
       kind=st.sampled_from(["dense", "sparse", "channel", "dilated"]),
       values=st.sampled_from(["uniform", "binary", "ternary"]), k=st.integers(1, 4),
       regenerate=st.booleans(), seed=st.integers(0, 50))
def test_any_source_any_kind(source, kind, values, k, regenerate, seed):
    """Every kind from every tensor above block 1 (flatten7_out: a flat source, dilated
    treats its 128 values as channels of one cell; dense8_out: the output error itself)."""
    fb = {"kind": kind, "values": values, "k": k, "regenerate": regenerate}
    assert_exact(run(block1_from(source, fb), seed=seed, steps=1, batch=4), steps=1)


def test_source_crossing_into_a_dfa_module_keeps_its_error():
    """The needs rule: maxpool6_out lies between a DFA module (target conv4_out) and the
    head; block 1 projects its error, so flatten7 must compute it anyway."""
    table = [{"nodes": CNN_NODES[:3], "source": "dfa", "error_from": "maxpool6_out",
              "feedback": {"kind": "dilated", "values": "binary", "k": 2}},
             {"nodes": CNN_NODES[3:6], "source": "dfa", "target": "conv4_out",
              "feedback": {"kind": "channel", "values": "binary"}},
             {"nodes": CNN_NODES[6:]}]
    model, _, _ = cnn()
    ctl = Controller(model, plan_dicts(make_trainer(model, TrainConfig(algo="custom"), table).plan))
    assert ctl.needs[("flatten7", "maxpool6_out")]
    assert not ctl.needs[("conv4", "maxpool3_out")]
    assert_exact(run(table))


def _one_step(table, seed=0):
    model, x, y = cnn(seed)
    ctl = Controller(model, plan_dicts(make_trainer(model, TrainConfig(algo="custom"), table).plan), HwConfig())
    xq = T(from_float(x[:8], model.in_fmt), model.in_fmt)
    _, _, led = ctl.step(xq, y[:8], 0, 4, None, 4)
    return led


@pytest.mark.parametrize("table, layer, what", [
    (block1_from("conv4_out", {"kind": "dilated", "values": "binary", "k": 3}), "relu5", "backward"),
    (block1_from("maxpool6_out", {"kind": "dense"}), "flatten7", "backward"),
    (inside_dfa({"kind": "dense", "values": "binary"}), "flatten7", "backward"),
    (block1_from(None, {"kind": "dense"}), "output", "softmax error"),
])
def test_projection_waits_for_its_source_error(table, layer, what):
    """The ledger's projection depends on the task completing the source tensor's error
    (not on the softmax error), and the schedule starts it only after that task ends."""
    led = _one_step(table)
    proj = [t for t in led.tasks if t.what == "projection"]
    assert len(proj) == 1
    deps = [led.tasks[d] for d in proj[0].deps]
    assert [(d.layer, d.what) for d in deps] == [(layer, what)]
    assert proj[0].start >= deps[0].finish
    if layer != "output":
        softmax = [t for t in led.tasks if t.what == "softmax error"][0]
        assert softmax.tid not in proj[0].deps


def residual(seed):
    """conv1 -> relu1 = r1, read by conv2, the Add and the Concat (three consumers)."""
    rng = np.random.default_rng(seed)
    conv = lambda name, i, o, cin: Node(name, "Conv", [i], [o], {"kernel_shape": [3, 3], "pads": [1] * 4},
                                        {"W": rng.uniform(-.5, .5, (3, cin, 3, 3)), "B": rng.uniform(-.1, .1, 3)})
    nodes = [conv("conv1", "input", "c1", 2), Node("relu1", "Relu", ["c1"], ["r1"], {}, {}),
             conv("conv2", "r1", "c2", 3), Node("add", "Add", ["r1", "c2"], ["a"], {}, {}),
             Node("relu2", "Relu", ["a"], ["r2"], {}, {}),
             Node("cat", "Concat", ["r2", "r1"], ["k"], {"axis": 1}, {}),
             Node("flat", "Flatten", ["k"], ["f"], {"axis": 1}, {}),
             Node("dense", "Dense", ["f"], ["out"], {}, {"W": rng.uniform(-.3, .3, (4, 6 * 16)), "B": np.zeros(4)})]
    return Graph("res", "input", (2, 4, 4), "out", nodes, {})


@pytest.mark.parametrize("source", ["r1", "a", "k"])
@pytest.mark.parametrize("kind", ["dilated", "dense", "sparse", "channel"])
def test_source_with_several_consumers_residual(source, kind):
    """A source read by several layers: its error is their sum (§7), complete only after
    the last error-sum task, which the projection waits for."""
    graph = residual(3)
    model = IntModel(graph, Numerics.from_bits(8), 3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (16, 2, 4, 4)), rng.integers(0, 4, 16)
    model.calibrate(x)
    table = [{"nodes": ["conv1"], "source": "dfa", "error_from": source,
              "feedback": {"kind": kind, "values": "ternary", "k": 2}},
             {"nodes": [n.name for n in graph.nodes[1:]]}]
    r = emulate(model, x, y, 2, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(algo="custom", batch_size=4),
                modules=table)
    assert r["bit_exact"], r["first_mismatch"]
    if source == "r1":
        ctl = Controller(model, plan_dicts(make_trainer(model, TrainConfig(algo="custom"), table).plan))
        _, _, led = ctl.step(T(from_float(x[:4], model.in_fmt), model.in_fmt), y[:4], 0, 4, None, 4)
        proj = [t for t in led.tasks if t.what == "projection"][0]
        src_task = led.tasks[proj.deps[0]]
        assert (src_task.what, len(proj.deps)) == ("error sum", 1)
        sums = [t for t in led.tasks if t.what == "error sum" and t.tid < proj.tid]
        assert src_task is sums[-1] and proj.start >= src_task.finish


def test_bad_error_from_in_the_plan_is_a_clear_error():
    model, _, _ = cnn()
    plan = plan_dicts(make_trainer(model, TrainConfig(algo="custom"),
                                   block1_from("conv4_out", {"kind": "dense"})).plan)
    for bad, match in [("nope", "no tensor"), ("input", "no tensor"), ("relu2_out", "not above")]:
        plan[0]["error_from"] = bad
        with pytest.raises(EdgeDFAError, match=match):
            Controller(model, plan)


@pytest.mark.parametrize("kind, values", [("dilated", "binary"), ("dilated", "uniform"), ("dense", "ternary"),
                                          ("channel", "binary")])
@pytest.mark.parametrize("src", [10, (32, 4, 4), (32, 2, 2)])
def test_feedback_cost_figures_for_a_map_source(kind, values, src):
    """Memory and work follow the source: dilated offsets index source channels
    (ceil_log2(Cs) bits), one per target channel and source cell; vector kinds read the
    flattened source. The stored tables equal the engine's."""
    from hdl_models.prng_unit import PrngUnit

    spec = FeedbackSpec(kind, values, 3, 8, False)
    fb = {"kind": kind, "values": values, "k": 3, "bits": 8, "regenerate": False, "options": {}}
    tgt = (16, 4, 4)
    f, p = Feedback(fb, 3, 7, tgt, src), make_projector(spec, 3, 7, tgt, src)
    n_src = int(np.prod(src))
    assert f.n_classes == n_src
    assert f.memory_bits() == p.memory_bits()
    if kind == "dilated":
        cells = int(np.prod(src[1:])) if isinstance(src, tuple) else 1
        cs = src[0] if isinstance(src, tuple) else src
        assert f.memory_bits() == 16 * cells * int(np.ceil(np.log2(cs))) + 16 * 3 * (1 if values == "binary" else 8)
        assert f.ops_per_sample() == p.macs_per_sample() == 16 * cells * 3
        assert f.words_per_projection() == 16 * (cells + 3)
        offs, kern = f.dilated_table(PrngUnit())
        e_offs, e_kern = p.stored_matrix()
        np.testing.assert_array_equal(offs, e_offs)
        np.testing.assert_array_equal(kern, e_kern)
    else:
        assert f.ops_per_sample() == f.rows * n_src == p.macs_per_sample()


def test_frozen_parameters_are_bit_exact():
    """layer_options frozen: the update unit never writes conv1's bias nor conv4's weights
    (and their neighbours' PRNG streams are those of the unfrozen run)."""
    table = [{"nodes": CNN_NODES[:3], "source": "dfa", "feedback": {"kind": "dense"},
              "layer_options": {"conv1": {"frozen": ["B"]}}},
             {"nodes": CNN_NODES[3:], "layer_options": {"conv4": {"frozen": ["W"]}}}]
    model, x, y = cnn(3)
    cfg = TrainConfig(algo="custom", batch_size=8, lr_shift=2)
    assert_exact(emulate(model, x, y, 3, HwConfig(rows=4, cols=4), train_cfg=cfg, modules=table), 3)
    ctl = Controller(model, plan_dicts(make_trainer(model, cfg, table).plan), HwConfig(rows=4, cols=4))
    before = {(n, p): t.codes.copy() for n, layer in ctl.layers.items() for p, t in layer.params.items()}
    for step in range(3):
        ctl.step(T(np.asarray(model.quantize_input(x[:8]).codes), model.in_fmt), y[:8], step, 3)
    after = {(n, p): t.codes for n, layer in ctl.layers.items() for p, t in layer.params.items()}
    frozen = {("conv1", "B"), ("conv4", "W")}
    for key in before:
        assert np.array_equal(before[key], after[key]) == (key in frozen), key
