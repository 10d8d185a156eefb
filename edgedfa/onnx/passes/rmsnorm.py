"""F.normalize and RMSNorm decompositions fused into one node (datapath §8.11).

- ``F.normalize(x, dim)``, both exporters: ``ReduceL2(x, [dim], keepdims=1) -> Clip(min = eps)
  [-> Expand] -> Div(x, .)`` (a Max by eps, or no floor at all, too). Every ReduceL2 must be one:
  another use (keepdims = 0, over the batch, a Div of something else, ...) is refused here by
  name, as no handler takes a ReduceL2.
- ``nn.RMSNorm`` (dynamo below opset 23) and the hand-written ``x * rsqrt(mean(x²) + eps) * w``
  (both exporters): ``Pow(x, 2) or Mul(x, x) -> ReduceMean(keepdims=1) [-> Add(eps)] -> Sqrt ->
  Reciprocal or Div(1, .) -> Mul(x, .)`` or ``Div(x, Sqrt(.))``, then a constant ``Mul`` (γ) and
  ``Add`` (β) broadcasting to the normalised axes when present. A ReduceMean of another tensor
  stays for its own handler.

Both become one ``RMSNormalization`` node of FUSED_DOMAIN (inputs x, optional scale, B;
attributes ``axes``: the normalised axes, consecutive, never the batch's (the batch-first rewrite
keeps them where they are); ``epsilon``;
``l2``: 1 for F.normalize, whose handler adds the constant 1/sqrt(D) after it).
"""

from __future__ import annotations

import numpy as np
from onnx import AttributeProto

from ..ir import FUSED_DOMAIN, OGraph, ONode, batch_axis
from .gelu import _Match, _near, _scalar

L2_USE = ("ReduceL2 is supported only as F.normalize's x / max(ReduceL2(x), eps): keepdims=1 over consecutive"
          " non-batch axes, read by one Clip(min=eps) or Max(eps) [and Expand], then Div(x, that)")


def _reduced_axes(og: OGraph, node: ONode):
    """The batched axes a Reduce* node reduces (attribute or input 1), normalised; None: all."""
    rank = len(og.shape(node.inputs[0]) or ())
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = og.consts.get(node.inputs[1])
        if axes is None:
            return "computed"
    if axes is None or np.size(axes) == 0:
        return None if not node.attr("noop_with_empty_axes", 0) else []
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.reshape(axes, -1))


def _check_axes(og: OGraph, node: ONode, axes):
    """A reduction's axes as the fused node needs them, else a reason."""
    if axes == "computed":
        return "its axes are computed from the data"
    batch = batch_axis(og.shape(node.inputs[0]))
    batch = 0 if batch is None else batch  # time-major [T, N, H]: the batch-first rewrite moves it later
    if axes is None or batch in axes:
        return f"it reduces over the batch axis ({batch})"
    if axes != list(range(axes[0], axes[-1] + 1)):
        return f"its axes {axes} are not consecutive"
    if not node.attr("keepdims", 1):
        return "keepdims=0 (the norm must broadcast back over x)"
    return None


def _reader(m: _Match, tensor: str, ops):
    """The one node reading ``tensor``, when its op is one of ``ops``."""
    readers = m.reads.get(tensor, [])
    if len(readers) != 1 or tensor == m.og.output_name or readers[0].domain or readers[0].op_type not in ops:
        return None
    return readers[0]


def _l2_chain(m: _Match, node: ONode):
    """(x, eps, nodes, output) of F.normalize from its ReduceL2, or a reason it is not one."""
    og, x = m.og, node.inputs[0]
    floor = _reader(m, node.outputs[0], ("Clip", "Max", "Expand", "Div"))
    eps, nodes, cur = 0.0, [node], node.outputs[0]
    if floor is not None and floor.op_type in ("Clip", "Max"):
        lo = floor.inputs[1] if len(floor.inputs) > 1 else ""
        hi = floor.inputs[2] if floor.op_type == "Clip" and len(floor.inputs) > 2 else ""
        if floor.op_type == "Max" and len(floor.inputs) == 2 and floor.inputs[1] == cur:
            lo = floor.inputs[0]
        eps = _scalar(og, lo) if lo else None
        if eps is None or eps < 0 or (hi and not np.isposinf(_scalar(og, hi) or 0.0)) or floor.attr("min") is not None:
            return "its floor is not one constant eps >= 0 without a maximum"
        nodes.append(floor)
        cur = floor.outputs[0]
    expand = _reader(m, cur, ("Expand",))
    if expand is not None:
        nodes.append(expand)
        cur = expand.outputs[0]
    div = _reader(m, cur, ("Div",))
    if div is None or div.inputs != [x, cur]:
        return "it is not followed by the division of its own input by it"
    return x, eps, nodes + [div], div.outputs[0]


