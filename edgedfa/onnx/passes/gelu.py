"""GELU below opset 20: the normal CDF in the exporters' decompositions fused into one node.

GELU(x) = x·Phi(x), Phi(x) = (1 + erf(x/√2)) / 2 (PyTorch's ``approximate="tanh"``: with
tanh(√(2/π)(x + 0.044715x³)) for the erf). Below opset 20 the exporters write it as
Div/Erf/Add/Mul/Mul (tanh: Mul or Pow for x³, Mul, Add, Mul, Tanh, Add, Mul, Mul) with the
factor 1/2 anywhere in the product. The core ``1 + erf(x/√2)`` (or its tanh form) and the 1/2
become a ``NormalCdf`` node of FUSED_DOMAIN; a product with another factor stays a Mul of two
activations.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import AttributeProto

from ..ir import FUSED_DOMAIN, OGraph, ONode

SQRT2 = math.sqrt(2.0)
TANH_SCALE = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
RTOL = 1e-6  # the exporters write float32 constants


def _scalar(og: OGraph, name: str):
    """The value of a one-element constant, or None."""
    value = og.consts.get(name)
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind != "f":
        return None
    return float(np.asarray(value).reshape(-1)[0])


def _near(value, target) -> bool:
    return value is not None and abs(value - target) <= RTOL * abs(target)


class _Match:
    """One walk over the graph's producers and consumers."""

    def __init__(self, og: OGraph):
        self.og, self.made, self.reads = og, og.producers(), og.consumers()

    def only_reader(self, tensor: str, op: str):
        """The one node that reads ``tensor``, when it is an ``op`` and nothing else does."""
        readers = self.reads.get(tensor, [])
        if len(readers) != 1 or tensor == self.og.output_name or readers[0].op_type != op or readers[0].domain:
            return None
        return readers[0]

    def binary(self, tensor: str, ops):
        """(node, its two inputs) when ``tensor`` is written by one of ``ops`` read only once."""
        node = self.made.get(tensor)
        if node is None or node.op_type not in ops or node.domain or len(node.inputs) != 2:
            return None
        if len(self.reads.get(tensor, [])) != 1 or tensor == self.og.output_name:
            return None
        return node, node.inputs

    def by_constant(self, tensor: str, op: str, value: float):
        """(node, data input) when ``tensor`` = data ``op`` value (either side for Mul)."""
        hit = self.binary(tensor, (op,))
        if hit is None:
            return None
        node, (a, b) = hit
        if _near(_scalar(self.og, b), value) and a not in self.og.consts:
            return node, a
        if op == "Mul" and _near(_scalar(self.og, a), value) and b not in self.og.consts:
            return node, b
        return None

    def scaled(self, tensor: str, value: float):
        """(node, data) when ``tensor`` = data · value, written as a Mul or a Div by 1/value."""
        return self.by_constant(tensor, "Mul", value) or self.by_constant(tensor, "Div", 1.0 / value)

    def erf_core(self, node: ONode):
        """(x, nodes) when ``node`` is Erf(x/√2)."""
        hit = self.scaled(node.inputs[0], 1.0 / SQRT2)
        return None if hit is None else (hit[1], [hit[0]])

    def tanh_core(self, node: ONode):
        """(x, nodes) when ``node`` is tanh(√(2/π)(x + 0.044715x³))."""
        outer = self.by_constant(node.inputs[0], "Mul", TANH_SCALE)
        inner = outer and self.binary(outer[1], ("Add",))
        if not inner:
            return None
        for x, cubic in (inner[1], inner[1][::-1]):
            term = self.by_constant(cubic, "Mul", TANH_CUBIC)
            cube = term and self.cube(term[1], x)
            if cube:
                return x, [outer[0], inner[0], term[0]] + cube
        return None

    def cube(self, tensor: str, x: str):
        """The nodes writing ``tensor`` = x³ (Pow(x, 3), or x·(x·x) in either order)."""
        hit = self.binary(tensor, ("Pow", "Mul"))
        if hit is None:
            return None
        node, (a, b) = hit
        if node.op_type == "Pow":
            return [node] if a == x and _near(_scalar(self.og, b), 3.0) else None
        square = b if a == x else a if b == x else None
        sq = square and self.binary(square, ("Mul",))
        return [node, sq[0]] if sq and sq[1] == [x, x] else None


