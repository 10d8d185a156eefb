"""Adaptive scaling (docs/datapath.md §13) and the Adam update (§12): the exponent rule, bit
exactness with hdl_models while exponents move, across resume and through the int export,
and the static policy of before, bit for bit."""

import copy
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import arch, data
from edgedfa.api import build_model, fit, make_trainer
from edgedfa.checkpoint import load_checkpoint, numerics_from_dict, numerics_to_dict
from edgedfa.cosim import emulate
import edgedfa.fixed
from edgedfa.fixed import FixedFormat, QTensor
from edgedfa.numerics import Numerics
from edgedfa.scaling import decide, observe, peak_bits
from edgedfa.train import TrainConfig
from hdl_models.exponent_unit import ExponentUnit
from hdl_models.hwconfig import HwConfig

from strategies import formats, wide_codes

DS = data.digits()
SMALL = data.Dataset("digits-256", DS.x_train[:256], DS.y_train[:256], DS.x_test[:64], DS.y_test[:64])


# --------------------------------------------------------------------------- the statistics

class _Layer:
    def __init__(self):
        self.peaks, self.state = {}, {}


@given(x=st.lists(wide_codes(64), min_size=1, max_size=30), out=formats(max_width=20, min_frac=-8, max_frac=40),
       frac=st.integers(-16, 64), zeros=st.booleans(), again=st.booleans(), data=st.data())
def test_compiled_observe_equals_the_numpy_reference(x, out, frac, zeros, again, data):
    """Peak and clipped / rounded-to-zero tallies, one pass or numpy, on any wide codes (the
    int64 rails, bounds beyond them) and any destination format."""
    codes = np.array(x, dtype=np.int64).reshape(data.draw(st.sampled_from([(-1,), (1, -1)])))
    wide = QTensor(codes, FixedFormat.with_frac(48, frac))
    out_codes = np.where(np.arange(codes.size).reshape(codes.shape) % 2 == 0, 0, codes) if zeros else None
    runs = []
    for compiled in (True, False):
        layer = _Layer()
        edgedfa.fixed.COMPILED = compiled
        try:
            for _ in range(2 if again else 1):
                observe(layer, "out", wide, out, out_codes)
        finally:
            edgedfa.fixed.COMPILED = True
        runs.append((layer.peaks, {k: v.tolist() for k, v in layer.state.items()}))
    assert runs[0] == runs[1]
    assert runs[0][1]["tally:out"][0] == codes.size * (2 if again else 1)


# --------------------------------------------------------------------------- the rule

@given(b=st.integers(0, 20), width=st.integers(4, 16), low=st.integers(0, 20), patience=st.integers(1, 20))
def test_decision_keeps_the_peak_in_the_top_half_but_one(b, width, low, patience):
    low = min(low, patience - 1)
    delta, new_low = decide(b, width, low, patience)
    if b >= width - 1:
        assert delta == b - (width - 2) and b - delta == width - 2 and new_low == 0
    elif b == width - 2:
        assert (delta, new_low) == (0, 0)
    elif low + 1 >= patience:
        assert (delta, new_low) == (-1, 0)
    else:
        assert (delta, new_low) == (0, low + 1)
    # the accelerator's exponent unit decides the same (no floor in the way)
    assert ExponentUnit.decide(b, FixedFormat(width, 3), low, patience, None) == (delta, new_low)


@given(maxabs=st.integers(0, 2**40), src=st.integers(-8, 40), frac=st.integers(-8, 30))
def test_peak_bits_counts_in_the_formats_lsbs(maxabs, src, frac):
    fmt = FixedFormat.with_frac(8, frac)
    b = peak_bits(maxabs, src, fmt)
    assert b == ExponentUnit.in_lsbs(maxabs, src, fmt)
    value_in_lsbs = maxabs * 2.0 ** (frac - src)
    assert 2.0 ** (b - 1) <= max(value_in_lsbs, 0.5) < 2.0 ** b or (b == 0 and value_in_lsbs < 1)


# --------------------------------------------------------------------------- a moving model

def mlp_model(seed=0, **num):
    """A PyTorch-style initialised MLP (small weights: the formats must grow while training)."""
    g = arch.mlp(seed, 64, (32, 32), 10)
    for node in g.nodes:
        if node.op == "Dense":
            node.params["W"] = node.params["W"] / 4
    model = build_model(g, Numerics.from_bits(8, **num), seed)
    model.calibrate(SMALL.x_train)
    return model


def test_formats_grow_while_training_and_nothing_sits_at_the_rails():
    model = mlp_model(exp_patience=4)
    before = model.formats()
    met = fit(model, SMALL, TrainConfig(algo="bp", epochs=4, seed=1), quiet=True)
    after = model.formats()
    moved = [(k, t) for k in after if k != "input" for t in after[k] if after[k][t] != before[k][t]]
    assert moved, "no exponent moved"
    assert all(v["fraction_at_limit"] < 0.01 for layer in met["saturation"].values() for v in layer.values())
    moves = sum(e.get("exponent_moves", 0) for h in met["history"] for layer in h["scaling"].values()
                for e in layer.values())
    assert moves >= len(moved)
    assert met["scaling"]["dense1"]["out"]["values"] > 0  # activations were tallied


