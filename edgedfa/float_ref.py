"""Float reference execution of a canonical ``Graph`` in float64 (numpy only).

Every op of ``edgedfa.graph`` with ONNX semantics; RNN/GRU/LSTM follow the ONNX operator
spec (gate orders LSTM i,o,f,c and GRU z,r,h, both ``linear_before_reset`` forms, the three
directions and both layouts). MaxPool/AveragePool also take raw ``ceil_mode`` and
``dilations`` attributes and follow onnxruntime (see ``_pool_windows``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EdgeDFAError
from .graph import Graph, Node, stage_input
from .registry import Registry

OPS = Registry("float op")
op = OPS.register  # the float implementation of canonical op(s)


def prepare_input(graph: Graph, x) -> np.ndarray:
    """``x`` as float64 shaped (batch, *graph.input_shape), through the graph's input stage."""
    return stage_input(graph, _shaped(graph, x))


def _shaped(graph: Graph, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shape = tuple(graph.input_shape)
    per_sample = math.prod(shape)
    if x.ndim == len(shape) + 1 and x.shape[1:] == shape:
        return x
    if x.ndim >= 1 and x.size and x.size % max(per_sample, 1) == 0 and \
            math.prod(x.shape[1:]) == per_sample:
        return x.reshape((x.shape[0],) + shape)
    raise EdgeDFAError(f"input of shape {x.shape} does not fit graph {graph.name!r}, whose "
                       f"per-sample input shape is {shape}")


def run_float_all(graph: Graph, x) -> dict:
    """Every tensor of ``graph`` (float64) for input ``x``."""
    env = {graph.input_name: prepare_input(graph, x)}
    for node in graph.nodes:
        fn = OPS.find(node.op)
        if fn is None:
            raise EdgeDFAError(f"graph {graph.name!r}: node {node.name!r} has op {node.op!r}, "
                               f"which the float reference does not know")
        try:
            args = [env[i] if i else None for i in node.inputs]
        except KeyError as exc:
            raise EdgeDFAError(f"graph {graph.name!r}: node {node.name!r} reads {exc}, which "
                               "no earlier node writes") from exc
        outs = fn(node, *args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for name, value in zip(node.outputs, outs):
            if name:
                env[name] = value
    return env


def run_float(graph: Graph, x) -> np.ndarray:
    """Run ``graph`` on ``x`` (batch first) in float64 and return its output."""
    env = run_float_all(graph, x)
    if graph.output_name not in env:
        raise EdgeDFAError(f"graph {graph.name!r}: nothing writes the output "
                           f"{graph.output_name!r}")
    return env[graph.output_name]


def _p(node, key):
    value = node.params.get(key)
    return None if value is None else np.asarray(value, dtype=np.float64)


# -- dense and activations -----------------------------------------------------------------
@op("Dense")
def dense(node: Node, x):
    y = x @ _p(node, "W").T
    b = _p(node, "B")
    return y if b is None else y + b


ACTIVATIONS = {
    "Relu": lambda v: np.maximum(v, 0.0),
    "Tanh": np.tanh,
    "Sigmoid": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
}


@op(*ACTIVATIONS)
def activation(node, x):
    return ACTIVATIONS[node.op](x)


@op("LeakyRelu")
def leaky_relu(node, x):
    return np.where(x >= 0, x, float(node.attrs.get("alpha", 0.01)) * x)


@op("PRelu")
def prelu(node, x):
    """x above zero, slope * x at or below; the slope's per-sample shape broadcasts right-aligned."""
    return np.where(x > 0, x, _p(node, "slope") * x)


@op("HardSigmoid")
def hard_sigmoid(node, x):
    return np.clip(float(node.attrs.get("alpha", 0.2)) * x + float(node.attrs.get("beta", 0.5)), 0.0, 1.0)


_ERFC = np.frompyfunc(math.erfc, 1, 1)
GELU_TANH_SCALE, GELU_TANH_CUBIC = math.sqrt(2.0 / math.pi), 0.044715  # PyTorch's approximate="tanh"


@op("NormalCdf")
def normal_cdf(node, x):
    """Phi(x) = erfc(-x/sqrt 2) / 2, or PyTorch's tanh approximation of it."""
    if node.attrs.get("approximate", "none") == "tanh":
        return 0.5 * (1.0 + np.tanh(GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x ** 3)))
    return 0.5 * _ERFC(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64)


@op("Elu")
def elu(node, x):
    """gamma * (x if x > 0 else alpha (exp(x) - 1)): ONNX Elu (gamma 1), Selu, Celu of alpha 1."""
    alpha, gamma = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("gamma", 1.0))
    x = np.asarray(x, dtype=np.float64)
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


