"""Fold an inference BatchNormalization into the Conv, Gemm or MatMul right before it."""

import numpy as np

from ..ir import OGraph
from ..ops.misc import bn_affine


def _bn_params(og, bn):
    names = bn.inputs[1:5]
    if len(names) != 4 or not all(og.is_const(n) for n in names):
        return None
    if bn.attrs.get("training_mode", 0) or any(o for o in bn.outputs[1:]):
        return None
    values = [np.asarray(og.consts[n], np.float64).reshape(-1) for n in names]
    if len({v.size for v in values}) != 1:
        return None
    return bn_affine(*values, float(bn.attrs.get("epsilon", 1e-5)))


def _fold_conv(og, conv, scale, shift):
    if len(conv.inputs) < 2 or not og.is_const(conv.inputs[1]):
        return False
    w = np.asarray(og.consts[conv.inputs[1]], np.float64)
    if w.shape[0] != scale.size:
        return False
    b = np.zeros(w.shape[0])
    if len(conv.inputs) > 2 and conv.inputs[2]:
        if not og.is_const(conv.inputs[2]):
            return False
        b = np.asarray(og.consts[conv.inputs[2]], np.float64).reshape(-1)
    w = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    conv.inputs = [conv.inputs[0], og.add_const(conv.name + "_W_bn", w),
                   og.add_const(conv.name + "_B_bn", (b * scale + shift).astype(np.float32))]
    return True


def _dense_weight(og, node):
    """(W (out, in), bias (out,)) of a Gemm or 2-D MatMul with constant weights, or None."""
    if len(node.inputs) < 2 or not og.is_const(node.inputs[1]):
        return None
    w = np.asarray(og.consts[node.inputs[1]], np.float64)
    shape = og.shape(node.inputs[0])
    if w.ndim != 2 or shape is None or len(shape) != 2:
        return None
    if node.op_type == "MatMul":
        return w.T, np.zeros(w.shape[1])
    if node.attrs.get("transA", 0):
        return None
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    w = alpha * (w if node.attrs.get("transB", 0) else w.T)
    b = np.zeros(w.shape[0])
    if len(node.inputs) > 2 and node.inputs[2]:
        c = og.consts.get(node.inputs[2])
        if c is None or np.asarray(c).size not in (1, w.shape[0]):
            return None
        b = b + beta * np.asarray(c, np.float64).reshape(-1)
    return w, b


def _fold_dense(og, node, scale, shift):
    found = _dense_weight(og, node)
    if found is None or found[0].shape[0] != scale.size:
        return False
    w, b = found
    w_name = og.add_const(node.name + "_W_bn", (w * scale[:, None]).astype(np.float32))
    b_name = og.add_const(node.name + "_B_bn", (b * scale + shift).astype(np.float32))
    node.op_type = "Gemm"
    node.inputs = [node.inputs[0], w_name, b_name]
    node.attrs, node.attr_types = {}, {}
    node.set_attr("transB", 1, 2)  # AttributeProto.INT
    return True


def fold_batchnorm(og: OGraph):
    """Conv/Gemm/MatMul -> BatchNormalization becomes one node with scaled weights."""
    producers = og.producers()
    for bn in og.nodes:
        if bn.op_type != "BatchNormalization":
            continue
        prev = producers.get(bn.inputs[0])
        if prev is None or og.uses(bn.inputs[0]) != 1:
            continue
        affine = _bn_params(og, bn)
        if affine is None:
            continue
        if prev.op_type == "Conv":
            done = _fold_conv(og, prev, *affine)
        elif prev.op_type in ("Gemm", "MatMul"):
            done = _fold_dense(og, prev, *affine)
        else:
            done = False
        if done:
            og.nodes.remove(bn)
            prev.outputs = [bn.outputs[0]]
            og.touch()
            return og, True
    return og, False
