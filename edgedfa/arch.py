"""Built-in architectures for the embedded digits, built as plain Graphs (float init)."""

from __future__ import annotations

import numpy as np

from .errors import EdgeDFAError
from .graph import Graph, Node
from .prng import PURPOSE_INIT, stream_id, words

ARCHS = ("mlp", "cnn", "rnn", "gru", "lstm")


def uniform_init(seed: int, layer: int, shape, limit: float) -> np.ndarray:
    """U(-limit, limit) from the datapath PRNG (init stream of the layer)."""
    u = words(seed, stream_id(layer, PURPOSE_INIT), 0, shape).astype(np.float64) / 2.0**32
    return (2.0 * u - 1.0) * limit


class _Builder:
    def __init__(self, seed):
        self.seed, self.nodes, self.count = seed, [], 0

    def add(self, op, inputs, attrs=None, params=None, n_out=1, name=None):
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        outs = [f"{name}_out"] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(Node(name, op, list(inputs), outs, attrs or {}, params or {}))
        return outs[0] if n_out == 1 else outs

    def dense(self, x, n_in, n_out, gain=6.0):
        w = uniform_init(self.seed, self.count + 1, (n_out, n_in), np.sqrt(gain / n_in))
        return self.add("Dense", [x], params={"W": w, "B": np.zeros(n_out)})

    def conv(self, x, c_in, c_out, k, pad):
        fan_in = c_in * k * k
        w = uniform_init(self.seed, self.count + 1, (c_out, c_in, k, k), np.sqrt(6.0 / fan_in))
        attrs = {"kernel_shape": [k, k], "strides": [1, 1], "pads": [pad] * 4, "dilations": [1, 1], "group": 1}
        return self.add("Conv", [x], attrs, {"W": w, "B": np.zeros(c_out)})


def mlp(seed=0, n_in=64, hidden=(256, 256), n_classes=10) -> Graph:
    """MLP n_in-256-256-10 with ReLU."""
    b = _Builder(seed)
    x, width = "input", n_in
    for h in hidden:
        x = b.add("Relu", [b.dense(x, width, h)])
        width = h
    out = b.dense(x, width, n_classes, gain=3.0)
    return Graph("mlp", "input", (n_in,), out, b.nodes, {"arch": "mlp"})


def cnn(seed=0, in_shape=(1, 8, 8), channels=(32, 64), n_classes=10) -> Graph:
    """conv3x3(32)-relu-maxpool2 - conv3x3(64)-relu-maxpool2 - flatten - dense."""
    b = _Builder(seed)
    x, c, (h, w) = "input", in_shape[0], in_shape[1:]
    for co in channels:
        x = b.add("Relu", [b.conv(x, c, co, 3, 1)])
        x = b.add("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]})
        c, h, w = co, h // 2, w // 2
    x = b.add("Flatten", [x], {"axis": 1})
    out = b.dense(x, c * h * w, n_classes, gain=3.0)
    return Graph("cnn", "input", tuple(in_shape), out, b.nodes, {"arch": "cnn"})


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def recurrent(kind="gru", seed=0, seq=8, n_in=8, hidden=64, n_classes=10) -> Graph:
    """One recurrent layer (batch-first, ONNX semantics) read at its last state, then dense."""
    b = _Builder(seed)
    g = GATES[kind]
    lim = 1.0 / np.sqrt(hidden)
    params = {"W": uniform_init(seed, 1, (1, g * hidden, n_in), lim),
              "R": uniform_init(seed, 2, (1, g * hidden, hidden), lim),
              "B": np.zeros((1, 2 * g * hidden))}
    attrs = {"hidden_size": hidden, "direction": "forward", "layout": 1}
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    op = kind.upper() if kind != "rnn" else "RNN"
    outs = b.add(op, ["input"], attrs, params, n_out=3 if kind == "lstm" else 2, name=kind)
    h = b.add("Flatten", [outs[1]], {"axis": 1})
    out = b.dense(h, hidden, n_classes, gain=3.0)
    return Graph(kind, "input", (seq, n_in), out, b.nodes, {"arch": kind})


def build(arch: str, seed: int = 0, sample_shape=None, n_classes: int = 10) -> Graph:
    """A built-in architecture sized for ``sample_shape`` (default: the digits)."""
    n = int(np.prod(sample_shape)) if sample_shape else 64
    if arch == "mlp":
        return mlp(seed, n_in=n, n_classes=n_classes)
    if arch == "cnn":
        shape = tuple(sample_shape) if sample_shape and len(sample_shape) == 3 else (1, 8, 8)
        if int(np.prod(shape)) != n:
            side = int(round(np.sqrt(n)))
            if side * side != n:
                raise EdgeDFAError(f"--arch cnn needs square images; samples have {n} values")
            shape = (1, side, side)
        if min(shape[1:]) < 4:
            raise EdgeDFAError(f"--arch cnn needs images of at least 4x4 (two 2x2 poolings); samples shaped {shape}"
                               " are read as (channels, height, width)")
        return cnn(seed, shape, n_classes=n_classes)
    if arch in GATES:
        if sample_shape and len(sample_shape) == 2:
            seq, n_in = sample_shape
        elif n == 64:
            seq, n_in = 8, 8
        else:
            raise EdgeDFAError(f"--arch {arch} needs samples shaped (steps, features); got {sample_shape}")
        return recurrent(arch, seed, seq, n_in, n_classes=n_classes)
    raise EdgeDFAError(f"unknown --arch {arch!r}; expected one of {', '.join(ARCHS)}")
