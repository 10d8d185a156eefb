"""The plain graph every model passes through: ONNX import and the built-in architectures
both produce it, quantization turns it into an integer model, export reads it back.

Ops are canonical (not ONNX op types); their float semantics are in ``docs/operators.md``:

- ``Dense``      params W (out, in), B (out,) optional; y = x @ W.T + B on the last axis
- ``Conv``       params W (out, in/group, *k), B; attrs strides, pads (begin..., end...),
                 dilations, group (ONNX Conv semantics, 1-d or 2-d)
- ``Relu``, ``Tanh``, ``Sigmoid``, ``LeakyRelu`` (attr alpha), ``Clip`` (attrs min, max),
  ``HardSigmoid`` (attrs alpha, beta), ``NormalCdf`` (Phi(x) = (1 + erf(x/sqrt 2)) / 2; attr
  approximate "none" or "tanh", PyTorch's GELU forms: GELU is x times it), ``Elu`` (attrs alpha,
  gamma: gamma * (x if x > 0 else alpha (exp(x) - 1)); ELU has gamma 1, SELU its own),
  ``PRelu`` (param slope, a per-sample shape broadcast to the input's: x if x > 0 else slope * x;
  the slope trains, docs/datapath.md §7.1),
  ``Softplus`` (log(1 + exp(x)); PyTorch's Mish is x tanh of it), ``Softmax`` (attr axis, never
  the batch: exp(x - max) / sum along it; a softmax inside the graph, docs/datapath.md §8.10)
- ``MaxPool``, ``AveragePool`` attrs kernel_shape, strides, pads, count_include_pad;
  ``GlobalAveragePool``; both average pools take ``scale_log2`` k (default 0): the mean times
  2^k, what a sum over the window imports as (a free move of the binary point)
- ``Flatten`` (attr axis), ``Reshape`` (attr shape, batch dim given as -1 or 0),
  ``Transpose`` (attr perm), ``Squeeze``/``Unsqueeze`` (attr axes), ``Gather`` (attrs axis,
  indices), ``Pad`` (attrs mode in constant/reflect/edge/wrap, pads begin.../end... over the
  non-batch axes, value for constant; ONNX Pad semantics, docs/datapath.md §8.5.1)
- ``Add`` (two or more inputs; attr ``signs``, default all +1: -1 subtracts that input),
  ``Mul`` (two inputs, element-wise, broadcasting), ``MatMul`` (two inputs ``[N, ..., M, K]``
  and ``[N, ..., K, P]`` with the same leading axes: the batched product, docs/datapath.md §7),
  ``Concat`` (attr axis)
- ``BatchNorm``  params scale, B, mean, var (C,); attrs epsilon, momentum (ONNX
                 BatchNormalization over channel axis 1); trained with batch statistics,
                 inference with the running ones (docs/datapath.md §8.7)
- ``LayerNorm``  params scale, B (shaped like the normalised axes); attrs epsilon, axis (< 0:
                 the trailing axes from ``axis`` on, never the batch; ONNX LayerNormalization);
                 per-sample statistics in training and inference alike (§8.8)
- ``GroupNorm``  params scale, B (C,); attrs groups G (dividing C), epsilon: per sample over each
                 group of C/G channels and all positions, then γ, β per channel (PyTorch's
                 nn.GroupNorm; InstanceNormalization is G = C); no running statistics (§8.9)
- ``RMSNorm``    params scale, B optional (shaped like the normalised axes); attrs epsilon, axes
                 (consecutive batched axes, never 0): x / sqrt(mean(x²) + ε) per sample and
                 position, LayerNorm's arithmetic without the mean (nn.RMSNorm, F.normalize; §8.11)
- ``RNN``, ``GRU``, ``LSTM``: ONNX semantics and parameter layout, params W, R, B
  (B optional); attrs hidden_size, direction, activations, linear_before_reset, layout;
  outputs [Y, Y_h] (LSTM: [Y, Y_h, Y_c]); an output name may be "" when unused.

A graph may also carry an **input stage** (``graph.meta["input_affine"]``, see
``stage_input``): ``x * scale + offset`` on the float input before it is quantized, what an
imported model's own normalisation of its input becomes when no Dense or Conv can take it.

``CANONICAL_OPS`` is the one list of them. Every op has an integer layer (edgedfa.layers), a
float reference (edgedfa.float_ref), a hardware layer (hdl_models.layers) and both export
paths (onnx/export_float.py, onnx/export_int.py); tests/test_ops.py holds them to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import EdgeDFAError

DENSE = ("Dense",)
CONV = ("Conv",)
ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid", "NormalCdf", "Elu", "PRelu", "Softplus",
               "Softmax")
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
MOVES = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Pad")  # rearrange codes, no arithmetic
MERGES = ("Add", "Mul", "MatMul", "Concat")
RECURRENT = ("RNN", "GRU", "LSTM")
NORMS = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm")  # trained, but part of the layer before them: they start no module
SLOPES = ("PRelu",)  # activations with a trained parameter: like norms, they start no module

TRAINABLE = DENSE + CONV + RECURRENT + NORMS + SLOPES
MODULE_LEADERS = DENSE + CONV + RECURRENT  # the trainable ops a credit module is built around
CANONICAL_OPS = DENSE + CONV + ACTIVATIONS + POOLS + MOVES + MERGES + RECURRENT + NORMS


INPUT_STAGE = "input_affine"  # graph.meta key: {"scale": nested list, "offset": nested list}


def input_stage(graph) -> tuple | None:
    """The input stage's (scale, offset) as float64 arrays of the input's rank, each
    broadcasting to one sample, or None when the graph has none."""
    st = graph.meta.get(INPUT_STAGE)
    if not st:
        return None
    try:
        a, b = (np.asarray(st[k], dtype=np.float64) for k in ("scale", "offset"))
        shape = tuple(graph.input_shape)
        ok = all(v.ndim == len(shape) and np.broadcast_shapes(v.shape, shape) == shape for v in (a, b))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise EdgeDFAError(f"graph {graph.name!r}: meta {INPUT_STAGE!r} must hold finite 'scale' and 'offset'"
                           f" arrays broadcasting to the input's shape {list(graph.input_shape)}")
    return a, b


def stage_input(graph, x: np.ndarray) -> np.ndarray:
    """Float64 input ``x`` (batch first, the graph's input shape) through the graph's input stage."""
    return apply_stage(input_stage(graph), x)


def apply_stage(stage: tuple | None, x: np.ndarray) -> np.ndarray:
    """``x * scale + offset`` in float64, two roundings, as every path computes it (the int
    export's double Mul and Add included), for ``stage`` = ``input_stage(graph)``; ``x`` itself
    when there is none."""
    return x if stage is None else x * stage[0] + stage[1]


def producers(nodes) -> dict:
    """Tensor name -> the node (anything with ``outputs``) that writes it; "" is no tensor."""
    return {o: n for n in nodes for o in n.outputs if o}


def consumers(nodes) -> dict:
    """Tensor name -> the nodes (anything with ``inputs``) that read it; "" is no tensor."""
    out: dict = {}
    for n in nodes:
        for i in n.inputs:
            if i:
                out.setdefault(i, []).append(n)
    return out


@dataclass
class Node:
    """One operation: canonical op name, tensor names in and out, attributes, float params."""

    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


@dataclass
class Graph:
    """A model: one input (batch first), nodes in topological order, one output (logits)."""

    name: str
    input_name: str
    input_shape: tuple  # per-sample shape, batch dimension excluded
    output_name: str
    nodes: list
    meta: dict = field(default_factory=dict)  # e.g. {"output_softmax": True, "source": path}

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise EdgeDFAError(f"graph {self.name!r} has no node {name!r}")

    def producers(self) -> dict:
        """Tensor name -> node that writes it."""
        return producers(self.nodes)

    def consumers(self) -> dict:
        """Tensor name -> nodes that read it."""
        return consumers(self.nodes)

    def copy(self) -> "Graph":
        nodes = [Node(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.attrs),
                      {k: np.array(v) for k, v in n.params.items()}) for n in self.nodes]
        return Graph(self.name, self.input_name, tuple(self.input_shape), self.output_name,
                     nodes, dict(self.meta))
