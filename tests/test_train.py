"""The integer training engine: directions against float, determinism, resume, plans."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import arch, data, float_mlp
from edgedfa.api import build_model, fit, make_trainer
from edgedfa.checkpoint import load_checkpoint
from edgedfa.credit import make_plan
from edgedfa.errors import EdgeDFAError
from edgedfa.feedback import FeedbackSpec, make_projector
from edgedfa.fixed import dequantize
from edgedfa.numerics import Numerics
from edgedfa.loss import output_error, softmax_codes
from edgedfa.train import TrainConfig, batch_order

DS = data.digits()
HIDDEN = (32, 32)
DENSE = ["dense1", "dense3", "dense5"]


def small_model(bits=8, seed=0, backend=None, **kw):
    g = arch.mlp(seed, 64, HIDDEN, 10)
    m = build_model(g, Numerics.from_bits(bits, **kw), seed, backend=backend)
    m.calibrate(DS.x_train[:256])
    return m


def float_weights(m):
    return ([m.layer(n).params["W"].value() for n in DENSE], [m.layer(n).params["B"].value() for n in DENSE])


def cosine(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def one_step(m, algo, **cfg):
    tr = make_trainer(m, TrainConfig(algo=algo, **cfg))
    W0, _ = float_weights(m)
    x, y = DS.x_train[:64], DS.y_train[:64]
    tr.step(m.quantize_input(x), y, 0, 10)
    W1, _ = float_weights(m)
    return tr, [w1 - w0 for w0, w1 in zip(W0, W1)], x, y


def test_integer_forward_within_format_bound():
    m = small_model(bits=16, acc_bits=40)
    Ws, Bs = float_weights(m)
    x = dequantize(m.quantize_input(DS.x_test).codes, m.in_fmt).reshape(len(DS.x_test), -1)
    ref = float_mlp.forward(Ws, Bs, x)[-1]
    got = m.run(DS.x_test)
    # each of 3 layers rounds once to nearest at its output LSB (2^-F), then errors grow by |W|
    lsb = max(m.layer(n).out_fmt.lsb for n in DENSE)
    gain = np.prod([np.abs(w).sum(axis=1).max() for w in Ws])
    assert np.abs(got - ref).max() <= lsb * (1 + gain) * 3
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_bp_step_direction_matches_float():
    m = small_model(bits=16, update_rule="sgd")  # SGD's step is the gradient's direction
    Ws, Bs = float_weights(m)
    _, deltas, x, y = one_step(m, "bp")
    xq = dequantize(m.quantize_input(x).codes, m.in_fmt)
    for (gw, _), d in zip(float_mlp.gradients(Ws, Bs, xq, y), deltas):
        assert cosine(-d, gw) >= 0.99


@pytest.mark.parametrize("bits,bound", [(16, 0.999), (8, 0.95)])
def test_bp_gradients_match_float(bits, bound):
    """The wide gradient before the (stochastic) update, at 8 and 16 bits."""
    m = small_model(bits=bits)
    Ws, Bs = float_weights(m)
    seen = {}
    for n in DENSE:
        layer = m.layer(n)
        layer.weight_update = lambda g, step, lr, n=n: seen.setdefault(n, g) and {}
    tr = make_trainer(m, TrainConfig(algo="bp"))
    x, y = DS.x_train[:64], DS.y_train[:64]
    tr.step(m.quantize_input(x), y, 0, 10)
    xq = dequantize(m.quantize_input(x).codes, m.in_fmt)
    for n, (gw, gb) in zip(DENSE, float_mlp.gradients(Ws, Bs, xq, y)):
        assert cosine(seen[n]["W"].value(), gw) >= bound
        assert cosine(seen[n]["B"].value(), gb) >= bound


def test_adam_first_step_is_the_gradient_sign_at_the_learning_rate():
    """Adam's first step: m = g, v = g^2, so each parameter moves by lr * g / 2^k with 2^k the
    power of two nearest |g|: the gradient's sign, at 2^-0.5..2^0.5 of the learning rate."""
    m = small_model(bits=16)
    Ws, Bs = float_weights(m)
    tr, deltas, x, y = one_step(m, "bp")
    lr = 2.0 ** -(tr.cfg.lr_shift + 10 - tr.cfg.shift_at(0))  # one_step's shift 10: its decays from the base
    xq = dequantize(m.quantize_input(x).codes, m.in_fmt)
    for (gw, _), d in zip(float_mlp.gradients(Ws, Bs, xq, y), deltas):
        big = np.abs(gw) > 0.01 * np.abs(gw).max()  # the 16-bit moments keep these exactly enough
        assert (np.sign(-d[big]) == np.sign(gw[big])).mean() >= 0.99
        ratio = np.abs(d[big]) / lr
        assert np.median(ratio) > 0.5 and (ratio <= 2 ** 0.5 + 2 ** -8).all()


