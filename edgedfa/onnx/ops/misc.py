"""BatchNormalization left unfolded, pass-through ops, and Softmax away from the output."""

import numpy as np

from ..registry import register


@register("Identity", 1, 13, 14, 16, 19, 21, 23, 24, 25)
def identity(node, ctx):
    ctx.set_alias(node.outputs[0], ctx.data_input(node))


@register("Dropout", 6, 7, 10, 12, 13, 22)
def dropout(node, ctx):
    if len(node.outputs) > 1 and node.outputs[1]:
        ctx.fail(node, "the mask output of Dropout is not supported")
    ctx.set_alias(node.outputs[0], ctx.data_input(node))


@register("Softmax", 1, 11, 13)
@register("LogSoftmax", 1, 11, 13)
def softmax(node, ctx):
    ctx.fail(node, f"{node.op_type} is supported only as the last node, over the last axis "
             "(it is then recorded in graph.meta['output_softmax'] and removed)")


@register("BatchNormalization", 6, 7, 9, 14, 15)
def batch_norm(node, ctx):
    """A BatchNorm with no Conv/Dense before it: a per-channel affine Dense or 1x1 Conv."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if node.attr("training_mode", 0) or any(o for o in node.outputs[1:]):
        ctx.fail(node, "BatchNormalization in training mode is not supported")
    if node.attr("spatial", 1) != 1 and len(shape) > 2:
        ctx.fail(node, "BatchNormalization with spatial=0 is not supported")
    if ctx.batch_at(node, x) != 0 or len(shape) not in (2, 3, 4):
        ctx.fail(node, f"an unfolded BatchNormalization needs a [N, C], [N, C, L] or "
                 f"[N, C, H, W] input, got rank {len(shape)}")
    channels = shape[1]
    stats = [ctx.weight(node, i, what) for i, what in
             enumerate(("scale", "bias", "mean", "variance"), start=1)]
    if any(v.size != channels for v in stats):
        ctx.fail(node, f"scale, bias, mean and variance must each hold {channels} values")
    scale, shift = bn_affine(*stats, float(node.attr("epsilon", 1e-5)))
    if len(shape) == 2:
        ctx.emit(node, "Dense", [x], [node.outputs[0]], {},
                 {"W": np.diag(scale), "B": shift})
        return
    spatial = len(shape) - 2
    weight = scale.reshape((channels, 1) + (1,) * spatial)
    attrs = {"strides": [1] * spatial, "pads": [0] * 2 * spatial,
             "dilations": [1] * spatial, "group": channels}
    ctx.emit(node, "Conv", [x], [node.outputs[0]], attrs, {"W": weight, "B": shift})


def bn_affine(gamma, beta, mean, var, eps):
    """BatchNorm in inference as y = scale * x + shift, per channel."""
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1)
                              for v in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale
