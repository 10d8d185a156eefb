"""A Softmax/LogSoftmax over the last axis at the output is absorbed into graph.meta."""

from ..ir import OGraph


def absorb_output_softmax(og: OGraph):
    """Remove the final Softmax/LogSoftmax; the graph then outputs logits."""
    node = og.producers().get(og.output_name)
    if node is None or node.op_type not in ("Softmax", "LogSoftmax") or og.meta.get(
            "output_softmax"):
        return og, False
    shape = og.shape(node.inputs[0])
    if shape is None:
        return og, False
    rank = len(shape)
    axis = int(node.attrs.get("axis", 1 if og.opset < 13 else -1))
    if (axis + rank if axis < 0 else axis) != rank - 1:
        return og, False
    og.nodes.remove(node)
    og.output_name = node.inputs[0]
    og.meta["output_softmax"] = True
    og.meta["output_softmax_op"] = node.op_type
    og.touch()
    return og, True