def test_dfa_step_direction_matches_float_dfa():
    m = small_model(bits=16, update_rule="sgd")
    Ws, Bs = float_weights(m)
    tr, deltas, x, y = one_step(m, "dfa")
    fbs = []
    for mod in tr.plan.modules[:-1]:
        target, proj = tr.projectors[mod.name]
        fbs.append(proj.stored_matrix().astype(np.float64))
    xq = dequantize(m.quantize_input(x).codes, m.in_fmt)
    grads = float_mlp.gradients(Ws, Bs, xq, y, feedback=fbs)
    for (gw, _), d in zip(grads, deltas):
        assert cosine(-d, gw) >= 0.9


def test_integer_training_tracks_float_training():
    seed = 3
    m = small_model(bits=16, seed=seed)
    Ws, Bs = float_weights(m)
    x = dequantize(m.quantize_input(DS.x_train).codes, m.in_fmt)
    fW, fB = float_mlp.train(Ws, Bs, x, DS.y_train, 3, 2.0**-4, 32, lambda ep: batch_order(seed, ep, len(x)))
    float_acc = float_mlp.accuracy(fW, fB, DS.x_test, DS.y_test)
    met = fit(m, DS, TrainConfig(algo="bp", epochs=3, lr_shift=4, lr_decay_epochs=[], seed=seed), quiet=True)  # a constant rate, as the float run
    assert float_acc > 0.85
    assert abs(met["test_accuracy"] - float_acc) <= 0.03


def _train_weights(seed=0, backend=None, algo="sdfa", epochs=2):
    m = small_model(seed=seed, backend=backend)
    fit(m, DS, TrainConfig(algo=algo, epochs=epochs, seed=seed), quiet=True)
    return {k: v.copy() for k, v in m.state_arrays().items()}


@pytest.mark.parametrize("algo", ["bp", "dfa", "sdfa", "hybrid"])
def test_same_seed_same_bits_across_runs_and_backends(algo):
    a = _train_weights(algo=algo)
    b = _train_weights(algo=algo)
    c = _train_weights(algo=algo, backend="reference")
    for k in a:
        assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]), k
    d = _train_weights(seed=1, algo=algo)
    assert any(not np.array_equal(a[k], d[k]) for k in a)


@pytest.mark.parametrize("kind,values", [("dense", "uniform"), ("dense", "binary"), ("sparse", "ternary"),
                                         ("sparse", "uniform"), ("channel", "binary")])
def test_regenerated_feedback_equals_stored(kind, values):
    shape = (4, 3, 3) if kind == "channel" else (40,)
    regen = make_projector(FeedbackSpec(kind, values, 2, regenerate=True), 3, 11, shape, 10)
    stored = make_projector(FeedbackSpec(kind, values, 2, regenerate=False), 3, 11, shape, 10)
    e = output_error(type(small_model().quantize_input(DS.x_train[:1]))(np.array([[3, -5, 2, 0, 1, 9, -2, 0, 4, 1]] * 3),
                                                                        small_model().in_fmt), np.array([1, 2, 3]), 8)
    a = regen.project(e, 8, "AP_RND")
    b = stored.project(e, 8, "AP_RND")
    assert a.fmt == b.fmt and np.array_equal(a.codes, b.codes)
    assert a.codes.shape == (3,) + shape and np.abs(a.codes).max() > 0


@pytest.mark.parametrize("keep", [True, False])
def test_a_regenerated_feedback_is_drawn_once_when_small(monkeypatch, keep):
    """The engine keeps a regenerated matrix up to KEEP_BYTES (one PRNG pass per run, not per
    projection); a bigger one is drawn at every projection. The values are the same either way."""
    import edgedfa.feedback.base as fbase

    monkeypatch.setattr(fbase, "KEEP_BYTES", fbase.KEEP_BYTES if keep else 0)
    p = make_projector(FeedbackSpec("sparse", "binary", 2, regenerate=True), 1, 5, (50,), 10)
    drawn = []
    generate = p.generate
    monkeypatch.setattr(p, "generate", lambda: drawn.append(1) or generate())
    first, second = p.matrix(), p.matrix()
    assert len(drawn) == (1 if keep else 2)
    stored = make_projector(FeedbackSpec("sparse", "binary", 2, regenerate=False), 1, 5, (50,), 10).matrix()
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(first, second, stored))


