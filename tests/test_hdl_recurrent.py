"""hdl_models against the engine on random small recurrent models (RNN tanh/sigmoid/relu,
GRU both linear_before_reset, LSTM; forward/reverse/bidirectional; full, truncated and
local BPTT; every credit plan), the merge layers, and the recurrent cost model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import arch
from edgedfa.fixed import Overflow, Rounding
from edgedfa.graph import Graph, Node
from edgedfa.numerics import Numerics
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from edgedfa.cosim import emulate
from hdl_models.hwconfig import HwConfig

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
ALGOS = ["bp", "dfa", "sdfa", "modular", "hybrid"]


def rnn_graph(op, seed, seq, n_in, hidden, n_classes, direction="forward", lbr=0, act=None, read="last",
              bptt=None, w_scale=0.6):
    """input (N, T, I) -> op (layout 1) -> read Y_h, Y, both (Concat), one step of Y (Gather) -> Dense."""
    rng = np.random.default_rng(seed)
    g, d = GATES[op], 2 if direction == "bidirectional" else 1
    params = {"W": rng.uniform(-w_scale, w_scale, (d, g * hidden, n_in)),
              "R": rng.uniform(-1.5 / hidden, 1.5 / hidden, (d, g * hidden, hidden)) * (2 if op == "RNN" else 1),
              "B": rng.uniform(-0.3, 0.3, (d, 2 * g * hidden))}
    attrs = {"hidden_size": hidden, "direction": direction, "layout": 1}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    if act:
        attrs["activations"] = [act] * d
    if bptt is not None:
        attrs["bptt_steps"] = bptt
    outs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    nodes = [Node("rec", op, ["input"], outs, attrs, params)]
    if read == "seq":
        nodes.append(Node("flat", "Flatten", ["y"], ["f"], {"axis": 1}, {}))
        width = seq * d * hidden
    elif read == "last":
        nodes.append(Node("flat", "Flatten", ["yh"], ["f"], {"axis": 1}, {}))
        width = d * hidden
    elif read == "step":  # one time step of Y (out[:, -1] of a bidirectional layer, ...)
        nodes.append(Node("pick", "Gather", ["y"], ["yt"], {"axis": 1, "indices": int(rng.integers(0, seq))}, {}))
        nodes.append(Node("flat", "Flatten", ["yt"], ["f"], {"axis": 1}, {}))
        width = d * hidden
    else:  # both: the sequence and the last state (LSTM: the last cell state), concatenated
        nodes.append(Node("flat_y", "Flatten", ["y"], ["fy"], {"axis": 1}, {}))
        nodes.append(Node("flat_s", "Flatten", ["yc" if op == "LSTM" else "yh"], ["fs"], {"axis": 1}, {}))
        nodes.append(Node("cat", "Concat", ["fy", "fs"], ["f"], {"axis": 1}, {}))
        width = (seq + 1) * d * hidden
    nodes.append(Node("head", "Dense", ["f"], ["out"], {},
                      {"W": rng.uniform(-2, 2, (n_classes, width)) / np.sqrt(width), "B": np.zeros(n_classes)}))
    return Graph(op.lower(), "input", (seq, n_in), "out", nodes, {})


def run(graph, n_classes, bits, seed, algo, steps=1, batch=4, hw=None, **num):
    model = IntModel(graph, dataclasses.replace(Numerics.from_bits(bits), **num), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0, 1, (3 * batch,) + tuple(graph.input_shape))
    y = rng.integers(0, n_classes, 3 * batch)
    model.calibrate(x)
    return emulate(model, x, y, steps, hw or HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=batch, algo=algo))


@st.composite
def rnn_cases(draw):
    op = draw(st.sampled_from(["RNN", "GRU", "LSTM"]))
    case = {"op": op, "seed": draw(st.integers(0, 2**16)), "seq": draw(st.integers(1, 6)),
            "n_in": draw(st.integers(1, 5)), "hidden": draw(st.integers(4, 16)),
            "n_classes": draw(st.integers(2, 5)),
            "direction": draw(st.sampled_from(["forward", "reverse", "bidirectional"])),
            "read": draw(st.sampled_from(["last", "seq", "both", "step"])),
            "bptt": draw(st.sampled_from([None, None, 0, 1, 2]))}
    if op == "GRU":
        case["lbr"] = draw(st.integers(0, 1))
    if op == "RNN":
        case["act"] = draw(st.sampled_from(["Tanh", "Relu", "Sigmoid"]))
    return case


@settings(max_examples=120)
@given(case=rnn_cases(), bits=st.integers(6, 12), algo=st.sampled_from(ALGOS), steps=st.integers(1, 2),
       batch=st.integers(1, 4))
def test_recurrent_bit_exact(case, bits, algo, steps, batch):
    r = run(rnn_graph(**case), case["n_classes"], bits, case["seed"], algo, steps, batch)
    assert r["bit_exact"], (case, r["first_mismatch"])
    # the recurrent layer's forward outputs, gradients and new parameters were all compared
    assert r["checked"] >= steps * 8


@settings(max_examples=25)
@given(op=st.sampled_from(["RNN", "GRU", "LSTM"]), seed=st.integers(0, 2**16),
       acc_bits=st.sampled_from([14, 18, 24, 48]), acc_ovf=st.sampled_from([Overflow.AP_SAT, Overflow.AP_WRAP]),
       err_bits=st.sampled_from([6, 16]), rnd=st.sampled_from([Rounding.AP_RND, Rounding.AP_TRN, Rounding.AP_RND_CONV]),
       upd=st.sampled_from([Rounding.STOCHASTIC, Rounding.AP_RND_CONV]), algo=st.sampled_from(["bp", "sdfa"]))
def test_recurrent_narrow_accumulators_and_modes(op, seed, acc_bits, acc_ovf, err_bits, rnd, upd, algo):
    """Small accumulators (per-step saturation/wrap in every GEMM of the cell and BPTT), other
    error widths and rounding modes."""
    g = rnn_graph(op, seed, 4, 3, 6, 3, read="both", w_scale=2.0, lbr=seed % 2)
    r = run(g, 3, 10, seed, algo, 2, 3, acc_bits=acc_bits, acc_overflow=acc_ovf, err_bits=err_bits,
            err_rounding=rnd, act_rounding=rnd, update_rounding=upd)
    assert r["bit_exact"], r["first_mismatch"]


def layer_row(r, layer, phase):
    return next(x for x in r["layers"] if x["layer"] == layer and x["phase"] == phase)


@pytest.mark.parametrize("op,lookups", [("RNN", 1), ("GRU", 3), ("LSTM", 5)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_accounting(op, lookups, direction):
    seq, n_in, hidden, batch = 5, 3, 8, 4
    d, g = (2 if direction == "bidirectional" else 1), GATES[op]
    gate_macs = d * seq * batch * g * hidden * (n_in + hidden)  # T·G·H·(I+H) per sample and direction
    reports = {}
    for algo in ("bp", "sdfa"):
        r = run(rnn_graph(op, 3, seq, n_in, hidden, 3, direction, lbr=1), 3, 8, 3, algo, batch=batch)
        assert r["bit_exact"]
        fwd, upd, err = layer_row(r, "rec", "forward"), layer_row(r, "rec", "update"), layer_row(r, "rec", "error")
        assert fwd["macs"] == gate_macs
        assert upd["macs"] == gate_macs  # dW = dA^T x (G·H·I) and dR = dR^T h (G·H·H) over every step
        assert fwd["lut_lookups"] == lookups * d * seq * batch * hidden
        assert fwd["state_bytes"] > 0 and err["state_bytes"] > 0
        reports[algo] = (r, err)
    # full BPTT carries dA·R back through T-1 steps (per direction); per-step DFA carries nothing
    assert reports["bp"][1]["macs"] == d * (seq - 1) * batch * g * hidden * hidden
    assert reports["sdfa"][1]["macs"] == 0
    assert reports["sdfa"][0]["phases"]["error"]["cycles"] < reports["bp"][0]["phases"]["error"]["cycles"]


def test_truncated_bptt_error_macs():
    macs = {}
    for bptt in (0, 1, 2, None):
        r = run(rnn_graph("GRU", 5, 6, 3, 6, 3, read="seq", lbr=0, bptt=bptt), 3, 8, 5, "bp", batch=3)
        assert r["bit_exact"], (bptt, r["first_mismatch"])
        macs[bptt] = layer_row(r, "rec", "error")["macs"]
    # lbr 0: every step a chain reaches runs drh = d_n·R_h (N·H·H MACs), every carry d[z|r]·R_zr
    # (N·2H·H); with an error at each of the 6 steps: local 6 steps, full 6 steps + 5 carries,
    # k = 1: 11 steps + 5 carries, k = 2: 15 steps + 9 carries
    assert macs[0] < macs[1] < macs[2] and macs[None] < macs[2]
    per_step, per_carry = 3 * 6 * 6, 3 * 2 * 6 * 6
    assert macs[0] == 6 * per_step
    assert macs[None] == 6 * per_step + 5 * per_carry
    assert macs[1] == 11 * per_step + 5 * per_carry
    assert macs[2] == 15 * per_step + 9 * per_carry


@pytest.mark.parametrize("kind", ["gru", "rnn", "lstm"])
def test_builtin_recurrent_arch(kind):
    g = arch.recurrent(kind, 0, seq=4, n_in=4, hidden=8, n_classes=5)
    for algo in ("bp", "sdfa", "modular"):
        r = run(g, 5, 8, 0, algo, steps=2, batch=4, hw=HwConfig())
        assert r["bit_exact"], (kind, algo, r["first_mismatch"])


def test_mismatch_in_a_cell_is_reported(monkeypatch):
    from hdl_models.layers import recurrent as dr

    real = dr.GruHw.cell

    def broken(self, *a):
        state, rec = real(self, *a)
        return {"h": dr.V(state["h"].codes ^ 1, state["h"].frac)}, rec

    monkeypatch.setattr(dr.GruHw, "cell", broken)
    r = run(rnn_graph("GRU", 1, 3, 2, 4, 3), 3, 8, 1, "bp")
    assert r["bit_exact"] is False
    assert r["first_mismatch"]["layer"] == "rec" and r["first_mismatch"]["kind"] == "fwd"


def residual_cnn(seed):
    rng = np.random.default_rng(seed)
    c = 3
    conv = lambda name, i, o, cin: Node(name, "Conv", [i], [o], {"kernel_shape": [3, 3], "pads": [1] * 4},
                                        {"W": rng.uniform(-.5, .5, (c, cin, 3, 3)), "B": rng.uniform(-.1, .1, c)})
    nodes = [conv("conv1", "input", "c1", 2), Node("relu1", "Relu", ["c1"], ["r1"], {}, {}),
             conv("conv2", "r1", "c2", c), Node("add", "Add", ["r1", "c2"], ["a"], {}, {}),
             Node("relu2", "Relu", ["a"], ["r2"], {}, {}),
             Node("tr", "Transpose", ["r2"], ["t"], {"perm": [0, 1, 3, 2]}, {}),
             Node("cat", "Concat", ["t", "r1"], ["k"], {"axis": 1}, {}),
             Node("unsq", "Unsqueeze", ["k"], ["u"], {"axes": [1]}, {}),
             Node("sq", "Squeeze", ["u"], ["s"], {"axes": [1]}, {}),
             Node("flat", "Flatten", ["s"], ["f"], {"axis": 1}, {}),
             Node("dense", "Dense", ["f"], ["out"], {}, {"W": rng.uniform(-.3, .3, (4, 2 * c * 16)), "B": np.zeros(4)})]
    return Graph("res", "input", (2, 4, 4), "out", nodes, {})


@pytest.mark.parametrize("algo", ALGOS)
def test_residual_cnn_merge_layers(algo):
    """Add (one map with three consumers: error sums), Transpose, Concat, Unsqueeze/Squeeze;
    dfa/sdfa project onto the first conv's map (§10.2 gain shift)."""
    r = run(residual_cnn(7), 4, 8, 7, algo, steps=2, batch=4)
    assert r["bit_exact"], r["first_mismatch"]
    add = layer_row(r, "add", "forward")
    assert add["adds"] == 4 * 3 * 16 * 2  # one add per element, two steps


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("algo", ["bp", "hybrid"])
def test_a_gathered_time_step_of_a_bidirectional_layer(op, algo):
    """out[:, -1] of a bidirectional layer (a Gather of one step of Y): the error enters the
    forward direction at its last step and the backward one at its first, bit-exact."""
    r = run(rnn_graph(op, 3, 5, 3, 6, 4, direction="bidirectional", read="step"), 4, 8, 3, algo, steps=2)
    assert r["bit_exact"], r["first_mismatch"]
    assert r["checked"] >= 16
