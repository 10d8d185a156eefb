"""Integer RNN/GRU/LSTM against the float ONNX reference and onnxruntime; integer BPTT."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_recurrent_float import GATES, float_backward, float_forward, ort_run

from edgedfa import lut
from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, quantize
from edgedfa.graph import Node
from edgedfa.fixed import QTensor
from edgedfa.layers.base import LayerSpec, layer_class
from edgedfa.numerics import Numerics


def make(op, bits=16, D=1, H=6, n_in=4, T=6, N=3, seed=0, direction=None, lbr=0, acts=None,
         layout=0, w_scale=0.5, r_scale=None, x_scale=1.0, extra=None):
    """(layer calibrated on x, x QTensor in the layer's layout, float params dequantized)."""
    rng = np.random.default_rng(seed)
    G = GATES[op]
    r_scale = 1.2 / H if r_scale is None else r_scale
    params = {"W": rng.uniform(-w_scale, w_scale, (D, G * H, n_in)),
              "R": rng.uniform(-r_scale, r_scale, (D, G * H, H)),
              "B": rng.uniform(-0.3, 0.3, (D, 2 * G * H))}
    direction = direction or ("bidirectional" if D == 2 else "forward")
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    if acts:
        attrs["activations"] = acts
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    num = Numerics.from_bits(bits, acc_bits=48 if bits > 8 else 32)
    layer = layer_class(op)(Node("cell", op, ["x"], outs, attrs, params),
                            LayerSpec(3, num, 7, [(T, n_in)], extra=dict(extra or {})))
    shape = (N, T, n_in) if layout else (T, N, n_in)
    fmt = FixedFormat(bits, 3)
    x = QTensor(quantize(rng.normal(size=shape) * x_scale, fmt), fmt)
    layer.calibrate([x])
    return layer, x, layer.float_params()


def time_major(layer, x):
    v = x.value()
    return np.moveaxis(v, 0, 1) if layer.node.attrs.get("layout") else v


def reference(layer, x):
    p = layer.float_params()
    a = layer.node.attrs
    return float_forward(layer.op, time_major(layer, x), p["W"], p["R"], p["B"], a["direction"],
                         a.get("linear_before_reset", 0), _acts(layer))


def _acts(layer):
    return [acts[0] for acts in layer.activations] if layer.op == "RNN" else None


def norm_inf(R, H, G):
    """Largest row abs-sum of any gate block of R (the recurrent Lipschitz factor)."""
    return max(float(np.abs(R[d, g * H:(g + 1) * H]).sum(axis=1).max()) for d in range(R.shape[0]) for g in range(G))


def forward_bound(layer, x, ref):
    """Worst-case |integer h - float h| over the sequence, propagated step by step: table
    errors (lut.error_bound, §9.5), half-LSB state roundings, bias alignment, and the
    recurrence through |R| (row abs-sums) and the float trajectory's gate magnitudes."""
    p, H, G = layer.float_params(), layer.hidden, layer.gates
    es, et = lut.error_bound("sigmoid", layer.gate_fmt), lut.error_bound("tanh", layer.gate_fmt)
    half_h = layer.h_fmt.lsb / 2
    rho = norm_inf(p["R"], H, G)
    bias = 2.0 ** -(x.fmt.frac_bits + layer.params["W"].fmt.frac_bits) + 2.0 ** -(
        layer.h_fmt.frac_bits + layer.params["R"].fmt.frac_bits)
    worst = 0.0
    for recs in ref[3]:
        e = ec = 0.0
        for rec in recs:
            e, ec = _step_bound(layer, rec, e, ec, es, et, half_h, rho, bias)
            worst = max(worst, e)
    return worst


def _step_bound(layer, rec, e, ec, es, et, half_h, rho, bias):
    mx = lambda a: float(np.abs(a).max())  # noqa: E731
    if layer.op == "RNN":
        act = _acts(layer)
        gain = max({"Tanh": 1.0, "Sigmoid": 0.25, "Relu": 1.0}[a] for a in act)
        table = max({"Tanh": et, "Sigmoid": es, "Relu": half_h}[a] for a in act)
        return table + gain * (rho * e + bias), 0.0
    eg3 = es + (rho * e + bias) / 4  # a sigmoid gate
    if layer.op == "GRU":
        r, z = rec["r"], rec["z"]
        if layer.lbr:
            en = et + eg3 * (mx(rec["hh"]) + rho * e) + mx(r) * rho * e + bias
        else:
            erh = eg3 * (mx(rec["h_prev"]) + e) + mx(r) * e + half_h
            en = et + rho * erh + bias
        mix = max((1 - z.min()) * en + z.min() * e, (1 - z.max()) * en + z.max() * e)
        return mix + eg3 * (mx(rec["h_prev"] - rec["n"]) + e + en) + half_h, 0.0
    eg = et + rho * e + bias
    ec = eg3 * (mx(rec["c_prev"]) + ec) + mx(rec["f"]) * ec + eg3 * (mx(rec["g"]) + eg) + mx(rec["i"]) * eg \
        + layer.cell_fmt.lsb / 2
    etc = et + ec
    return eg3 * (mx(rec["tc"]) + etc) + mx(rec["o"]) * etc + half_h, ec


def y_time_major(layer, ys):
    Y = ys[0].value()
    return np.moveaxis(Y, 0, 2) if layer.node.attrs.get("layout") else Y


CELLS = [("RNN", 1, None, 0, ["Tanh"]), ("RNN", 1, "reverse", 0, ["Relu"]),
         ("RNN", 2, None, 0, ["Tanh", "Sigmoid"]),
         ("GRU", 1, None, 0, None), ("GRU", 1, None, 1, None), ("GRU", 2, None, 1, None),
         ("GRU", 1, "reverse", 0, None), ("LSTM", 1, None, 0, None), ("LSTM", 2, None, 0, None)]


@pytest.mark.parametrize("op,D,direction,lbr,acts", CELLS)
@pytest.mark.parametrize("bits", [8, 16])
def test_forward_matches_float_and_onnxruntime_within_format_bound(op, D, direction, lbr, acts, bits):
    layer, x, p = make(op, bits, D, direction=direction, lbr=lbr, acts=acts, seed=bits)
    ys, _ = layer.forward([x])
    ref = reference(layer, x)
    bound = forward_bound(layer, x, ref)
    err = np.abs(y_time_major(layer, ys) - ref[0]).max()
    assert err <= bound
    assert np.abs(ys[1].value() - ref[1]).max() <= bound
    assert err <= 3 * layer.h_fmt.lsb  # measured: at most 2 LSB of h over 6 steps
    if bits == 16:
        assert bound < 100 * layer.h_fmt.lsb  # the worst case stays below 3e-3
    a = layer.node.attrs
    got = ort_run(op, time_major(layer, x), p["W"], p["R"], p["B"], a["direction"], lbr, acts)
    assert np.abs(y_time_major(layer, ys) - got[0]).max() <= bound + 1e-5


def test_lstm_cell_output_matches_reference():
    layer, x, _ = make("LSTM", 16, 1, seed=5)
    ys, _ = layer.forward([x])
    ref = reference(layer, x)
    assert np.abs(ys[2].value() - ref[2]).max() < 1e-3
    assert layer.cell_fmt.width == 16 and layer.out_fmts[2] == layer.cell_fmt


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_layout1_reverse_and_bidirectional_are_the_same_integers(op):
    fwd, x0, _ = make(op, 8, 1, seed=11, lbr=1)
    ys0, _ = fwd.forward([x0])
    bat, _, _ = make(op, 8, 1, seed=11, lbr=1, layout=1)
    x1 = QTensor(np.moveaxis(x0.codes, 0, 1), x0.fmt)
    ys1, _ = bat.forward([x1])
    assert np.array_equal(ys1[0].codes, np.moveaxis(ys0[0].codes, 2, 0))
    assert np.array_equal(ys1[1].codes, np.moveaxis(ys0[1].codes, 1, 0))
    rev, _, _ = make(op, 8, 1, seed=11, lbr=1, direction="reverse")
    ysr, _ = rev.forward([QTensor(x0.codes[::-1], x0.fmt)])
    assert np.array_equal(ysr[0].codes[::-1], ys0[0].codes) and np.array_equal(ysr[1].codes, ys0[1].codes)
    bi, _, _ = make(op, 8, 2, seed=11, lbr=1)
    bi.params = {k: QTensor(np.concatenate([v.codes, v.codes]), v.fmt) for k, v in fwd.params.items()}
    if op == "LSTM":
        bi.state = dict(fwd.state)
    ysb, _ = bi.forward([x0])
    assert np.array_equal(ysb[0].codes[:, 0], ys0[0].codes[:, 0])
    assert np.array_equal(ysb[0].codes[:, 1], rev.forward([x0])[0][0].codes[:, 0])


# --------------------------------------------------------------------------- BPTT

def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def err_tensor(rng, shape, bits):
    fmt = FixedFormat(bits, -2)
    return QTensor(rng.integers(-(1 << (bits - 1)) + 1, 1 << (bits - 1), size=shape), fmt)


def gradients(layer, x, dy, bptt_steps=None):
    """(integer grads as floats, float reference grads) for the same error."""
    ys, cache = layer.forward([x], train=True)
    layer.bptt_steps = bptt_steps
    dxs, g = layer.backward(cache, dy, [True])
    ref = reference(layer, x)
    p, a = layer.float_params(), layer.node.attrs
    lay = a.get("layout", 0)
    dY = None if dy[0] is None else (np.moveaxis(dy[0].value(), 0, 2) if lay else dy[0].value())
    dYh = None if dy[1] is None else (np.moveaxis(dy[1].value(), 0, 1) if lay else dy[1].value())
    dYc = None if len(dy) < 3 or dy[2] is None else dy[2].value()
    fw = float_backward(layer.op, ref[3], p["W"], p["R"], dY, dYh, dYc, a["direction"],
                        a.get("linear_before_reset", 0), _acts(layer), bptt_steps)
    dx = dxs[0].value()
    got = [g["W"].value(), g["R"].value(), g["B"].value(), np.moveaxis(dx, 0, 1) if lay else dx]
    return got, fw


@pytest.mark.parametrize("op,D,direction,lbr,acts", CELLS)
def test_bptt_gradients_match_float_reference_at_16_bits(op, D, direction, lbr, acts):
    layer, x, _ = make(op, 16, D, direction=direction, lbr=lbr, acts=acts, seed=21, T=7)
    rng = np.random.default_rng(22)
    ys, _ = layer.forward([x])
    dy = [err_tensor(rng, ys[0].codes.shape, 16), err_tensor(rng, ys[1].codes.shape, 16)]
    got, ref = gradients(layer, x, dy)
    for name, a, b in zip(("W", "R", "B", "x"), got, ref):
        assert cosine(a, b) >= 0.999, name
        assert np.abs(a - b).max() <= 0.02 * np.abs(b).max(), name


@pytest.mark.parametrize("op,lbr", [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0)])
def test_bptt_gradients_at_8_bits_point_the_same_way(op, lbr):
    layer, x, _ = make(op, 8, 1, lbr=lbr, seed=31, T=8, N=8, H=8)
    rng = np.random.default_rng(32)
    ys, _ = layer.forward([x])
    got, ref = gradients(layer, x, [None, err_tensor(rng, ys[1].codes.shape, 8)])
    for name, a, b in zip(("W", "R", "B", "x"), got, ref):
        assert cosine(a, b) >= 0.98, name  # measured >= 0.993
        assert 0.9 <= np.linalg.norm(a) / np.linalg.norm(b) <= 1.1, name  # and the right size


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_truncated_and_local_bptt_match_truncated_float_reference(op, k):
    layer, x, _ = make(op, 16, 1, lbr=1, seed=41, T=6)
    rng = np.random.default_rng(42)
    ys, _ = layer.forward([x])
    dy = [err_tensor(rng, ys[0].codes.shape, 16), err_tensor(rng, ys[1].codes.shape, 16)]
    got, ref = gradients(layer, x, dy, bptt_steps=k)
    full = gradients(layer, x, dy)[1]
    for name, a, b, f in zip(("W", "R", "B", "x"), got, ref, full):
        assert cosine(a, b) >= 0.999, name
    assert not np.allclose(ref[1], full[1])  # truncation changes the gradient


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_error_at_last_state_reaches_only_bptt_steps_back(op):
    layer, x, _ = make(op, 16, 1, seed=51, T=6)  # 16 bits: no step's error underflows the block
    rng = np.random.default_rng(52)
    ys, cache = layer.forward([x], train=True)
    dyh = err_tensor(rng, ys[1].codes.shape, 16)
    for k in (0, 2, None):
        layer.bptt_steps = k
        dx = layer.backward(cache, [None, dyh], [True])[0][0].codes
        reached = [t for t in range(6) if dx[t].any()]
        assert reached == list(range(0 if k is None else 5 - k, 6))