def _square_of(m: _Match, tensor: str):
    """(x, node) when ``tensor`` = x² (Pow(x, 2) or Mul(x, x)) read once."""
    hit = m.binary(tensor, ("Pow", "Mul"))
    if hit is None:
        return None
    node, (a, b) = hit
    if node.op_type == "Pow" and _near(_scalar(m.og, b), 2.0) and a not in m.og.consts:
        return a, node
    return (a, node) if node.op_type == "Mul" and a == b and a not in m.og.consts else None


def _rms_chain(m: _Match, node: ONode):
    """(x, eps, nodes, output) of x / sqrt(mean(x²) + eps) from its ReduceMean, or None."""
    og, sq = m.og, _square_of(m, node.inputs[0])
    if sq is None:
        return None
    x, nodes, cur, eps = sq[0], [sq[1], node], node.outputs[0], 0.0
    add = _reader(m, cur, ("Add",))
    if add is not None:
        other = add.inputs[1] if add.inputs[0] == cur else add.inputs[0]
        eps = _scalar(og, other)
        if eps is None or eps < 0:
            return None
        nodes.append(add)
        cur = add.outputs[0]
    root = _reader(m, cur, ("Sqrt",))
    nxt = root and _reader(m, root.outputs[0], ("Reciprocal", "Div"))
    if not nxt:
        return None
    if nxt.op_type == "Div" and nxt.inputs == [x, root.outputs[0]]:
        return x, eps, nodes + [root, nxt], nxt.outputs[0]
    if nxt.op_type == "Div" and not (nxt.inputs[1] == root.outputs[0] and _near(_scalar(og, nxt.inputs[0]), 1.0)):
        return None
    mul = _reader(m, nxt.outputs[0], ("Mul",))
    if mul is None or sorted(mul.inputs) != sorted([x, nxt.outputs[0]]):
        return None
    return x, eps, nodes + [root, nxt, mul], mul.outputs[0]


def _per_feature(m: _Match, tensor: str, op: str, shape, axes):
    """(node, values shaped like the normalised axes) when ``tensor``'s one reader is ``op`` by a
    constant that varies along the normalised axes only."""
    node = _reader(m, tensor, (op,))
    if node is None or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
    v = m.og.consts.get(other)
    if v is None or np.asarray(v).dtype.kind != "f" or np.ndim(v) > len(shape):
        return None
    v = np.asarray(v, dtype=np.float64)
    full = v.reshape((1,) * (len(shape) - v.ndim) + v.shape)
    if any(full.shape[a] != 1 for a in range(len(shape)) if a not in axes):
        return None
    norm = tuple(int(shape[a]) for a in axes)
    try:
        return node, np.array(np.broadcast_to(full.reshape(full.shape[axes[0]:axes[-1] + 1]), norm))
    except ValueError:
        return None


def _fuse(og: OGraph, m: _Match, node: ONode, x: str, axes, eps: float, nodes, out: str, l2: bool):
    shape = og.shape(x)
    params = {}
    if shape is not None and all(isinstance(d, int) for d in shape[1:]):
        for key, op in (("scale", "Mul"), ("B", "Add")):
            step = _per_feature(m, out, op, shape, axes)
            if step:
                params[key], out = step[1], step[0].outputs[0]
                nodes.append(step[0])
    ins = [x] + [og.add_const(f"{node.name}/{k}", params[k]) if k in params else "" for k in ("scale", "B")]
    while not ins[-1]:
        ins.pop()
    fused = ONode(node.name, "RMSNormalization", ins, [out],
                  {"axes": list(axes), "epsilon": float(eps), "l2": int(l2)},
                  {"axes": AttributeProto.INTS, "epsilon": AttributeProto.FLOAT, "l2": AttributeProto.INT},
                  FUSED_DOMAIN)
    first = og.nodes.index(nodes[-1])
    og.nodes = [fused if i == first else n for i, n in enumerate(og.nodes) if all(n is not d for d in nodes)
                or i == first]
    og.touch()


def fuse_rms_norm(og: OGraph):
    """One F.normalize (every ReduceL2 must be one) or RMSNorm decomposition becomes one node."""
    m = _Match(og)
    for node in og.nodes:
        if node.domain or node.op_type not in ("ReduceL2", "ReduceMean"):
            continue
        axes = _reduced_axes(og, node)
        if node.op_type == "ReduceL2":
            chain = _check_axes(og, node, axes) or _l2_chain(m, node)
            if isinstance(chain, str):
                og.fail(f"{L2_USE}; here {chain}", node)
        else:
            chain = _rms_chain(m, node)
            if chain is None:
                continue
            why = _check_axes(og, node, axes)
            if why:
                og.fail(f"a mean square x / sqrt(mean(x²) + eps) is normalised per sample only; here {why}", node)
        x, eps, nodes, out = chain
        _fuse(og, m, node, x, axes, eps, nodes, out, node.op_type == "ReduceL2")
        return og, True
    return og, False
