"""Gemm and MatMul with a constant weight become Dense (a constant Add after one becomes its bias:
``onnx/affine.py``); a MatMul of two data tensors (attention) is the canonical MatMul."""

import numpy as np

from ..registry import register
from .tensor import _show


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
    if len(node.inputs) > 1 and node.inputs[1] and ctx.const(node.inputs[0]) is None \
            and ctx.const(node.inputs[1]) is None:
        return _data_matmul(node, ctx, node.inputs[0], node.inputs[1])
    if ctx.const(node.inputs[0]) is not None:
        ctx.fail(node, "a constant first operand (W @ x) is not supported: a Dense takes x @ W "
                 "(transpose the product, or write the weight second)")
    a = ctx.data_input(node, 0)
    w = ctx.weight(node, 1, "second operand")
    if w.ndim != 2:
        ctx.fail(node, f"only a 2-D constant second operand is supported, got {w.shape}")
    _dense(ctx, node, a, w.T.copy(), None)


def _data_matmul(node, ctx, a, b):
    """``a @ b`` of two data tensors: both carry the batch on axis 0, have rank >= 3 and the same
    leading axes (batch, heads, ...); the last axis of ``a`` meets the one before last of ``b``."""
    sa, sb = ctx.known_shape(node, a), ctx.known_shape(node, b)
    if len(sa) < 3 or len(sb) < 3:
        ctx.fail(node, f"a MatMul of two data tensors needs both of rank >= 3 ([N, ..., M, K] @ "
                 f"[N, ..., K, P]), got shapes {_show(sa)} and {_show(sb)}")
    if ctx.batch_at(node, a) != 0 or ctx.batch_at(node, b) != 0:
        ctx.fail(node, "a MatMul of two data tensors needs the batch on axis 0 of both operands")
    if len(sa) != len(sb) or tuple(sa[1:-2]) != tuple(sb[1:-2]):
        ctx.fail(node, f"the leading axes of {_show(sa)} and {_show(sb)} differ; a MatMul of two data "
                 "tensors does not broadcast them")
    if sa[-1] != sb[-2]:
        ctx.fail(node, f"shapes {_show(sa)} and {_show(sb)} do not chain (K {sa[-1]} against {sb[-2]})")
    ctx.emit(node, "MatMul", [a, b], [node.outputs[0]])


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
