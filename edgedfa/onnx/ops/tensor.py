"""Layout ops (Flatten, Reshape, Transpose, Squeeze, Unsqueeze), merges (Add, Sum, Concat, Mul) and
constant scales and offsets (Mul, Div, Add, Sub by a constant: ``onnx/affine.py`` folds them)."""

import math

import numpy as np

from ...errors import EdgeDFAError
from ...layers.pad import check_pads
from ..ir import BATCH
from ..registry import register
from ..affine import emit_affine, legacy_align


@register("Flatten", 1, 9, 11, 13, 21, 23, 24, 25)
def flatten(node, ctx):
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if ctx.batch_at(node, x) != 0 or axis < 1:
        ctx.fail(node, f"Flatten(axis={axis}) would merge the batch dimension")
    if axis == 1:
        ctx.emit(node, "Flatten", [x], [node.outputs[0]], {"axis": 1})
    elif math.prod(shape[1:axis]) == 1:
        rest = int(math.prod(shape[axis:]))
        ctx.emit(node, "Reshape", [x], [node.outputs[0]], {"shape": [-1, rest]})
    else:
        ctx.fail(node, f"Flatten(axis={axis}) would merge the batch dimension")


@register("Reshape", 5, 13, 14, 19, 21, 23, 24, 25)
def reshape(node, ctx):
    x = ctx.data_input(node)
    ctx.known_shape(node, x)
    k = ctx.batch_at(node, x)
    out = ctx.shape(node.outputs[0])
    if out is None or any(d is None for d in out) or k >= len(out) or out[k] != BATCH or \
            list(out[:k]) != list(ctx.shape(x)[:k]):
        target = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
        ctx.fail(node, f"cannot resolve the Reshape target {_show(target)} for input shape "
                 f"{_show(ctx.shape(x))} keeping the batch dimension in place; reshapes "
                 "that merge the batch with another axis are not supported")
    shape = [-1 if d == BATCH else int(d) for d in out]
    ctx.emit(node, "Reshape", [x], [node.outputs[0]], {"shape": shape})


def _show(v):
    if v is None:
        return "(not constant)"
    dims = np.asarray(v, object).ravel()
    return "[" + ", ".join("N" if d == BATCH else str(d) for d in dims) + "]"


@register("Transpose", 1, 13, 21, 23, 24, 25)
def transpose(node, ctx):
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    perm = [int(p) for p in node.attr("perm", list(range(len(shape)))[::-1])]
    if sorted(perm) != list(range(len(shape))):
        ctx.fail(node, f"perm {perm} is not a permutation of {len(shape)} axes")
    ctx.emit(node, "Transpose", [x], [node.outputs[0]], {"perm": perm})


def _axes(node, ctx):
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1]:
        value = ctx.const(node.inputs[1])
        if value is None:
            ctx.fail(node, "the axes input must be a constant")
        return [int(a) for a in np.asarray(value).reshape(-1)]
    return None


@register("Squeeze", 1, 11, 13, 21, 23, 24, 25)
def squeeze(node, ctx):
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    axes = _axes(node, ctx)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = sorted(a + len(shape) if a < 0 else a for a in axes)
    if any(shape[a] != 1 for a in axes):
        ctx.fail(node, f"cannot squeeze axes {axes} of shape {_show(shape)} (the batch "
                 "dimension and axes longer than 1 stay)")
    ctx.emit(node, "Squeeze", [x], [node.outputs[0]], {"axes": axes})