def _phi(m: _Match, node: ONode):
    """(x, the tensor holding 1 + erf (or 1 + tanh), nodes, approximate) for an Erf/Tanh node."""
    core = m.erf_core(node) if node.op_type == "Erf" else m.tanh_core(node)
    plus = core and m.only_reader(node.outputs[0], "Add")
    if not plus or len(plus.inputs) != 2:
        return None
    one = plus.inputs[1] if plus.inputs[0] == node.outputs[0] else plus.inputs[0]
    if not _near(_scalar(m.og, one), 1.0):
        return None
    x = core[0]
    return x, plus.outputs[0], core[1] + [node, plus], "none" if node.op_type == "Erf" else "tanh"


def _halves(og: OGraph, node: ONode, tensor: str) -> bool:
    """``node`` writes ``tensor`` / 2 (a Mul by 0.5 on either side, or a Div by 2)."""
    if node.domain or len(node.inputs) != 2:
        return False
    if node.op_type == "Mul":
        return _near(_scalar(og, _other(node, tensor)), 0.5)
    return node.op_type == "Div" and node.inputs[0] == tensor and _near(_scalar(og, node.inputs[1]), 2.0)


def _halving(m: _Match, twice: str):
    """Where the 1/2 of Phi sits: (nodes to drop, the other factor or None, the output)."""
    readers = m.reads.get(twice, [])
    if len(readers) != 1 or twice == m.og.output_name or readers[0].domain or len(readers[0].inputs) != 2:
        return None
    prod = readers[0]
    if _halves(m.og, prod, twice):  # (1 + erf) / 2: Phi itself
        return [prod], None, prod.outputs[0]
    other = _other(prod, twice)
    if prod.op_type != "Mul" or other in m.og.consts:
        return None
    halved = m.scaled(other, 0.5)
    if halved is not None:  # (v / 2) · (1 + erf)
        return [halved[0], prod], halved[1], prod.outputs[0]
    outer = m.reads.get(prod.outputs[0], [])
    if len(outer) == 1 and prod.outputs[0] != m.og.output_name and _halves(m.og, outer[0], prod.outputs[0]):
        return [prod, outer[0]], other, outer[0].outputs[0]  # (v · (1 + erf)) / 2
    return None


def _other(node: ONode, tensor: str) -> str:
    return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]


def fuse_normal_cdf(og: OGraph):
    """One Phi (erf or tanh form, with its 1/2) becomes NormalCdf; v·Phi a Mul of it."""
    m = _Match(og)
    for node in og.nodes:
        if node.op_type not in ("Erf", "Tanh") or node.domain:
            continue
        phi = _phi(m, node)
        tail = phi and _halving(m, phi[1])
        if not tail or phi[0] in og.consts:
            continue
        x, _, core, approximate = phi
        drop, other, out = tail
        cdf_out = out if other is None else og.fresh(f"{node.name}/normal_cdf")
        fused = [ONode(node.name, "NormalCdf", [x], [cdf_out], {"approximate": approximate},
                       {"approximate": AttributeProto.STRING}, FUSED_DOMAIN)]
        if other is not None:
            fused.append(ONode(drop[-1].name, "Mul", [other, cdf_out], [out]))
        gone = core + drop
        last = max(i for i, n in enumerate(og.nodes) if any(n is d for d in gone))
        og.nodes = [n for n in og.nodes[:last] if not any(n is d for d in gone)] + fused + og.nodes[last + 1:]
        og.touch()
        return og, True
    return og, False