@op("Softplus")
def softplus(node, x):
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


@op("Softmax")
def softmax(node, x):
    """exp(x - max) / sum exp(x - max) along ``axis`` (a non-batch axis; ONNX Softmax-13)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=int(node.attrs.get("axis", -1)), keepdims=True))
    return e / e.sum(axis=int(node.attrs.get("axis", -1)), keepdims=True)


@op("Clip")
def clip(node, x):
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    return np.minimum(np.maximum(x, lo), hi)


# -- convolution and pooling ------------------------------------------------------------
def _windows(x, kernel, strides, dilations, pads, fill):
    """Pad ``x`` (N, C, *S) and yield (kernel offset, strided view (N, C, *out))."""
    rank = len(kernel)
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[rank + i]) for i in range(rank)]
    xp = np.pad(x, pad_width, constant_values=fill)
    out = [(xp.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1
           for i in range(rank)]
    if any(o < 1 for o in out):
        raise EdgeDFAError(f"window {kernel} does not fit input {x.shape} with pads {pads}")
    for offset in np.ndindex(*kernel):
        index = [slice(None), slice(None)] + [
            slice(offset[i] * dilations[i],
                  offset[i] * dilations[i] + (out[i] - 1) * strides[i] + 1, strides[i])
            for i in range(rank)]
        yield offset, xp[tuple(index)]


def _spatial_attrs(node, rank):
    a = node.attrs
    return (list(a.get("strides") or [1] * rank), list(a.get("dilations") or [1] * rank),
            list(a.get("pads") or [0] * 2 * rank))


@op("Conv")
def conv(node, x):
    w = _p(node, "W")
    rank = w.ndim - 2
    group = int(node.attrs.get("group", 1))
    strides, dilations, pads = _spatial_attrs(node, rank)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    per_group = out_ch // group
    n = x.shape[0]
    y = None
    for offset, view in _windows(x, w.shape[2:], strides, dilations, pads, 0.0):
        v = view.reshape((n, group, in_per_group) + view.shape[2:])
        k = w[(slice(None), slice(None)) + offset].reshape(group, per_group, in_per_group)
        term = np.einsum("ngc...,goc->ngo...", v, k)
        y = term if y is None else y + term
    y = y.reshape((n, out_ch) + y.shape[3:])
    b = _p(node, "B")
    return y if b is None else y + b.reshape((-1,) + (1,) * rank)


@op("BatchNorm")
def batch_norm(node, x):
    """Inference: the running statistics, channel axis 1 (ONNX BatchNormalization)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale, b, mean, var = (_p(node, k).reshape(shape) for k in ("scale", "B", "mean", "var"))
    return (x - mean) / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5))) * scale + b


@op("LayerNorm")
def layer_norm(node, x):
    """Per sample over the trailing axes from ``axis`` (ONNX LayerNormalization, biased variance)."""
    axis = int(node.attrs.get("axis", -1))
    axes = tuple(range(x.ndim + axis, x.ndim))
    shape = x.shape[x.ndim + axis:]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    scale, b = (np.reshape(_p(node, k), shape) for k in ("scale", "B"))
    return (x - mean) / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5))) * scale + b