@register("Unsqueeze", 1, 11, 13, 21, 23, 24, 25)
def unsqueeze(node, ctx):
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    axes = _axes(node, ctx)
    if not axes:
        ctx.fail(node, "Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    ctx.emit(node, "Unsqueeze", [x], [node.outputs[0]], {"axes": axes})


@register("Gather", 1, 11, 13)
def gather(node, ctx):
    """Constant indices into a data tensor along an axis other than the batch's (a time step of
    a recurrent output, a layer and direction of h_n): a data move."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, f"Gather from {x!r} whose batch is not on axis 0 (shape {_show(shape)})")
    value = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if value is None:
        ctx.fail(node, "the indices (input 1) must be a constant")
    idx = np.asarray(value)
    axis = int(node.attr("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 < axis < len(shape):
        ctx.fail(node, f"Gather along axis {axis} of shape {_show(shape)}: only axes other than the batch's")
    if idx.ndim > 1 or idx.dtype.kind not in "iu":
        ctx.fail(node, f"indices of shape {list(idx.shape)}: a scalar or a list of integers is supported")
    n = int(shape[axis])
    flat = [int(i) + n if int(i) < 0 else int(i) for i in idx.reshape(-1)]
    if any(not 0 <= i < n for i in flat) or len(set(flat)) != len(flat):
        ctx.fail(node, f"indices {idx.reshape(-1).tolist()} on an axis of length {n}: each must lie in"
                 f" -{n}..{n - 1}, none twice")
    attrs = {"axis": axis, "indices": flat[0] if idx.ndim == 0 else flat}
    ctx.emit(node, "Gather", [x], [node.outputs[0]], attrs)


@register("Slice", 1, 10, 11, 13)
def slice_(node, ctx):
    """``x[:, a:b:s]`` on data with constant bounds: a Gather of the selected positions along each
    sliced axis (the batch axis only in full)."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if node.attr("starts") is not None:  # Slice-1: attributes
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = node.attr("axes"), None
    else:
        starts, ends, axes, steps = (_const_ints(node, ctx, i, what) for i, what in
                                     ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    picks = {}
    for a, b, axis, step in zip(starts, ends, axes, steps):
        axis = axis + len(shape) if axis < 0 else axis
        if axis == 0:
            if range(*slice(a, b, step).indices(1 << 62)) != range(0, 1 << 62):
                ctx.fail(node, "Slice of the batch axis is not supported (only non-batch axes)")
            continue
        picks[axis] = list(range(*slice(a, b, step).indices(int(shape[axis]))))
    _gathers(node, ctx, x, shape, picks, node.outputs[0])


def _const_ints(node, ctx, index, what):
    if index >= len(node.inputs) or not node.inputs[index]:
        return None
    value = ctx.const(node.inputs[index])
    if value is None:
        ctx.fail(node, f"the {what} (input {index}) must be a constant")
    return [int(v) for v in np.asarray(value).reshape(-1)]


@register("Split", 1, 2, 11, 13, 18)
def split(node, ctx):
    """``torch.split`` / ``chunk`` on data along a non-batch axis: one Gather of consecutive
    positions per output."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    axis = int(node.attr("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 0:  # ``_gathers`` holds the batch on axis 0
        ctx.fail(node, "Split of the batch axis is not supported (only non-batch axes)")
    n, parts = int(shape[axis]), len(node.outputs)
    sizes = node.attr("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1]:
        sizes = _const_ints(node, ctx, 1, "split")
    if sizes is None:  # equal parts, the last one smaller (Split-18's num_outputs)
        size = -(-n // parts)
        sizes = [min(size, n - i * size) for i in range(parts)]
    if len(sizes) != parts or sum(sizes) != n or min(sizes) < 0:
        ctx.fail(node, f"split sizes {list(sizes)} do not cut an axis of {n} into {parts} outputs")
    start = 0
    for out, size in zip(node.outputs, sizes):
        if out:
            _gathers(node, ctx, x, shape, {axis: list(range(start, start + size))}, out, suffix=f"__{out}")
        start += size


def _gathers(node, ctx, x, shape, picks, out, suffix=""):
    """``x`` at the positions ``picks`` (axis -> indices) along each axis: a Gather per axis that
    changes, or a Reshape to the same shape when none does."""
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, f"{node.op_type} of {x!r} whose batch is not on axis 0 (shape {_show(shape)})")
    moves = [(a, p) for a, p in sorted(picks.items()) if p != list(range(int(shape[a])))]
    if any(not p for _, p in moves):
        ctx.fail(node, f"{node.op_type} selects nothing along an axis (an empty tensor)")
    if not moves:
        ctx.emit(node, "Reshape", [x], [out], {"shape": [-1] + [int(d) for d in shape[1:]]}, suffix=suffix)
        return
    src = x
    for k, (axis, idx) in enumerate(moves):
        dst = out if k == len(moves) - 1 else f"{out}__axis{axis}"
        ctx.emit(node, "Gather", [src], [dst], {"axis": axis, "indices": idx}, suffix=f"{suffix}__axis{axis}")
        src = dst


@register("Pad", 1, 2, 11, 13, 18, 19, 21, 23, 24, 25)
def pad(node, ctx):
    """A Pad on data that the Conv after it cannot take (reflect, edge, wrap, a non-zero
    constant, no Conv after it; passes/pad.py merges the rest): the data move ``Pad``."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, f"Pad of {x!r} whose batch is not on axis 0 (shape {_show(shape)})")
    rank = len(shape)
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if node.attr("pads") is not None or node.attr("paddings") is not None:  # Pad-1, Pad-2: attributes
        try:
            pads = [int(p) for p in np.atleast_1d(node.attr("pads", node.attr("paddings")))]
            value, axes = float(node.attr("value", 0.0)), None
        except (TypeError, ValueError):
            ctx.fail(node, "the pads attribute must be a list of ints and the value a float")
    else:
        pads, axes = _const_ints(node, ctx, 1, "pads"), _const_ints(node, ctx, 3, "axes")
        if pads is None:
            ctx.fail(node, "the pads (input 1) are missing")
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2]:
            v = ctx.const(node.inputs[2])
            if v is None:
                ctx.fail(node, "the constant_value (input 2) must be a constant")
            value = float(np.asarray(v, dtype=np.float64).reshape(-1)[0]) if np.size(v) else 0.0
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes) or sorted(set(axes)) != sorted(axes) or not all(0 <= a < rank for a in axes):
        ctx.fail(node, f"pads {pads} do not match axes {axes} of a rank-{rank} input")
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begin[a], end[a] = pads[k], pads[k + len(axes)]
    if begin[0] or end[0]:
        ctx.fail(node, f"Pad of the batch axis (pads {pads}) is not supported (only the other axes)")
    try:
        check_pads(mode, [int(d) for d in shape[1:]], begin[1:] + end[1:], "Pad")
    except EdgeDFAError as exc:
        ctx.fail(node, str(exc).split(": ", 1)[1])
    attrs = {"mode": mode, "pads": begin[1:] + end[1:]}
    if mode == "constant":
        attrs["value"] = value
    ctx.emit(node, "Pad", [x], [node.outputs[0]], attrs)


