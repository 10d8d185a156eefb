"""Float64 reference of ONNX RNN/GRU/LSTM (forward and autograd-free BPTT), checked here
against onnxruntime and finite differences; tests/test_recurrent.py compares the integer
cells with it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACT = {"Tanh": (np.tanh, lambda y: 1 - y * y), "Sigmoid": (sigmoid, lambda y: y * (1 - y)),
       "Relu": (lambda a: np.maximum(a, 0), lambda y: (y > 0).astype(float))}


def _orders(T, direction):
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    return [np.arange(T)[::-1] if d == "reverse" else np.arange(T) for d in dirs]


def float_forward(op, x, W, R, B=None, direction="forward", lbr=0, acts=None):
    """x (T, N, I) -> Y (T, D, N, H), Y_h (D, N, H), Y_c (LSTM) and per-step records."""
    T, N, _ = x.shape
    D, GH, _ = W.shape
    H = GH // GATES[op]
    B = np.zeros((D, 2 * GH)) if B is None else B
    Y = np.zeros((T, D, N, H))
    finals, records = [], []
    for d, order in enumerate(_orders(T, direction)):
        h, c = np.zeros((N, H)), np.zeros((N, H))
        Wb, Rb = B[d, :GH], B[d, GH:]
        recs = []
        for t in order:
            xg = x[t] @ W[d].T + Wb
            h, c, rec = _cell(op, xg, h, c, R[d], Rb, H, lbr, (acts or ["Tanh"] * D)[d])
            rec["x"] = x[t]
            recs.append(rec)
            Y[t, d] = h
        finals.append((h, c))
        records.append(recs)
    Yh = np.stack([f[0] for f in finals])
    Yc = np.stack([f[1] for f in finals])
    return Y, Yh, Yc, records


def _cell(op, xg, h, c, R, Rb, H, lbr, act):
    rec = {"h_prev": h, "c_prev": c}
    if op == "RNN":
        hn = ACT[act][0](xg + h @ R.T + Rb)
        rec["h"] = hn
        return hn, c, rec
    if op == "GRU":
        hg = h @ R[:2 * H].T + Rb[:2 * H]
        z = sigmoid(xg[:, :H] + hg[:, :H])
        r = sigmoid(xg[:, H:2 * H] + hg[:, H:])
        if lbr:
            hh = h @ R[2 * H:].T + Rb[2 * H:]
            n = np.tanh(xg[:, 2 * H:] + r * hh)
            rec["hh"] = hh
        else:
            n = np.tanh(xg[:, 2 * H:] + (r * h) @ R[2 * H:].T + Rb[2 * H:])
        rec.update(z=z, r=r, n=n)
        return (1 - z) * n + z * h, c, rec
    a = xg + h @ R.T + Rb
    i, o, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H])
    g = np.tanh(a[:, 3 * H:])
    cn = f * c + i * g
    rec.update(i=i, o=o, f=f, g=g, tc=np.tanh(cn))
    return o * rec["tc"], cn, rec


def _cell_back(op, rec, dh, dc, R, H, lbr, act):
    """(gate error dA for W/Wb, dR-rows error and operands, dh_prev, dc_prev)."""
    if op == "RNN":
        dA = dh * ACT[act][1](rec["h"])
        return dA, [(slice(None), dA, rec["h_prev"])], dA @ R, None
    if op == "GRU":
        z, r, n, h = rec["z"], rec["r"], rec["n"], rec["h_prev"]
        da_n = dh * (1 - z) * (1 - n * n)
        da_z = dh * (h - n) * z * (1 - z)
        dh_prev = dh * z
        if lbr:
            dhh = da_n * r
            da_r = da_n * rec["hh"] * r * (1 - r)
            rows = [(slice(0, 2 * H), np.hstack([da_z, da_r]), h), (slice(2 * H, 3 * H), dhh, h)]
            dh_prev = dh_prev + dhh @ R[2 * H:]
        else:
            drh = da_n @ R[2 * H:]
            da_r = drh * h * r * (1 - r)
            rows = [(slice(0, 2 * H), np.hstack([da_z, da_r]), h), (slice(2 * H, 3 * H), da_n, r * h)]
            dh_prev = dh_prev + drh * r
        dh_prev = dh_prev + np.hstack([da_z, da_r]) @ R[:2 * H]
        return np.hstack([da_z, da_r, da_n]), rows, dh_prev, None
    i, o, f, g, tc = rec["i"], rec["o"], rec["f"], rec["g"], rec["tc"]
    dc = dc + dh * o * (1 - tc * tc)
    dA = np.hstack([dc * g * i * (1 - i), dh * tc * o * (1 - o), dc * rec["c_prev"] * f * (1 - f),
                    dc * i * (1 - g * g)])
    return dA, [(slice(None), dA, rec["h_prev"])], dA @ R, dc * f


def float_backward(op, records, W, R, dY=None, dYh=None, dYc=None, direction="forward",
                   lbr=0, acts=None, bptt_steps=None):
    """Exact float BPTT; bptt_steps k: every injected error travels back at most k steps."""
    D, GH, n_in = W.shape
    H = GH // GATES[op]
    T, N = len(records[0]), records[0][0]["x"].shape[0]
    gW, gR, gB = np.zeros_like(W), np.zeros_like(R), np.zeros((D, 2 * GH))
    dx = np.zeros((T, N, n_in))
    for d, order in enumerate(_orders(T, direction)):
        inj_h = [np.zeros((N, H)) if dY is None else dY[order[s], d].copy() for s in range(T)]
        if dYh is not None:
            inj_h[T - 1] = inj_h[T - 1] + dYh[d]
        inj_c = [np.zeros((N, H)) for _ in range(T)]
        if dYc is not None:
            inj_c[T - 1] = dYc[d].copy()
        k = T if bptt_steps is None else bptt_steps
        chains = [(T - 1, 0, range(T))] if k >= T - 1 else [(s, max(0, s - k), [s]) for s in range(T)]
        for start, stop, injected in chains:
            dh, dc = np.zeros((N, H)), np.zeros((N, H))
            for s in range(start, stop - 1, -1):
                if s in injected:
                    dh, dc = dh + inj_h[s], dc + inj_c[s]
                rec = records[d][s]
                dA, rows, dh, dc = _cell_back(op, rec, dh, dc, R[d], H, lbr, (acts or ["Tanh"] * D)[d])
                gW[d] += dA.T @ rec["x"]
                gB[d, :GH] += dA.sum(0)
                for sl, dr, operand in rows:
                    gR[d, sl] += dr.T @ operand
                    gB[d, GH:][sl] += dr.sum(0)
                dx[order[s]] += dA @ W[d]
                if k == 0:
                    dh, dc = np.zeros((N, H)), np.zeros((N, H))
                dc = np.zeros((N, H)) if dc is None else dc
    return gW, gR, gB, dx


# --------------------------------------------------------------------------- onnxruntime

def ort_run(op, x, W, R, B, direction="forward", lbr=0, acts=None):
    """Float32 onnxruntime execution of one layout-0 ONNX node (onnxruntime's CPU kernels
    reject layout=1); returns [Y, Y_h(, Y_c)]."""
    D, GH, n_in = W.shape
    H = GH // GATES[op]
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = {"hidden_size": H, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    if acts is not None:
        attrs["activations"] = acts
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, **attrs)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel())
             for n, a in (("W", W), ("R", R), ("B", B))]
    xin = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))
    T, N = x.shape[:2]
    shapes = [[T, D, N, H]] + [[D, N, H]] * 2
    yout = [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in zip(outs, shapes)]
    graph = helper.make_graph([node], "rnn", [xin], yout, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v, dtype=np.float64) for v in sess.run(None, {"X": x.astype(np.float32)})]


def random_params(rng, op, D, H, n_in, scale=0.5):
    G = GATES[op]
    return (rng.uniform(-scale, scale, (D, G * H, n_in)), rng.uniform(-scale, scale, (D, G * H, H)),
            rng.uniform(-0.3, 0.3, (D, 2 * G * H)))


CASES = [("RNN", "forward", 0, ["Tanh"]), ("RNN", "reverse", 0, ["Relu"]),
         ("RNN", "bidirectional", 0, ["Tanh", "Sigmoid"]),
         ("GRU", "forward", 0, None), ("GRU", "forward", 1, None), ("GRU", "bidirectional", 1, None),
         ("GRU", "reverse", 0, None), ("LSTM", "forward", 0, None), ("LSTM", "bidirectional", 0, None)]


@pytest.mark.parametrize("op,direction,lbr,acts", CASES)
def test_float_reference_matches_onnxruntime(op, direction, lbr, acts):
    rng = np.random.default_rng(1)
    D = 2 if direction == "bidirectional" else 1
    W, R, B = random_params(rng, op, D, 5, 3)
    x = rng.normal(size=(6, 2, 3))
    ref = float_forward(op, x, W, R, B, direction, lbr, acts)
    got = ort_run(op, x, W, R, B, direction, lbr, acts)
    for a, b in zip(got, ref[:len(got)]):
        np.testing.assert_allclose(a, b, atol=2e-6)


def _loss(op, x, W, R, B, G, direction, lbr, acts):
    Y, Yh, Yc, _ = float_forward(op, x, W, R, B, direction, lbr, acts)
    return (G[0] * Y).sum() + (G[1] * Yh).sum() + (G[2] * Yc).sum()


@pytest.mark.parametrize("op,direction,lbr,acts", CASES)
def test_float_backward_matches_finite_differences(op, direction, lbr, acts):
    rng = np.random.default_rng(3)
    D = 2 if direction == "bidirectional" else 1
    W, R, B = random_params(rng, op, D, 4, 3)
    x = rng.normal(size=(5, 2, 3))
    Y, Yh, Yc, recs = float_forward(op, x, W, R, B, direction, lbr, acts)
    G = [rng.normal(size=Y.shape), rng.normal(size=Yh.shape), rng.normal(size=Yc.shape) * (op == "LSTM")]
    grads = float_backward(op, recs, W, R, G[0], G[1], G[2] if op == "LSTM" else None, direction, lbr, acts)
    eps = 1e-6
    for p, g in zip((W, R, B, x), grads):
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(6)]:
            old = p[idx]
            p[idx] = old + eps
            up = _loss(op, x, W, R, B, G, direction, lbr, acts)
            p[idx] = old - eps
            down = _loss(op, x, W, R, B, G, direction, lbr, acts)
            p[idx] = old
            assert abs((up - down) / (2 * eps) - g[idx]) < 1e-6 * max(1.0, abs(g[idx]))


def test_float_truncation_limits_how_far_errors_travel():
    rng = np.random.default_rng(4)
    W, R, B = random_params(rng, "GRU", 1, 4, 3)
    x = rng.normal(size=(6, 2, 3))
    _, Yh, _, recs = float_forward("GRU", x, W, R, B)
    dYh = rng.normal(size=Yh.shape)
    full = float_backward("GRU", recs, W, R, dYh=dYh)
    for k in (0, 2):
        dx = float_backward("GRU", recs, W, R, dYh=dYh, bptt_steps=k)[3]
        assert np.all(dx[:6 - 1 - k] == 0) and np.abs(dx[6 - 1 - k:]).min() > 0
    assert np.allclose(float_backward("GRU", recs, W, R, dYh=dYh, bptt_steps=5)[0], full[0])