def test_sparse_feedback_has_k_nonzeros_per_unit():
    p = make_projector(FeedbackSpec("sparse", "binary", 2), 1, 5, (50,), 10)
    idx, vals = p.stored_matrix()
    assert idx.shape == (50, 2) and set(np.unique(vals)) <= {-1, 1}
    assert all(len(set(row)) == 2 for row in idx)
    assert len(np.unique(idx[:, 0])) > 5  # indices spread over the classes


def test_softmax_lut_close_to_float():
    from edgedfa.fixed import FixedFormat
    from edgedfa.fixed import QTensor

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (200, 10))
    fmt = FixedFormat(12, 5)
    codes = np.round(z * 2**fmt.frac_bits).astype(np.int64)
    p = softmax_codes(QTensor(codes, fmt), 15) / 2**15
    zq = codes / 2**fmt.frac_bits
    ref = np.exp(zq - zq.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.abs(p - ref).max() < 5e-3


@settings(max_examples=60, deadline=None)
@given(frac=st.integers(-40, -7), width=st.integers(2, 16), seed=st.integers(0, 2**16))
def test_softmax_of_a_coarse_logit_format_is_that_of_the_same_values_finer(frac, width, seed):
    """A diverging run's logits grow to formats with LSBs of 2^7 and more; the softmax's
    left shift then clamps at 2^-32 instead of overflowing (§11): the same codes as the same
    values in a finer format, in the engine and in hdl_models' output-error unit."""
    from edgedfa.fixed import FixedFormat, QTensor
    from hdl_models.softmax_unit import SoftmaxUnit

    rng = np.random.default_rng(seed)
    fmt = FixedFormat.with_frac(width, frac)
    codes = rng.integers(fmt.min_code, fmt.max_code + 1, (6, 5))
    codes[0] = codes[0, 0]  # a sample of ties
    lift = -6 - frac  # the same values with F = -6: a right shift of 0
    fine = QTensor(codes << lift, FixedFormat.with_frac(min(width + lift, 48), -6))
    if lift + width > 40:  # the finer form would overflow its own product: compare across units only
        fine = None
    got = softmax_codes(QTensor(codes, fmt), 7)
    if fine is not None:
        assert got.tolist() == softmax_codes(fine, 7).tolist()
    labels = rng.integers(0, 5, 6)
    hw, hw_fmt = SoftmaxUnit().output_error(codes, frac, labels, 8)
    e = output_error(QTensor(codes, fmt), labels, 8)
    assert hw_fmt == e.fmt and hw.tolist() == e.codes.tolist()


@pytest.mark.parametrize("stage", ["backward", "update", "exponent unit"])
def test_a_refusal_inside_a_step_names_the_layer_and_the_stage(stage, monkeypatch):
    """A diverging run ends in a format no register holds; the message says where."""
    import edgedfa.train

    m = small_model()
    tr = make_trainer(m, TrainConfig(algo="bp"))
    layer = m.layer("dense3")

    def refuse(*args, **kwargs):
        raise EdgeDFAError("its LSB 2^65 is coarser than the supported 2^64")

    if stage == "backward":
        monkeypatch.setattr(layer, "backward", refuse)
    elif stage == "update":
        monkeypatch.setattr(layer, "weight_update", refuse)
    else:
        manage = edgedfa.train.manage_outputs
        monkeypatch.setattr(edgedfa.train, "manage_outputs", lambda l: refuse() if l is layer else manage(l))
    with pytest.raises(EdgeDFAError, match=rf"^dense3 \(Dense\), {stage}: its LSB 2\^65"):
        tr.step(m.quantize_input(DS.x_train[:32]), DS.y_train[:32], 0, 10)


def test_saturated_outputs_pass_no_error():
    m = small_model(bits=8, act_int_bits=1)  # tiny activation range: many outputs clamp
    tr = make_trainer(m, TrainConfig(algo="bp"))
    xq = m.quantize_input(DS.x_train[:32])
    _, caches, env = m.forward(xq, train=True)
    x_in, live = caches["dense1"]
    assert not live.all()
    dy = type(xq)(np.ones((32, 32), dtype=np.int64), m.layer("dense1").out_fmt)
    dxs, grads = m.layer("dense1").backward(caches["dense1"], dy, [False])
    assert np.array_equal(grads["B"].codes, live.sum(axis=0))


def test_plans_follow_documented_credit_paths():
    mlp = arch.mlp(0)
    assert [m.source for m in make_plan(mlp, "bp").modules] == ["output"]
    dfa = make_plan(mlp, "dfa")
    assert [m.nodes for m in dfa.modules] == [["dense1", "relu2"], ["dense3", "relu4"], ["dense5"]]
    assert [m.source for m in dfa.modules] == ["dfa", "dfa", "output"]
    assert make_plan(mlp, "sdfa", k=3).modules[0].feedback.kind == "sparse"
    assert make_plan(mlp, "sdfa", k=3).modules[0].feedback.k == 3
    hyb = make_plan(mlp, "hybrid")
    assert [m.source for m in hyb.modules] == ["dfa", "output"]
    assert hyb.modules[1].nodes == ["dense3", "relu4", "dense5"]
    cnn = arch.cnn(0)
    mod = make_plan(cnn, "modular")
    assert [m.nodes[0] for m in mod.modules] == ["conv1", "conv4", "flatten7"]
    assert [m.nodes for m in make_plan(cnn, "sdfa").modules][1] == ["conv4", "relu5", "maxpool6"]
    assert [m.feedback.kind for m in mod.modules[:-1]] == ["channel", "channel"]
    hyb = make_plan(cnn, "hybrid", k=2)
    assert [(m.nodes[0], m.source) for m in hyb.modules] == [("conv1", "dfa"), ("conv4", "output")]
    assert (hyb.modules[0].feedback.kind, hyb.modules[0].feedback.k) == ("sparse", 2)
    assert hyb.modules[0].layer_options == {"conv1": {"frozen": ["B"]}} and hyb.modules[1].layer_options == {}
    assert make_plan(cnn, "hybrid", kind="dilated").modules[0].feedback.kind == "dilated"
    gru = arch.recurrent("gru", 0)
    step = make_plan(gru, "dfa")
    assert step.modules[0].target == "gru_out0" and step.modules[0].layer_options == {"gru": {"bptt_steps": 0}}
    assert make_plan(gru, "modular").modules[0].target is None
    assert [m.source for m in make_plan(gru, "hybrid").modules] == ["dfa", "output"]  # never plain BP


def test_dfa_module_gets_no_backprop_error():
    m = small_model()
    tr = make_trainer(m, TrainConfig(algo="dfa"))
    assert tr._needs[("dense3", "relu2_out")] is False  # DFA boundary: dense3 never computes dx
    assert tr._needs[("relu2", "dense1_out")] is True  # inside a module errors travel by BP
    bp = make_trainer(small_model(), TrainConfig(algo="bp"))
    assert bp._needs[("dense3", "relu2_out")] is True
    assert bp._needs[("dense1", "input")] is False  # nothing upstream of the input trains


def test_learning_rate_schedule_and_batch_shift():
    cfg = TrainConfig(lr_shift=4, batch_size=32, lr_decay_epochs=[2, 5])
    assert [cfg.shift_at(e) for e in (0, 2, 5)] == [9, 10, 11]


def test_the_default_schedule_halves_the_step_at_two_thirds_and_five_sixths_of_the_run(tmp_path):
    from edgedfa import fit as fit_run
    from edgedfa.train import default_decay_epochs

    assert {e: default_decay_epochs(e) for e in (1, 2, 3, 6, 30, 40, 100)} == {
        1: [], 2: [1], 3: [2], 6: [4, 5], 30: [20, 25], 40: [27, 33], 100: [67, 83]}
    cfg = TrainConfig(lr_shift=9, batch_size=1)
    assert cfg.lr_decay_epochs is None and cfg.decay_epochs() == [20, 25]
    assert [cfg.shift_at(e) for e in (0, 19, 20, 24, 25, 29)] == [9, 9, 10, 10, 11, 11]
    assert TrainConfig(epochs=40).decay_epochs() == [27, 33]
    assert TrainConfig(lr_decay_epochs=[]).decay_epochs() == []  # given: kept, even empty
    run = fit_run("mlp", "digits", epochs=3, out=str(tmp_path / "r"))
    assert run.metrics["lr_decay_epochs"] == [2]  # recorded in metrics.json


def test_registries_reject_duplicates_and_name_what_exists():
    from edgedfa.errors import EdgeDFAError
    from edgedfa.layers.base import layer_class, register, supported_ops

    assert "Dense" in supported_ops()  # loads every layer module first
    with pytest.raises(EdgeDFAError, match="registered twice"):
        register("Dense")(type("Again", (), {}))
    with pytest.raises(EdgeDFAError, match="node 'n1': unknown layer op 'Softsign'; supported: .*Dense"):
        layer_class("Softsign", "n1")
    with pytest.raises(EdgeDFAError, match="unknown feedback kind 'nope'; supported: .*sparse"):
        make_projector(FeedbackSpec("nope"), 1, 0, (4,), 10)
