"""A float64 reference of the engine's MLP algorithms (BP and DFA), autograd-free: the float
baseline of the benchmarks and the tests' oracle for the integer MLP."""

from __future__ import annotations

import numpy as np


def forward(Ws, Bs, x):
    """Activations [x, h1, ..., logits] of a ReLU MLP."""
    hs = [x]
    for i, (W, B) in enumerate(zip(Ws, Bs)):
        a = hs[-1] @ W.T + B
        hs.append(np.maximum(a, 0) if i < len(Ws) - 1 else a)
    return hs


def output_error(logits, y):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p


def gradients(Ws, Bs, x, y, feedback=None):
    """Weight gradients (batch sums) by BP, or by DFA when ``feedback`` gives B_l per hidden layer."""
    hs = forward(Ws, Bs, x)
    e = output_error(hs[-1], y)
    grads = [None] * len(Ws)
    d = e
    for i in reversed(range(len(Ws))):
        grads[i] = (d.T @ hs[i], d.sum(axis=0))
        if i == 0:
            break
        if feedback is None:
            back = d @ Ws[i]
        else:
            back = e @ feedback[i - 1].T
        d = back * (hs[i] > 0)
    return grads


def train(Ws, Bs, x, y, epochs, lr, batch, order_fn, feedback=None):
    """Plain SGD on batch means; ``order_fn(epoch)`` gives the sample order."""
    Ws = [w.copy() for w in Ws]
    Bs = [b.copy() for b in Bs]
    for ep in range(epochs):
        order = order_fn(ep)
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            for i, (gw, gb) in enumerate(gradients(Ws, Bs, x[idx], y[idx], feedback)):
                Ws[i] -= lr * gw / len(idx)
                Bs[i] -= lr * gb / len(idx)
    return Ws, Bs


def accuracy(Ws, Bs, x, y):
    return float((forward(Ws, Bs, x)[-1].argmax(axis=1) == y).mean())
