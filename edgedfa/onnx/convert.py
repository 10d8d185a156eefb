"""Turn the rewritten light graph into canonical ``edgedfa.graph`` nodes, one handler per op."""

from __future__ import annotations

import numpy as np

from ..graph import INPUT_STAGE, Graph, Node
from .affine import fold_affines
from .registry import lookup, schema_version, supported, supported_text
from .ir import BATCH, OGraph, ONode, batch_axis


class Converter:
    """What a handler sees: constants, inferred shapes, and where to put canonical nodes."""

    def __init__(self, og: OGraph):
        self.og = og
        self.nodes: list = []
        self.alias: dict = {}  # light tensor name -> canonical tensor name
        self.uses = {}
        for n in og.nodes:
            for i in n.inputs:
                self.uses[i] = self.uses.get(i, 0) + 1
        self.uses[og.output_name] = self.uses.get(og.output_name, 0) + 1
        self._made: dict = {}  # canonical output name -> canonical node

    # -- reading ------------------------------------------------------------------------
    def const(self, name: str):
        """The constant value of a light tensor, or None (also for absent optional inputs)."""
        return self.og.consts.get(name) if name else None

    def shape(self, name: str):
        return self.og.shape(name)

    def tensor(self, name: str) -> str:
        """Canonical name of a data tensor."""
        return self.alias.get(name, name)

    def known_shape(self, node: ONode, name: str) -> tuple:
        shape = self.shape(name)
        if shape is None or any(d is None for d in shape):
            self.fail(node, f"the shape of {name!r} cannot be resolved ({_fmt(shape)}); "
                      "only the batch dimension may be dynamic")
        return shape

    def batch_at(self, node: ONode, name: str) -> int:
        axis = batch_axis(self.shape(name))
        if axis is None:
            self.fail(node, f"cannot tell where the batch dimension of {name!r} is "
                      f"(shape {_fmt(self.shape(name))})")
        return axis

    def data_input(self, node: ONode, index: int = 0) -> str:
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            self.fail(node, f"input {index} is missing")
        if name in self.og.consts:
            self.fail(node, f"input {index} ({name!r}) is a constant where data is expected")
        return name

    def weight(self, node: ONode, index: int, what: str) -> np.ndarray:
        value = self.const(node.inputs[index]) if index < len(node.inputs) else None
        if value is None:
            self.fail(node, f"the {what} (input {index}) must be a constant initializer")
        return np.asarray(value, dtype=np.float64)

    def producer(self, name: str):
        """Canonical node that writes canonical tensor ``name``, if made here."""
        return self._made.get(self.tensor(name))

    def single_use(self, name: str) -> bool:
        return self.uses.get(name, 0) == 1

    # -- writing ------------------------------------------------------------------------
    def emit(self, node: ONode, op: str, inputs: list, outputs: list, attrs=None,
             params=None, suffix: str = "") -> Node:
        out = Node(node.name + suffix, op, [self.tensor(i) if i else "" for i in inputs],
                   list(outputs), dict(attrs or {}), dict(params or {}))
        self.nodes.append(out)
        for o in outputs:
            if o:
                self._made[o] = out
        return out

    def set_alias(self, name: str, target: str):
        self.alias[name] = self.tensor(target)

    def fail(self, node: ONode, message: str):
        self.og.fail(message, node)


def _fmt(shape) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("N" if d == BATCH else ("?" if d is None else str(d))
                           for d in shape) + "]"


def check_supported(og: OGraph):
    """Raise one error naming every node whose op has no handler."""
    bad = [n for n in og.nodes if lookup(n.op_type, og.opset, n.domain) is None]
    if not bad:
        return
    from .passes.fold_constants import FOLDABLE

    def version(n):
        v = schema_version(n.op_type, og.opset, n.domain)
        dom = f"{n.domain}." if n.domain else ""
        return f"{dom}{n.op_type}" + (f"-{v}" if v else "")

    listed = "; ".join(f"{n.name!r} ({version(n)}{_why(n, og)})" for n in bad)
    og.fail(f"{len(bad)} unsupported node(s): {listed}. Supported ops: "
            f"{supported_text()}. Also accepted when they compute constant shapes: "
            f"{', '.join(sorted(FOLDABLE))}")


HINTS = {"Erf": ", only inside GELU: x·(1 + erf(x/√2))/2 (or the normal CDF (1 + erf(x/√2))/2)"}


def _why(n: ONode, og: OGraph) -> str:
    from .passes.fold_constants import FOLDABLE

    if n.op_type in HINTS and not n.domain:
        return HINTS[n.op_type]
    if n.op_type in FOLDABLE:
        return ", not constant: it reads data or the batch size"
    if schema_version(n.op_type, og.opset, n.domain) is not None and any(
            op == n.op_type for op in supported()):
        return f", supported at opset versions {supported()[n.op_type]}"
    return ""


def convert(og: OGraph) -> Graph:
    """Run every node's handler in order and assemble the canonical Graph."""
    check_supported(og)
    conv = Converter(og)
    for node in og.nodes:
        lookup(node.op_type, og.opset, node.domain)(node, conv)
    input_shape = og.shape(og.input_name)
    out_name = conv.tensor(og.output_name)
    out_shape = og.shape(og.output_name)
    if out_shape is not None and batch_axis(out_shape) != 0:
        og.fail(f"the output {og.output_name!r} (shape {_fmt(out_shape)}) does not have the "
                "batch dimension first")
    meta = {k: v for k, v in og.meta.items() if k != "fold_errors"}
    meta.update(source=og.source, opset=og.opset, export_batch=og.export_batch)
    nodes, stage = fold_affines(conv.nodes, og, out_name)
    if stage is not None:
        meta[INPUT_STAGE] = stage
    graph = Graph(og.name, og.input_name, tuple(int(d) for d in input_shape[1:]), out_name, nodes, meta)
    _self_check(og, graph)
    return graph


def _self_check(og: OGraph, graph: Graph):
    """Run the result once on a zero batch of two: what we return must execute."""
    from ..float_ref import run_float

    try:
        y = run_float(graph, np.zeros((2,) + graph.input_shape))
    except Exception as exc:
        og.fail(f"the imported graph does not execute ({type(exc).__name__}: {exc})")
    if y.ndim == 0 or y.shape[0] != 2:
        og.fail(f"the output {graph.output_name!r} does not keep the batch dimension first")
