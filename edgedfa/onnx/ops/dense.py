"""Gemm and MatMul with a constant weight become Dense (a constant Add after one becomes its bias:
``onnx/affine.py``)."""

import numpy as np

from ..registry import register


@register("Gemm", 6, 7, 9, 11, 13)
def gemm(node, ctx):
    a = ctx.data_input(node, 0)
    w = ctx.weight(node, 1, "weight B")
    if w.ndim != 2:
        ctx.fail(node, f"the weight must be 2-D, got shape {w.shape}")
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    weight = alpha * (w if node.attr("transB", 0) else w.T)  # (out, in)
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        c = ctx.weight(node, 2, "bias C")
        bias = beta * _as_bias(ctx, node, c, weight.shape[0])
    x = a
    if node.attr("transA", 0):
        shape = ctx.shape(a)
        if shape is None or len(shape) != 2:
            ctx.fail(node, "transA=1 needs a 2-D input")
        x = node.outputs[0] + "__transposed_input"
        ctx.emit(node, "Transpose", [a], [x], {"perm": [1, 0]}, suffix="__transpose")
    _dense(ctx, node, x, weight, bias, check=not node.attr("transA", 0))


@register("MatMul", 1, 9, 13)
def matmul(node, ctx):
    a = ctx.data_input(node, 0)
    w = ctx.weight(node, 1, "second operand")
    if w.ndim != 2:
        ctx.fail(node, f"only a 2-D constant second operand is supported, got {w.shape}")
    _dense(ctx, node, a, w.T.copy(), None)


def _dense(ctx, node, x, weight, bias, check=True):
    shape = ctx.shape(x)
    if check and shape and shape[-1] != weight.shape[1]:
        ctx.fail(node, f"input features {shape[-1]} do not match the weight {weight.shape}")
    params = {"W": weight}
    if bias is not None:
        params["B"] = bias
    ctx.emit(node, "Dense", [x], [node.outputs[0]], {}, params)


def _as_bias(ctx, node, c, out):
    """A constant broadcast over the last axis as a (out,) vector, or a clear error."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(out, float(c.reshape(-1)[0]))
    if c.shape[-1] == out and c.size == out:
        return c.reshape(out).copy()
    ctx.fail(node, f"a constant of shape {c.shape} is not a bias over {out} features "
             "(a bias that depends on the batch position is not supported)")