def test_per_step_error_with_no_recurrence_stays_local():
    """bptt_steps=0 (per-step DFA): the error injected at step t changes only step t's dx."""
    layer, x, _ = make("GRU", 8, 1, seed=61, T=5, lbr=1, extra={"bptt_steps": 0})
    assert layer.bptt_steps == 0
    rng = np.random.default_rng(62)
    ys, cache = layer.forward([x], train=True)
    dY = err_tensor(rng, ys[0].codes.shape, 8)
    only2 = QTensor(np.where(np.arange(5)[:, None, None, None] == 2, dY.codes, 0), dY.fmt)
    dx = layer.backward(cache, [only2, None], [True])[0][0].codes
    assert dx[2].any() and not np.delete(dx, 2, axis=0).any()
    one = layer.backward(cache, dY, [True])  # a single QTensor shaped like Y is the error at Y
    two = layer.backward(cache, [dY, None], [True])
    assert np.array_equal(one[0][0].codes, two[0][0].codes)


def test_bidirectional_error_in_one_direction_only():
    layer, x, _ = make("GRU", 16, 2, seed=65, lbr=1)
    rng = np.random.default_rng(66)
    ys, _ = layer.forward([x])
    dY = err_tensor(rng, ys[0].codes.shape, 16)
    dY = QTensor(np.where(np.arange(2)[None, :, None, None] == 0, dY.codes, 0), dY.fmt)
    got, ref = gradients(layer, x, [dY, None])
    for a, b in zip(got[:3], ref[:3]):
        assert not a[1].any() and cosine(a[0], b[0]) >= 0.999