@op("GroupNorm")
def group_norm(node, x):
    """Per sample over each group of C/G channels and the positions (biased variance), then γ, β
    per channel (PyTorch's GroupNorm, ONNX InstanceNormalization at G = C)."""
    g = int(node.attrs["groups"])
    v = x.reshape(x.shape[0], g, -1)
    mean = v.mean(axis=2, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=2, keepdims=True)
    xhat = ((v - mean) / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return xhat * _p(node, "scale").reshape(shape) + _p(node, "B").reshape(shape)


@op("RMSNorm")
def rms_norm(node, x):
    """Per sample and position over the consecutive ``axes``: x / sqrt(mean(x²) + ε), 0 where
    mean(x²) + ε = 0 (§8.11), then γ, β per normalised feature when the node has them."""
    axes = tuple(int(a) for a in node.attrs["axes"])
    ms = (x * x).mean(axis=axes, keepdims=True) + float(node.attrs.get("epsilon", 0.0))
    root = np.sqrt(ms)
    xhat = np.divide(x, root, out=np.zeros_like(x), where=root > 0)
    shape = tuple(x.shape[a] for a in axes) + (1,) * (x.ndim - 1 - max(axes))
    for key, fn in (("scale", np.multiply), ("B", np.add)):
        if _p(node, key) is not None:
            xhat = fn(xhat, _p(node, key).reshape(shape))
    return xhat


def _pool_windows(node, x):
    """ONNX window geometry of a MaxPool/AveragePool node on ``x`` (N, C, *S).

    Returns (kernel, strides, dilations, pads, out, counts): ``pads`` are the given pads with
    the end pads grown by ceil_mode's extra region, so that floor division over the padded
    input yields exactly ``out`` windows; ``counts`` is None, or for AveragePool the divisor
    of every window (N=1, C=1, *out): the taps inside the input, or with count_include_pad=1
    inside the input and its explicit pads (never the ceil_mode region), as onnxruntime does.

    ceil_mode=1: out = ceil((n + pad_begin + pad_end - ((k-1)*d+1)) / stride) + 1, less one
    when the last window would start in the end padding (at or beyond n + pad_begin).
    """
    a = node.attrs
    rank = x.ndim - 2
    where = f"node {node.name!r} ({node.op})"
    if rank not in (1, 2):
        raise EdgeDFAError(f"{where}: pooling over {rank} spatial dims (only 1-d and 2-d)")
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise EdgeDFAError(f"{where}: auto_pad {a['auto_pad']!r} is not supported by the float "
                           "reference (give explicit pads)")
    kernel = list(a.get("kernel_shape") or [])
    strides, dilations, pads = _spatial_attrs(node, rank)
    if len(kernel) != rank or len(strides) != rank or len(dilations) != rank or \
            len(pads) != 2 * rank:
        raise EdgeDFAError(f"{where}: kernel_shape {kernel}, strides {strides}, dilations "
                           f"{dilations}, pads {pads} do not fit {rank} spatial dims")
    if min(kernel + strides + dilations) < 1 or min(pads) < 0:
        raise EdgeDFAError(f"{where}: kernel_shape {kernel}, strides {strides}, dilations "
                           f"{dilations} must be >= 1 and pads {pads} >= 0")
    ceil = bool(a.get("ceil_mode", 0))
    grown, out, taps = list(pads), [], []
    for i in range(rank):
        n, k, s, d = x.shape[2 + i], kernel[i], strides[i], dilations[i]
        begin, end, eff = pads[i], pads[rank + i], (k - 1) * d + 1
        span = n + begin + end - eff
        size = (-(-span // s) if ceil else span // s) + 1
        if ceil and (size - 1) * s >= n + begin:
            size -= 1  # ONNX/onnxruntime drop a window that would start in the end padding
        if size < 1:
            raise EdgeDFAError(f"{where}: window {kernel} (dilations {dilations}) does not fit "
                               f"input {tuple(x.shape[2:])} with pads {pads}")
        grown[rank + i] += max(0, (size - 1) * s + eff - (n + begin + end))
        out.append(size)
        # input index of every tap of every window on this axis: (size, k)
        taps.append(np.arange(size)[:, None] * s - begin + np.arange(k)[None, :] * d)
    inside = [((t >= 0) & (t < x.shape[2 + i])).sum(axis=1) for i, t in enumerate(taps)]
    if any((c == 0).any() for c in inside):
        raise EdgeDFAError(f"{where}: a window covers only padding (kernel {kernel}, dilations "
                           f"{dilations}, pads {pads}, ceil_mode {int(ceil)}); onnxruntime "
                           "gives -FLT_MAX (MaxPool) or 0 (AveragePool) there")
    counts = None
    if node.op == "AveragePool":
        if a.get("count_include_pad", 0):
            per_axis = [((t >= -pads[i]) & (t < x.shape[2 + i] + pads[rank + i])).sum(axis=1)
                        for i, t in enumerate(taps)]
        else:
            per_axis = inside
        counts = per_axis[0].astype(np.float64)
        for c in per_axis[1:]:
            counts = np.multiply.outer(counts, c)
        counts = counts.reshape((1, 1) + tuple(out))
    return kernel, strides, dilations, grown, out, counts


@op("MaxPool")
def max_pool(node, x):
    kernel, strides, dilations, pads, _, _ = _pool_windows(node, x)
    y = None
    for _, view in _windows(x, kernel, strides, dilations, pads, -np.inf):
        y = view.copy() if y is None else np.maximum(y, view)
    return y


@op("AveragePool")
def average_pool(node, x):
    kernel, strides, dilations, pads, _, counts = _pool_windows(node, x)
    total = sum(view for _, view in _windows(x, kernel, strides, dilations, pads, 0.0))
    return np.ldexp(total / counts, int(node.attrs.get("scale_log2", 0)))


@op("GlobalAveragePool")
def global_average_pool(node, x):
    return np.ldexp(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), int(node.attrs.get("scale_log2", 0)))


# -- layout ---------------------------------------------------------------------------------
@op("Flatten")
def flatten(node, x):
    axis = int(node.attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Reshape")
def reshape(node, x):
    shape = [int(s) for s in node.attrs["shape"]]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def transpose(node, x):
    return np.transpose(x, node.attrs.get("perm"))


@op("Gather")
def gather(node, x):
    return np.take(x, node.attrs["indices"], axis=int(node.attrs["axis"]))


NUMPY_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@op("Pad")
def pad(node, x):
    pads = [int(p) for p in node.attrs["pads"]]
    r = len(pads) // 2
    widths = [(0, 0)] + list(zip(pads[:r], pads[r:]))
    mode = NUMPY_PAD_MODES[node.attrs.get("mode", "constant")]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=float(node.attrs.get("value", 0.0)))
    return np.pad(x, widths, mode=mode)


@op("Squeeze")
def squeeze(node, x):
    axes = node.attrs.get("axes")
    return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))


