"""Conv and pooling (1-d or 2-d), with auto_pad and ceil_mode made explicit pads."""

import math

import numpy as np

from ..affine import emit_affine
from ..registry import register


def _spatial(ctx, node, x):
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0 or len(shape) not in (3, 4):
        ctx.fail(node, f"only 1-d or 2-d {node.op_type} on [N, C, L] or [N, C, H, W] inputs "
                 f"is supported, got a rank-{len(shape)} input")
    return shape[2:]


def _pads(ctx, node, size, kernel, strides, dilations):
    """Explicit (begin..., end...) pads, resolving auto_pad."""
    rank = len(size)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * 2 * rank))
        if len(pads) != 2 * rank:
            ctx.fail(node, f"pads {pads} do not match {rank} spatial dims")
        return pads
    if auto == "VALID":
        return [0] * 2 * rank
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        ctx.fail(node, f"unknown auto_pad {auto!r}")
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _check_fits(ctx, node, size, kernel, strides, dilations, pads):
    rank = len(size)
    if not len(kernel) == len(strides) == len(dilations) == rank or len(pads) != 2 * rank:
        ctx.fail(node, f"kernel {kernel}, strides {strides}, dilations {dilations} and pads "
                 f"{pads} do not all fit {rank} spatial dims")
    for i, (n, k, s, d) in enumerate(zip(size, kernel, strides, dilations)):
        if s < 1 or d < 1 or k < 1 or n + pads[i] + pads[rank + i] < (k - 1) * d + 1:
            ctx.fail(node, f"the window (kernel {kernel}, strides {strides}, dilations "
                     f"{dilations}) does not fit the input {list(size)} with pads {pads}")


@register("Conv", 1, 11, 22)
def conv(node, ctx):
    x = ctx.data_input(node)
    w = ctx.weight(node, 1, "weight W")
    size = _spatial(ctx, node, x)
    rank = len(size)
    if w.ndim != rank + 2:
        ctx.fail(node, f"weight shape {w.shape} does not fit a {rank}-d input")
    kernel = list(w.shape[2:])
    if list(node.attr("kernel_shape", kernel)) != kernel:
        ctx.fail(node, f"kernel_shape {node.attr('kernel_shape')} != weight {kernel}")
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    group = int(node.attr("group", 1))
    channels = ctx.shape(x)[1]
    if channels != w.shape[1] * group or w.shape[0] % group:
        ctx.fail(node, f"{channels} input channels do not fit weight {w.shape} with group "
                 f"{group}")
    params = {"W": w}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["B"] = ctx.weight(node, 2, "bias B").reshape(-1)
        if params["B"].size != w.shape[0]:
            ctx.fail(node, f"bias of {params['B'].size} values for {w.shape[0]} channels")
    pads = _pads(ctx, node, size, kernel, strides, dilations)
    _check_fits(ctx, node, size, kernel, strides, dilations, pads)
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "group": group}
    ctx.emit(node, "Conv", [x], [node.outputs[0]], attrs, params)


def _pool(node, ctx, op):
    x = ctx.data_input(node)
    size = _spatial(ctx, node, x)
    rank = len(size)
    if len(node.outputs) > 1 and node.outputs[1]:
        ctx.fail(node, "the Indices output of MaxPool is not supported")
    kernel = list(node.attr("kernel_shape", []))
    if len(kernel) != rank:
        ctx.fail(node, f"kernel_shape {kernel} does not match {rank} spatial dims")
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    if any(d != 1 for d in dilations):
        ctx.fail(node, f"dilated pooling (dilations {dilations}) is not supported")
    pads = _pads(ctx, node, size, kernel, strides, dilations)
    _check_fits(ctx, node, size, kernel, strides, dilations, pads)
    include = int(node.attr("count_include_pad", 0))
    if node.attr("ceil_mode", 0):
        pads = _ceil_pads(ctx, node, size, kernel, strides, pads, op == "AveragePool" and
                          include)
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    if op == "AveragePool":
        attrs["count_include_pad"] = include
    ctx.emit(node, op, [x], [node.outputs[0]], attrs)


def _ceil_pads(ctx, node, size, kernel, strides, pads, strict):
    """ceil_mode=1 as extra end padding (exact for MaxPool and count_include_pad=0)."""
    rank = len(size)
    pads = list(pads)
    for i, (n, k, s) in enumerate(zip(size, kernel, strides)):
        span = n + pads[i] + pads[rank + i] - k
        out = math.ceil(span / s) + 1
        if (out - 1) * s >= n + pads[i]:
            out -= 1  # the last window must start inside the input or its begin pad
        extra = max((out - 1) * s + k - (n + pads[i] + pads[rank + i]), 0)
        if extra and strict:
            ctx.fail(node, "ceil_mode=1 with count_include_pad=1 is not supported")
        pads[rank + i] += extra
    return pads


@register("MaxPool", 1, 8, 10, 11, 12, 22)
def max_pool(node, ctx):
    _pool(node, ctx, "MaxPool")


@register("AveragePool", 1, 7, 10, 11, 19, 22)
def average_pool(node, ctx):
    _pool(node, ctx, "AveragePool")


@register("GlobalAveragePool", 1, 22)
def global_average_pool(node, ctx):
    x = ctx.data_input(node)
    _spatial(ctx, node, x)
    ctx.emit(node, "GlobalAveragePool", [x], [node.outputs[0]])