def test_lstm_error_at_cell_state_output():
    layer, x, _ = make("LSTM", 16, 1, seed=71, T=5)
    rng = np.random.default_rng(72)
    ys, _ = layer.forward([x])
    got, ref = gradients(layer, x, [None, None, err_tensor(rng, ys[2].codes.shape, 16)])
    for a, b in zip(got, ref):
        assert cosine(a, b) >= 0.999


def test_backward_is_deterministic_and_backends_agree():
    from edgedfa import kernels

    layer, x, _ = make("GRU", 8, 2, seed=81, lbr=0)
    rng = np.random.default_rng(82)
    dy = [err_tensor(rng, (6, 2, 3, 6), 8), None]
    runs = []
    for backend in ("reference", "fast"):
        layer.backend = backend
        ys, cache = layer.forward([x], train=True)
        dxs, g = layer.backward(cache, dy, [True])
        runs.append([ys[0].codes, dxs[0].codes] + [g[k].codes for k in sorted(g)])
    assert kernels.default_backend() == "fast"
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_weight_update_moves_every_parameter_reproducibly():
    def train_once():
        layer, x, _ = make("LSTM", 8, 1, seed=91)
        rng = np.random.default_rng(92)
        ys, cache = layer.forward([x], train=True)
        _, g = layer.backward(cache, [None, err_tensor(rng, ys[1].codes.shape, 8)], [False])
        before = {k: v.codes.copy() for k, v in layer.params.items()}
        clipped = layer.weight_update(g, step=0, lr_shift=2)
        return before, {k: v.codes for k, v in layer.params.items()}, clipped

    b1, a1, c1 = train_once()
    _, a2, _ = train_once()
    assert set(c1) == {"W", "R", "B"}
    for k in b1:
        assert not np.array_equal(b1[k], a1[k]) and np.array_equal(a1[k], a2[k])