@register("Concat", 4, 11, 13)
def concat(node, ctx):
    names = [i for i in node.inputs if i]
    for i, name in enumerate(names):
        if ctx.const(name) is not None:
            ctx.fail(node, f"constant input {name!r} to Concat is not supported")
    shape = ctx.known_shape(node, names[0])
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    batch = {ctx.batch_at(node, n) for n in names}
    if len(batch) != 1 or axis in batch:
        ctx.fail(node, f"Concat over axis {axis} needs every input's batch on another axis")
    ctx.emit(node, "Concat", names, [node.outputs[0]], {"axis": axis})


@register("Add", 6, 7, 13, 14)
def add(node, ctx):
    a, b = node.inputs[0], node.inputs[1]
    if _constant_operand(node, ctx, _offset, _offset):
        return
    if node.attr("broadcast", 0) and ctx.shape(a) != ctx.shape(b):
        ctx.fail(node, "Add-6 with legacy broadcasting between two data tensors is not "
                 "supported")
    _merge(node, ctx, [a, b])


@register("Sub", 6, 7, 13, 14)
def sub(node, ctx):
    """x - c and c - x are a constant offset and scale; the difference of two data tensors is an
    Add whose second operand is subtracted (attr ``signs``)."""
    if _constant_operand(node, ctx, lambda c: (1.0, -c), lambda c: (-1.0, c)):
        return
    a, b = node.inputs[0], node.inputs[1]
    if node.attr("broadcast", 0) and ctx.shape(a) != ctx.shape(b):
        ctx.fail(node, "Sub-6 with legacy broadcasting between two data tensors is not supported")
    _merge(node, ctx, [a, b], attrs={"signs": [1, -1]})


@register("Div", 6, 7, 13, 14)
def div(node, ctx):
    """x / c is a constant scale; dividing by data is not a layer the engine has."""
    c = ctx.const(node.inputs[1])
    if ctx.const(node.inputs[0]) is not None or c is None:
        ctx.fail(node, "Div is supported only as data divided by a constant")
    if np.any(np.asarray(c) == 0):
        ctx.fail(node, "division by a constant that holds a zero")
    _constant_operand(node, ctx, lambda c: (1.0 / c, 0.0), None)


@register("Neg", 6, 13)
def neg(node, ctx):
    """-x is a constant scale of -1 (``nn.Softmin``'s Softmax(-x) after a classifier's Dense)."""
    emit_affine(ctx, node, ctx.data_input(node), -1.0, 0.0)


def _offset(c):
    return 1.0, c


def _scale(c):
    return c, 0.0


@register("Mul", 6, 7, 13, 14)
def mul(node, ctx):
    """The product of two data tensors (a gate, PyTorch's SiLU x * sigmoid(x)), or a constant
    scale (folded into the Dense or Conv next to it)."""
    a, b = node.inputs[0], node.inputs[1]
    if _constant_operand(node, ctx, _scale, _scale):
        return
    if node.attr("broadcast", 0) and ctx.shape(a) != ctx.shape(b):
        ctx.fail(node, "Mul-6 with legacy broadcasting between two data tensors is not supported")
    _merge(node, ctx, [a, b], "Mul")


def _constant_operand(node, ctx, data_first, const_first) -> bool:
    """Whether one operand of a binary node is constant; then the node is written as
    y = x * scale + offset, (scale, offset) = data_first(c) for op(x, c), const_first(c) for op(c, x)."""
    x, y = node.inputs[0], node.inputs[1]
    cx, cy = ctx.const(x), ctx.const(y)
    if cx is None and cy is None:
        return False
    if cx is not None and cy is not None:
        ctx.fail(node, f"{node.op_type} of two constants was not folded")
    data, c = (y, cx) if cx is not None else (x, cy)
    c = legacy_align(node, c, len(ctx.known_shape(node, data)))
    scale, offset = (const_first if cx is not None else data_first)(c)
    emit_affine(ctx, node, data, scale, offset)
    return True


@register("Sum", 6, 8, 13)
def sum_(node, ctx):
    names = [i for i in node.inputs if i]
    if any(ctx.const(n) is not None for n in names):
        ctx.fail(node, "Sum with a constant input is not supported")
    if len(names) == 1:
        ctx.set_alias(node.outputs[0], names[0])
        return
    _merge(node, ctx, names)


def _merge(node, ctx, names, op="Add", attrs=None):
    shapes = [ctx.known_shape(node, n) for n in names]
    if len({ctx.batch_at(node, n) for n in names}) != 1 or len({len(s) for s in shapes}) != 1:
        ctx.fail(node, f"inputs of shapes {[_show(s) for s in shapes]} do not line up on "
                 "the batch dimension")
    ctx.emit(node, op, names, [node.outputs[0]], attrs or {})