@op("Unsqueeze")
def unsqueeze(node, x):
    axes = [int(a) for a in node.attrs["axes"]]
    rank = x.ndim + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = np.expand_dims(x, a)
    return x


@op("Add")
def add(node, *xs):
    signs = node.attrs.get("signs") or [1] * len(xs)
    out = xs[0] if signs[0] > 0 else -xs[0]
    for x, s in zip(xs[1:], signs[1:]):
        out = out + x if s > 0 else out - x
    return out


@op("Mul")
def mul(node, a, b):
    return a * b


@op("MatMul")
def matmul(node, a, b):
    return np.matmul(a, b)


@op("Concat")
def concat(node, *xs):
    return np.concatenate(xs, axis=int(node.attrs["axis"]))


# -- recurrent layers -----------------------------------------------------------------------
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _rnn_setup(node, x):
    kind = node.op
    layout = int(node.attrs.get("layout", 0))
    xs = x if layout == 0 else np.swapaxes(x, 0, 1)  # (T, N, I)
    w, r = _p(node, "W"), _p(node, "R")
    hidden = int(node.attrs.get("hidden_size", r.shape[-1]))
    direction = node.attrs.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    b = _p(node, "B")
    b = np.zeros((dirs, 2 * GATES[kind] * hidden)) if b is None else b
    names = list(node.attrs.get("activations") or DEFAULT_ACTIVATIONS[kind] * dirs)
    per = len(DEFAULT_ACTIVATIONS[kind])
    if len(names) == per and dirs == 2:
        names = names * 2
    try:
        acts = [ACTIVATIONS[a] for a in names]
    except KeyError as exc:
        raise EdgeDFAError(f"node {node.name!r}: activation {exc} is not supported") from exc
    clip = node.attrs.get("clip")
    return xs, w, r, b, hidden, direction, dirs, acts, per, clip, layout


