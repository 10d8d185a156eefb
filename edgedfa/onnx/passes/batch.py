"""Make a Reshape target baked to the export batch size (or the folded batch) follow the batch."""

import math

import numpy as np

from ..ir import BATCH, SENTINEL, OGraph, batch_axis


def _is_batch(og, target, k, in_shape):
    """Whether entry ``k`` of a Reshape target stands for the batch size."""
    v = int(target[k])
    if v == SENTINEL or (og.export_batch is not None and v == og.export_batch):
        return True
    if v != -1:
        return False
    rest = [int(in_shape[i]) if t == 0 and i < len(in_shape) else int(t)
            for i, t in enumerate(target) if i != k]
    per_sample = math.prod(d for d in in_shape if d != BATCH)
    return all(d > 0 for d in rest) and math.prod(rest) == per_sample


def generalise_batch(og: OGraph):
    """Reshape targets: the entry at the input's batch axis becomes 0 (copy the batch)."""
    for node in og.nodes:
        if node.op_type != "Reshape" or len(node.inputs) < 2 or not og.is_const(node.inputs[1]):
            continue
        in_shape = og.shape(node.inputs[0])
        k = batch_axis(in_shape)
        target = np.asarray(og.consts[node.inputs[1]]).reshape(-1)
        if k is None or None in in_shape or k >= target.size:
            continue
        zero_copies = not node.attrs.get("allowzero", 0)
        if int(target[k]) == 0 and zero_copies:
            continue
        prefix_ok = all(int(t) == int(d) or (int(t) == 0 and zero_copies)
                        for t, d in zip(target[:k], in_shape[:k]))
        if not prefix_ok or not _is_batch(og, target, k, in_shape):
            continue
        if not zero_copies:
            if np.any(target == 0):  # literal zero-size dims: leave it alone
                continue
            node.attrs.pop("allowzero")
            node.attr_types.pop("allowzero")
        fixed = target.astype(np.int64).copy()
        fixed[k] = 0
        node.inputs[1] = og.add_const(node.name + "_shape", fixed)
        og.touch()
        return og, True
    return og, False