def test_static_policy_keeps_every_format():
    model = mlp_model(scaling="static")
    before = model.formats()
    fit(model, SMALL, TrainConfig(algo="bp", epochs=2, seed=1), quiet=True)
    assert model.formats() == before


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), algo=st.sampled_from(["bp", "sdfa", "dfa"]), patience=st.integers(1, 3),
       rule=st.sampled_from(["adam", "sgd"]))
def test_engine_and_hdl_models_agree_while_exponents_move(seed, algo, patience, rule):
    model = mlp_model(seed, exp_patience=patience, update_rule=rule)
    cfg = TrainConfig(algo=algo, batch_size=16, seed=seed, lr_shift=4 if rule == "adam" else 1)
    report = emulate(model, SMALL.x_train, SMALL.y_train, 4, HwConfig(rows=4, cols=4), train_cfg=cfg)
    assert report["bit_exact"], report["first_mismatch"]


def test_exponents_move_in_the_emulated_steps():
    """The test above is not vacuous: at this step size formats do move within four steps."""
    model = mlp_model(3, exp_patience=1)
    cfg = TrainConfig(algo="bp", batch_size=16, seed=3, lr_shift=4)
    tr = make_trainer(copy.deepcopy(model), cfg)
    before = tr.model.formats()
    for s in range(4):
        xb, yb = SMALL.x_train[16 * s:16 * (s + 1)], SMALL.y_train[16 * s:16 * (s + 1)]
        tr.step(tr.model.quantize_input(xb), yb, s, tr.cfg.shift_at(0))
    assert tr.model.formats() != before


@pytest.mark.parametrize("name", ["cnn", "gru", "lstm"])
def test_conv_and_recurrent_cells_agree_with_hdl_models(name):
    ds = data.digits((8, 8)) if name == "cnn" else data.digits((8, 8))
    g = arch.build(name, 0, (1, 8, 8) if name == "cnn" else (8, 8), 10)
    model = build_model(g, Numerics.from_bits(8, exp_patience=1), 0)
    x = ds.x_train[:64].reshape((-1,) + g.input_shape)
    model.calibrate(x)
    report = emulate(model, x, ds.y_train[:64], 3, HwConfig(rows=4, cols=4),
                     train_cfg=TrainConfig(algo="hybrid" if name == "cnn" else "bp", batch_size=16, lr_shift=4))
    assert report["bit_exact"], report["first_mismatch"]