def _clipped(v, clip):
    return v if clip is None else np.clip(v, -clip, clip)


def _step_rnn(kind, node, x_t, h, c, w, r, wb, rb, acts, clip, hidden):
    """One time step of one direction; returns (h, c)."""
    if kind == "RNN":
        return acts[0](_clipped(x_t @ w.T + h @ r.T + wb + rb, clip)), c
    if kind == "GRU":
        f, g = acts
        xw = x_t @ w.T + wb
        z = f(_clipped(xw[:, :hidden] + h @ r[:hidden].T + rb[:hidden], clip))
        rr = f(_clipped(xw[:, hidden:2 * hidden] + h @ r[hidden:2 * hidden].T
                        + rb[hidden:2 * hidden], clip))
        rh, rbh = r[2 * hidden:], rb[2 * hidden:]
        if node.attrs.get("linear_before_reset", 0):
            pre = xw[:, 2 * hidden:] + rr * (h @ rh.T + rbh)
        else:
            pre = xw[:, 2 * hidden:] + (rr * h) @ rh.T + rbh
        hh = g(_clipped(pre, clip))
        return (1.0 - z) * hh + z * h, c
    f, g, hact = acts
    gates = x_t @ w.T + h @ r.T + wb + rb
    i = f(_clipped(gates[:, :hidden], clip))
    o_pre = gates[:, hidden:2 * hidden]
    if node.attrs.get("input_forget", 0):
        fg = 1.0 - i
    else:
        fg = f(_clipped(gates[:, 2 * hidden:3 * hidden], clip))
    cc = g(_clipped(gates[:, 3 * hidden:], clip))
    c = fg * c + i * cc
    o = f(_clipped(o_pre, clip))
    return o * hact(c), c


def _recurrent(node, x):
    xs, w, r, b, hidden, direction, dirs, acts, per, clip, layout = _rnn_setup(node, x)
    steps, n = xs.shape[0], xs.shape[1]
    g = GATES[node.op]
    y = np.zeros((steps, dirs, n, hidden))
    y_h = np.zeros((dirs, n, hidden))
    y_c = np.zeros((dirs, n, hidden))
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        h = np.zeros((n, hidden))
        c = np.zeros((n, hidden))
        wb, rb = b[d, :g * hidden], b[d, g * hidden:]
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            h, c = _step_rnn(node.op, node, xs[t], h, c, w[d], r[d], wb, rb,
                             acts[d * per:(d + 1) * per], clip, hidden)
            y[t, d] = h
        y_h[d], y_c[d] = h, c
    if layout:
        y, y_h, y_c = np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(
            y_c, 0, 1)
    return (y, y_h, y_c) if node.op == "LSTM" else (y, y_h)


for _kind in GATES:
    op(_kind)(_recurrent)


def tensor_shapes(graph: Graph) -> dict:
    """Tensor name -> shape, with "N" where the batch size goes (found by running twice)."""
    one = run_float_all(graph, np.zeros((1,) + tuple(graph.input_shape)))
    two = run_float_all(graph, np.zeros((2,) + tuple(graph.input_shape)))
    return {name: tuple("N" if a != b else a for a, b in zip(v.shape, two[name].shape))
            for name, v in one.items()}


__all__ = ["run_float", "run_float_all", "prepare_input", "tensor_shapes", "OPS", "op"]