@register("GlobalMaxPool", 1, 22)
def global_max_pool(node, ctx):
    """A MaxPool whose one window is the whole of each channel."""
    x = ctx.data_input(node)
    size = [int(d) for d in _spatial(ctx, node, x)]
    ctx.emit(node, "MaxPool", [x], [node.outputs[0]], _whole_window(size))


def _whole_window(size):
    return {"kernel_shape": list(size), "strides": list(size), "pads": [0] * 2 * len(size)}


@register("ReduceMean", 1, 11, 13, 18)
def reduce_mean(node, ctx):
    """A mean over non-batch axes is a GlobalAveragePool (``_reduce``)."""
    _reduce(node, ctx, "GlobalAveragePool", node.outputs[0])


@register("ReduceMax", 1, 11, 12, 13, 18, 20)
def reduce_max(node, ctx):
    """A maximum over non-batch axes (``torch.max(x, dim)[0]``, ``amax``, dynamo's adaptive max
    pooling to one) is a MaxPool whose window is the whole of the reduced axes (``_reduce``)."""
    _reduce(node, ctx, "MaxPool", node.outputs[0])


@register("ReduceSum", 1, 11, 13)
def reduce_sum(node, ctx):
    """A sum over non-batch axes is their mean times their count ``n``: a GlobalAveragePool whose
    mean is scaled by ``2^k``, ``k = round(log2 n)`` (a free move of its format's binary point,
    datapath §8.5: the layers keep the model's own parameters), and the rest ``n / 2^k`` (1 for a
    power of two, else within [0.71, 1.41]) a constant scale the Dense or Conv next to it takes
    (``onnx/affine.py``)."""
    _, shape, axes = _reduction(node, ctx)
    n = 1 if axes is None else math.prod(int(shape[a]) for a in axes)
    k = round(math.log2(n))
    rest = n / 2.0 ** k
    out = node.outputs[0] if rest == 1 else node.outputs[0] + "__mean"
    _reduce(node, ctx, "GlobalAveragePool", out, {"scale_log2": k} if k else {})
    if rest != 1:
        emit_affine(ctx, node, out, rest, 0.0, ctx.known_shape(node, node.outputs[0]))


def _reduce(node, ctx, pool, out_name, pool_attrs=None) -> None:
    """``node`` (a reduction over non-batch axes) as ``pool`` over the spatial axes of [N, C, ...]
    directly (then Flatten if keepdims=0), or over any other set (a sequence's time axis of
    [N, T, C], ...) with the reduced axes moved last by a Transpose and merged into [N, K, R] by a
    Reshape, pooled, and reshaped to the output's shape; written to ``out_name``."""
    x, shape, axes = _reduction(node, ctx)
    rank = len(shape)
    if axes is None:
        ctx.emit(node, "Reshape", [x], [out_name], {"shape": [-1] + [int(d) for d in shape[1:]]})
        return
    keepdims = node.attr("keepdims", 1)
    count = math.prod(int(shape[a]) for a in axes)
    if rank in (3, 4) and axes == list(range(2, rank)):
        pooled = out_name if keepdims else out_name + "__pooled"
        _emit_pool(ctx, node, pool, x, pooled, [int(d) for d in shape[2:]], "" if keepdims else "__pool", pool_attrs)
        if not keepdims:
            ctx.emit(node, "Flatten", [pooled], [out_name], {"axis": 1})
        return
    kept = [a for a in range(1, rank) if a not in axes]
    perm = [0] + kept + axes
    src = x
    if perm != list(range(rank)):
        src = out_name + "__moved"
        ctx.emit(node, "Transpose", [x], [src], {"perm": perm}, suffix="__move")
    merged, pooled = out_name + "__merged", out_name + "__pooled"
    k = math.prod(int(shape[a]) for a in kept)
    ctx.emit(node, "Reshape", [src], [merged], {"shape": [-1, k, count]}, suffix="__merge")
    _emit_pool(ctx, node, pool, merged, pooled, [count], "__pool", pool_attrs)
    out = [1 if a in axes else int(shape[a]) for a in range(1, rank)] if keepdims else [int(shape[a]) for a in kept]
    ctx.emit(node, "Reshape", [pooled], [out_name], {"shape": [-1] + out})


def _reduction(node, ctx):
    """(data input, its shape, the sorted reduced axes or None when none) of a reduction over
    non-batch axes; one over the batch is refused naming the node."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    axes = _reduced_axes(node, ctx, len(shape))
    if axes is not None and (ctx.batch_at(node, x) != 0 or 0 in axes):
        ctx.fail(node, f"{node.op_type} over axes {axes} of a rank-{len(shape)} tensor would reduce over the "
                 "batch dimension (supported: reductions over non-batch axes)")
    return x, shape, axes


def _reduced_axes(node, ctx, rank):
    """The sorted axes a Reduce* node reduces, or None when it reduces none (an identity)."""
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1]:
        value = ctx.const(node.inputs[1])
        if value is None:
            ctx.fail(node, "the axes input must be a constant")
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    else:
        axes = []
    if not axes and node.attr("noop_with_empty_axes", 0):
        return None
    return sorted({a + rank if a < 0 else a for a in axes} if axes else set(range(rank)))


def _emit_pool(ctx, node, pool, src, dst, size, suffix, extra=None):
    attrs = dict(_whole_window(size) if pool == "MaxPool" else {}, **(extra or {}))
    ctx.emit(node, pool, [src], [dst], attrs, suffix=suffix)
