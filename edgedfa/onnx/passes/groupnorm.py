"""PyTorch's GroupNorm decomposition fused back into one node.

``nn.GroupNorm(G, C)`` exports (TorchScript and dynamo alike) as
``Reshape(x, [N, G, -1]) -> InstanceNormalization(scale = ones(G), B = zeros(G)) -> Reshape(x's
shape) -> Mul(γ[C, 1, ...]) -> Add(β[C, 1, ...])``. The chain becomes one ``GroupNormalization``
node of FUSED_DOMAIN (inputs x, scale (C,), B (C,); attributes ``groups``, ``epsilon``) whose
handler (ops/misc.py) emits a ``GroupNorm``; without the Mul or the Add γ is ones, β zeros. Any
other InstanceNormalization stays for its own handler (a GroupNorm with G = C).
"""

from __future__ import annotations

import numpy as np
from onnx import AttributeProto

from ..ir import BATCH, FUSED_DOMAIN, OGraph, ONode
from .gelu import _Match


def _constant_is(og: OGraph, name: str, value: float) -> bool:
    v = og.consts.get(name)
    return v is not None and np.asarray(v).dtype.kind == "f" and bool(np.all(np.asarray(v) == value))


def _group_view(m: _Match, inorm: ONode):
    """(x, first Reshape, Reshape back, G) when ``inorm`` normalises x [N, C, positions...] viewed as
    [N, G, C/G·positions] with unit scale and zero bias, and only the Reshape back reads it."""
    og = m.og
    if len(inorm.inputs) != 3 or not (_constant_is(og, inorm.inputs[1], 1.0) and _constant_is(og, inorm.inputs[2], 0.0)):
        return None
    first = m.made.get(inorm.inputs[0])
    if first is None or first.op_type != "Reshape" or first.domain or len(m.reads.get(first.outputs[0], [])) != 1:
        return None
    back = m.only_reader(inorm.outputs[0], "Reshape")
    x = first.inputs[0]
    xs, vs = og.shape(x), og.shape(first.outputs[0])
    if back is None or x in og.consts or not xs or not vs or len(xs) < 2 or len(vs) != 3:
        return None
    if xs[0] != BATCH or vs[0] != BATCH or not all(isinstance(d, int) for d in tuple(xs[1:]) + tuple(vs[1:])):
        return None
    c, g = xs[1], vs[1]
    if g < 1 or c % g or vs[2] != c // g * int(np.prod(xs[2:])) or og.shape(back.outputs[0]) != xs:
        return None
    return x, first, back, g


def _per_channel(value, rank: int, channels: int):
    """A float constant's values per channel when it varies along axis 1 of a rank-``rank``
    tensor at most ((C, 1, ...), (1, C, 1, ...), a scalar), else None."""
    v = np.asarray(value)
    if v.dtype.kind != "f" or v.ndim > rank:
        return None
    full = (1,) * (rank - v.ndim) + v.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1).astype(np.float64), (channels,)).copy()


def _affine_step(m: _Match, tensor: str, op: str, rank: int, channels: int):
    """(node, values per channel) when the one reader of ``tensor`` is ``op`` by such a constant."""
    node = m.only_reader(tensor, op)
    if node is None or len(node.inputs) != 2 or tensor not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
    values = _per_channel(m.og.consts[other], rank, channels) if other in m.og.consts else None
    return None if values is None else (node, values)


def fuse_group_norm(og: OGraph):
    """One GroupNorm decomposition (with its per-channel Mul and Add when present) becomes one node."""
    m = _Match(og)
    views = ((node, _group_view(m, node)) for node in og.nodes if node.op_type == "InstanceNormalization")
    for node, (x, first, back, groups) in ((n, v) for n, v in views if v and not n.domain):
        shape = og.shape(x)
        rank, channels = len(shape), shape[1]
        params, out, drop = {"scale": np.ones(channels), "B": np.zeros(channels)}, back.outputs[0], [first, back]
        for key, op in (("scale", "Mul"), ("B", "Add")):
            step = _affine_step(m, out, op, rank, channels)
            if step:
                params[key], out = step[1], step[0].outputs[0]
                drop.append(step[0])
        ins = [x] + [og.add_const(f"{node.name}/{k}", v) for k, v in params.items()]
        fused = ONode(node.name, "GroupNormalization", ins, [out],
                      {"groups": int(groups), "epsilon": float(node.attr("epsilon", 1e-5))},
                      {"groups": AttributeProto.INT, "epsilon": AttributeProto.FLOAT}, FUSED_DOMAIN)
        og.nodes = [fused if n is node else n for n in og.nodes if all(n is not d for d in drop)]
        og.touch()
        return og, True
    return og, False