@given(op=st.sampled_from(["RNN", "GRU", "LSTM"]), H=st.integers(1, 6), T=st.integers(1, 6),
       N=st.integers(1, 3), bits=st.sampled_from([6, 8, 12, 16]), lbr=st.integers(0, 1),
       D=st.integers(1, 2), k=st.sampled_from([None, 0, 1, 2]), seed=st.integers(0, 1000))
def test_any_size_length_and_format(op, H, T, N, bits, lbr, D, k, seed):
    layer, x, _ = make(op, bits, D, H=H, n_in=3, T=T, N=N, lbr=lbr, seed=seed)
    ys, cache = layer.forward([x], train=True)
    ref = reference(layer, x)
    assert np.abs(y_time_major(layer, ys) - ref[0]).max() <= forward_bound(layer, x, ref)
    rng = np.random.default_rng(seed)
    dy = [err_tensor(rng, ys[0].codes.shape, bits), err_tensor(rng, ys[1].codes.shape, bits)]
    got, fw = gradients(layer, x, dy, k)
    for a, b in zip(got, fw):
        assert a.shape == b.shape
        if bits >= 12 and np.abs(b).max() > 1e-2:
            assert cosine(a, b) >= 0.95


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("attrs,match", [
    ({"activations": ["Relu", "Tanh"]}, "only activations"),
    ({"clip": 3.0}, "clip"),
    ({"direction": "sideways"}, "direction"),
    ({"layout": 2}, "layout"),
])
def test_unsupported_attributes_name_the_node(attrs, match):
    params = {"W": np.zeros((1, 6, 3)), "R": np.zeros((1, 6, 2))}
    node = Node("g1", "GRU", ["x"], ["Y", "Y_h"], dict(hidden_size=2, **attrs), params)
    with pytest.raises(EdgeDFAError, match=match) as exc:
        layer_class("GRU")(node, LayerSpec(1, Numerics(), 0, [(4, 3)]))
    assert "g1" in str(exc.value)


def test_bad_param_shape_and_uncalibrated_lstm():
    node = Node("l1", "LSTM", ["x"], ["Y", "Y_h", "Y_c"], {"hidden_size": 2},
                {"W": np.zeros((1, 8, 3)), "R": np.zeros((1, 8, 3))})
    with pytest.raises(EdgeDFAError, match="param R has shape"):
        layer_class("LSTM")(node, LayerSpec(1, Numerics(), 0, [(4, 3)]))
    node.params["R"] = np.zeros((1, 8, 2))
    layer = layer_class("LSTM")(node, LayerSpec(1, Numerics(), 0, [(4, 3)]))
    assert layer.out_fmt is None and "B" not in layer.params
    with pytest.raises(EdgeDFAError, match="not calibrated"):
        layer.forward([QTensor(np.zeros((4, 1, 3), np.int64), FixedFormat(8, 3))])
