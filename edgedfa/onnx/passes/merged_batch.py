"""A Transpose done on the batch merged with the axes after it, undone right after: one Transpose.

dynamo writes ``k.transpose(-2, -1)`` of a ``[N, h, T, d]`` tensor inside its
``scaled_dot_product_attention`` as ``Reshape([-1, T, d])`` (the batch merged with the heads) →
``Transpose([0, 2, 1])`` → ``Reshape([N, h, d, T])``. The engine keeps the batch apart from every
other axis, and the three nodes are the transpose of the two trailing axes of the unmerged
tensor: they become that one Transpose.
"""

import numpy as np
from onnx import AttributeProto

from ..ir import BATCH, SENTINEL, OGraph, ONode, batch_axis


def unmerge_batch_transpose(og: OGraph):
    """Reshape (batch merged with the next axes) → Transpose keeping axis 0 → Reshape splitting
    axis 0 back as it was: one Transpose of the unmerged tensor."""
    consumers = og.consumers()
    for first in og.nodes:
        merged = _merged_axes(og, first)
        if merged is None or og.uses(first.outputs[0]) != 1:
            continue
        (t,) = consumers[first.outputs[0]]
        if t.op_type != "Transpose" or og.uses(t.outputs[0]) != 1:
            continue
        x_shape = og.shape(first.inputs[0])
        tail = len(x_shape) - merged
        perm = [int(p) for p in t.attrs.get("perm", list(range(tail + 1))[::-1])]
        if len(perm) != tail + 1 or perm[0] != 0:
            continue
        (last,) = consumers[t.outputs[0]]
        new_perm = list(range(merged)) + [merged - 1 + p for p in perm[1:]]
        want = [x_shape[i] for i in new_perm]
        if last.op_type != "Reshape" or not _splits_back(og, last, want):
            continue
        node = ONode(og.fresh(t.name + "_unmerged"), "Transpose", [first.inputs[0]], list(last.outputs))
        node.set_attr("perm", new_perm, AttributeProto.INTS)
        og.nodes = [node if n is last else n for n in og.nodes if n is not first and n is not t]
        og.touch()
        return og, True
    return og, False


def _merged_axes(og: OGraph, node) -> int | None:
    """How many leading axes (the batch and the ones after it) a Reshape merges into its first
    output axis, keeping the rest as they are; None if it is no such Reshape."""
    if node.op_type != "Reshape" or len(node.inputs) < 2 or not og.is_const(node.inputs[1]):
        return None
    shape = og.shape(node.inputs[0])
    if shape is None or None in shape or batch_axis(shape) != 0:
        return None
    target = [int(v) for v in np.asarray(og.consts[node.inputs[1]]).reshape(-1)]
    k = len(shape) - (len(target) - 1)
    if target[0] != -1 or k < 2 or list(shape[k:]) != target[1:]:
        return None
    return k


def _splits_back(og: OGraph, node, want) -> bool:
    """Whether a Reshape's constant target is ``want`` (the batch written as -1 or as the folded
    batch size; a 0 would copy the merged axis)."""
    if len(node.inputs) < 2 or not og.is_const(node.inputs[1]):
        return False
    target = [int(v) for v in np.asarray(og.consts[node.inputs[1]]).reshape(-1)]
    if len(target) != len(want) or target[0] not in (-1, SENTINEL, og.export_batch) or want[0] != BATCH:
        return False
    return target[1:] == [int(d) for d in want[1:]]
