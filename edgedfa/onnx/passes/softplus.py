"""PyTorch's Softplus threshold select, as the dynamo exporter writes it, fused back into one node.

``nn.Softplus(beta, threshold)`` is ``x`` where ``beta·x > threshold``, else
``log(1 + exp(beta·x)) / beta``. TorchScript drops the threshold: ``Softplus`` alone at beta 1,
``Mul(x, beta) -> Softplus -> Div(., beta)`` otherwise. The dynamo exporter writes the same and
selects ``Where(Greater(beta·x, threshold), x, .)`` on top. The select becomes part of one
``Softplus`` node of FUSED_DOMAIN with attribute ``threshold``, whose handler (ops/activation.py)
decides whether the datapath honours it; a Mul and Div by beta stay, constant scales the
importer folds into the Dense or Conv next to them (onnx/affine.py).
"""

from __future__ import annotations

from onnx import AttributeProto

from ..ir import FUSED_DOMAIN, OGraph, ONode
from .gelu import _Match, _near, _scalar


def _by_beta(m: _Match, sp: ONode):
    """(x, Div node) when Softplus ``sp`` reads Mul(x, beta) and only Div(., beta) reads it."""
    scale = m.made.get(sp.inputs[0])
    if scale is None or scale.op_type != "Mul" or scale.domain or len(scale.inputs) != 2:
        return None
    a, b = scale.inputs
    x, beta = (a, _scalar(m.og, b)) if b in m.og.consts else (b, _scalar(m.og, a))
    div = m.only_reader(sp.outputs[0], "Div")
    if beta is None or x in m.og.consts or not div or div.inputs[0] != sp.outputs[0]:
        return None
    return (x, div) if _near(_scalar(m.og, div.inputs[1]), beta) else None


def _select(m: _Match, sp: ONode, x: str, y: str):
    """(threshold, Greater, Where) when ``y`` is read only by Where(Greater(v, threshold), x, y),
    ``v`` the Softplus's input, the Greater read only there."""
    where = m.only_reader(y, "Where")
    if not where or where.inputs[1:] != [x, y]:
        return None
    test = m.made.get(where.inputs[0])
    if (test is None or test.op_type != "Greater" or test.domain or test.inputs[0] != sp.inputs[0]
            or len(m.reads.get(where.inputs[0], [])) != 1 or where.inputs[0] == m.og.output_name):
        return None
    value = _scalar(m.og, test.inputs[1])
    return None if value is None else (value, test, where)


def fuse_softplus(og: OGraph):
    """One Softplus under the dynamo exporter's threshold select becomes one fused node."""
    m = _Match(og)
    for node in og.nodes:
        if node.op_type != "Softplus" or node.domain:
            continue
        scaled = _by_beta(m, node)
        x, y = (scaled[0], scaled[1].outputs[0]) if scaled else (node.inputs[0], node.outputs[0])
        select = _select(m, node, x, y)
        if select is None:
            continue  # a Softplus alone (with its Mul and Div): the ONNX op's handler
        threshold, test, where = select
        if scaled:  # the Div writes the select's output; the Softplus keeps its own
            scaled[1].outputs = [where.outputs[0]]
        out = node.outputs[0] if scaled else where.outputs[0]
        fused = ONode(node.name, "Softplus", [node.inputs[0]], [out], {"threshold": float(threshold)},
                      {"threshold": AttributeProto.FLOAT}, FUSED_DOMAIN)
        og.nodes = [fused if n is node else n for n in og.nodes if n is not test and n is not where]
        og.touch()
        return og, True
    return og, False