def gap_cnn_model(**num):
    """conv3x3(6) - ReLU - GlobalAveragePool - Flatten - Dense on 8x8 digits, calibrated."""
    from edgedfa.graph import Graph, Node

    rng = np.random.default_rng(7)
    nodes = [Node("conv1", "Conv", ["input"], ["c1"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                  {"W": rng.uniform(-1 / 3, 1 / 3, (6, 1, 3, 3)), "B": rng.uniform(-.1, .1, 6)}),
             Node("relu2", "Relu", ["c1"], ["r2"], {}, {}),
             Node("gap3", "GlobalAveragePool", ["r2"], ["g3"], {}, {}),
             Node("flat4", "Flatten", ["g3"], ["f4"], {"axis": 1}, {}),
             Node("dense5", "Dense", ["f4"], ["out"], {}, {"W": rng.uniform(-.4, .4, (10, 6)), "B": np.zeros(10)})]
    model = build_model(Graph("gap", "input", (1, 8, 8), "out", nodes, {}), Numerics.from_bits(8, **num), 0)
    model.calibrate(SMALL.x_train.reshape(-1, 1, 8, 8))
    return model


def test_global_average_pooling_has_a_managed_format_of_its_own():
    """Adaptive: the mean gets its own format, finer than its input's, moved by the exponent
    unit and bit-exact with hdl_models; static: the input's, as before."""
    model = gap_cnn_model(exp_patience=1)
    fmts = model.formats()
    assert FixedFormat.parse(fmts["gap3"]["output"]).frac_bits > FixedFormat.parse(fmts["relu2"]["output"]).frac_bits
    gap = next(layer for layer in model.layers if layer.name == "gap3")
    gap.set_managed_format("out", FixedFormat(8, gap.out_fmt.int_bits + 3))  # too coarse: it must shrink
    fmts = model.formats()
    x = SMALL.x_train.reshape(-1, 1, 8, 8)
    cfg = TrainConfig(algo="bp", batch_size=16, seed=4, lr_shift=4)
    tr = make_trainer(copy.deepcopy(model), cfg)
    for s in range(6):
        tr.step(tr.model.quantize_input(x[16 * s:16 * (s + 1)]), SMALL.y_train[16 * s:16 * (s + 1)], s, tr.cfg.shift_at(0))
    assert tr.model.formats()["gap3"]["output"] != fmts["gap3"]["output"]  # the exponent unit moved it
    report = emulate(model, x[:96], SMALL.y_train[:96], 6, HwConfig(rows=4, cols=4), train_cfg=cfg)
    assert report["bit_exact"], report["first_mismatch"]
    static = gap_cnn_model(scaling="static").formats()
    assert static["gap3"]["output"] == static["relu2"]["output"]


# --------------------------------------------------------------------------- resume, export

def test_resume_moves_exponents_exactly_as_an_uninterrupted_run(tmp_path):
    cfg = dict(algo="sdfa", seed=5, lr_decay_epochs=[3])  # the 4-epoch run's schedule, also in its first part
    whole = mlp_model(exp_patience=2)
    fit(whole, SMALL, TrainConfig(epochs=4, **cfg), quiet=True)
    part = mlp_model(exp_patience=2)
    fit(part, SMALL, TrainConfig(epochs=2, **cfg), str(tmp_path), quiet=True)
    resumed = load_checkpoint(tmp_path)
    meta = resumed.checkpoint_meta
    fit(resumed, SMALL, TrainConfig(epochs=4, **cfg), quiet=True, start=meta["progress"])
    assert resumed.formats() == whole.formats()
    for a, b in zip(whole.layers, resumed.layers):
        for k in a.params:
            assert np.array_equal(a.params[k].codes, b.params[k].codes), (a.name, k)
        for k in a.state:
            assert np.array_equal(np.asarray(a.state[k]), np.asarray(b.state[k])), (a.name, k)


def test_int_export_of_an_adaptively_trained_model_is_bit_exact(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from edgedfa.onnx.export import export_model

    model = mlp_model(exp_patience=2)
    before = model.formats()
    fit(model, SMALL, TrainConfig(algo="bp", epochs=3, seed=2), quiet=True)
    assert model.formats() != before
    path = str(tmp_path / "m.onnx")
    export_model(model, "int", path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = SMALL.x_test.astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.array_equal(got, model.run(x))


# --------------------------------------------------------------------------- the policy of before

def _digest(model) -> str:
    h = hashlib.sha256()
    for layer in model.layers:
        for k in sorted(layer.params):
            t = layer.params[k]
            h.update(np.ascontiguousarray(t.codes.astype(np.int64)).tobytes())
            h.update(str(t.fmt).encode())
        h.update(str(layer.out_fmt).encode())
    return h.hexdigest()[:16]


# Digests of two epochs on 256 digits by the release before adaptive scaling (static formats,
# SGD, 8-bit recurrent gates and state errors), with the numerics its per-architecture
# defaults used: the static policy reproduces them bit for bit.
LEGACY = {"mlp": ({}, dict(algo="sdfa", lr_shift=4), "28a14cde16e57cce"),
          "cnn": (dict(weight_headroom=2, momentum_shift=3), dict(algo="hybrid", lr_shift=5), "a69dc1397db68dd3"),
          "gru": (dict(weight_int_bits=1, update_norm_bits=2), dict(algo="bp", lr_shift=4), "a9ee1d8854c4ce77")}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_static_policy_reproduces_the_release_before(name):
    num, cfg, digest = LEGACY[name]
    legacy = numerics_from_dict(dict(numerics_to_dict(Numerics.from_bits(8, acc_bits=32, **num)),
                                     scaling="static", update_rule="sgd", gate_bits=8, state_err_bits=8))
    model = build_model(arch.build(name, 0, DS.sample_shape, 10), legacy, 0)
    fit(model, SMALL, TrainConfig(epochs=2, batch_size=32, seed=0, lr_decay_epochs=[], **cfg), quiet=True)
    assert _digest(model) == digest  # the release before had no default decay


def test_a_checkpoint_without_the_new_fields_reads_as_the_policy_of_before():
    old = {k: v for k, v in numerics_to_dict(Numerics.from_bits(8)).items()
           if k not in ("scaling", "update_rule", "gate_bits", "state_err_bits")}
    num = numerics_from_dict(old)
    assert (num.scaling, num.rule, num.gate_width, num.state_err_width) == ("static", "sgd", 8, 8)


def test_the_default_policy_is_adaptive_from_8_bits_and_static_below(tmp_path):
    """Below 8 bits a peak-following exponent ratchets up on the noise of stochastic updates;
    the default keeps those formats static (a 4-bit MLP trained to chance with them adaptive)."""
    from edgedfa import fit as fit_run

    assert [Numerics.from_bits(b).policy for b in (4, 6, 7, 8, 16)] == ["static"] * 3 + ["adaptive"] * 2
    assert Numerics.from_bits(8).with_overrides({"act_bits": 6}).policy == "static"
    assert Numerics.from_bits(4, scaling="adaptive").adaptive  # given: kept
    run = fit_run("mlp", "digits", bits=4, algo="bp", epochs=10, out=str(tmp_path / "r4"))
    assert run.metrics["scaling_policy"] == "static" and run.metrics["test_accuracy"] > 0.8
