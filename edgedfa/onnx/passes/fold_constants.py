"""Fold nodes whose inputs are all constant, and Shape nodes whose input shape is known.

The batch size is unknown at import time: a folded Shape writes ``SENTINEL`` for it, which
only layout ops may carry (arithmetic on it is left unfolded and reported later).
"""

import numpy as np
from onnx import helper, numpy_helper

from ..ir import BATCH, SENTINEL

MAX_ELEMENTS = 1 << 22  # do not materialise bigger constants


def _axes(node, args, pos=1):
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(args) > pos and args[pos] is not None:
        return [int(a) for a in np.asarray(args[pos]).reshape(-1)]
    return None


def _unsqueeze(node, args):
    x, axes = args[0], _axes(node, args)
    rank = x.ndim + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = np.expand_dims(x, a)
    return x


def _squeeze(node, args):
    axes = _axes(node, args)
    return np.squeeze(args[0], axis=None if axes is None else tuple(axes))


def _slice(node, args):
    x = args[0]
    if "starts" in node.attrs:  # Slice-1
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = args[1].tolist(), args[2].tolist()
        axes = args[3].tolist() if len(args) > 3 and args[3] is not None else None
        steps = args[4].tolist() if len(args) > 4 and args[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), int(st))
    return x[tuple(index)]


def _reshape(node, args):
    x = args[0]
    shape = node.attrs["shape"] if "shape" in node.attrs else args[1].tolist()
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _cast(node, args):
    dtype = helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    return args[0].astype(dtype)


def _constant_of_shape(node, args):
    value = node.attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full([int(d) for d in args[0].reshape(-1)], fill, dtype=np.asarray(fill).dtype)


def _range(node, args):
    start, limit, delta = (np.asarray(a).reshape(()) for a in args[:3])
    return np.arange(start, limit, delta).astype(np.asarray(start).dtype)


def _concat(node, args):
    return np.concatenate([np.atleast_1d(a) if a.ndim == 0 else a for a in args],
                          axis=int(node.attrs["axis"]))


def _gather(node, args):
    return np.take(args[0], args[1].astype(np.int64), axis=int(node.attrs.get("axis", 0)))


def _flatten(node, args):
    axis = int(node.attrs.get("axis", 1))
    x = args[0]
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _binary(fn):
    def fold(node, args):
        a, b = args[0], args[1]
        out = fn(a, b)
        if np.issubdtype(a.dtype, np.integer) and fn is np.divide:
            out = np.trunc(out)
        return out.astype(np.result_type(a, b)) if fn is not np.equal else out
    return fold


# Layout ops may carry the batch-size sentinel; arithmetic may not.
LAYOUT = {
    "Identity": lambda n, a: a[0],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Reshape": _reshape,
    "Transpose": lambda n, a: np.transpose(a[0], n.attrs.get("perm")),
    "Flatten": _flatten,
    "Cast": _cast,
}
ARITHMETIC = {
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _binary(np.divide), "Equal": _binary(np.equal),
    "Mod": lambda n, a: (np.fmod if n.attrs.get("fmod", 0) else np.mod)(a[0], a[1]).astype(np.result_type(*a[:2])),
    "Neg": lambda n, a: -a[0], "Sqrt": lambda n, a: np.sqrt(a[0]),
    "Reciprocal": lambda n, a: 1 / a[0], "Abs": lambda n, a: np.abs(a[0]),
    "Where": lambda n, a: np.where(a[0], a[1], a[2]),
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda n, a: a[0] * np.ones([int(d) for d in a[1]], dtype=a[0].dtype),
    "Range": _range,
    "Min": lambda n, a: np.minimum.reduce(a), "Max": lambda n, a: np.maximum.reduce(a),
}
FOLDABLE = set(LAYOUT) | set(ARITHMETIC) | {"Constant", "Shape", "Size"}


def _constant_value(node):
    a = node.attrs
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    return None


def _shape_value(og, node):
    shape = og.shape(node.inputs[0])
    if shape is None or any(d is None for d in shape):
        return None
    dims = np.array([SENTINEL if d == BATCH else d for d in shape], dtype=np.int64)
    if node.op_type == "Size":
        return None if BATCH in shape else np.array(np.prod(dims), dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
    return dims[start:end]


def _fold_one(og, node):
    if node.op_type == "Constant":
        return _constant_value(node)
    if node.op_type in ("Shape", "Size"):
        return _shape_value(og, node)
    if node.op_type not in LAYOUT and node.op_type not in ARITHMETIC:
        return None
    names = [i for i in node.inputs]
    if not all(not n or og.is_const(n) for n in names) or not names or not names[0]:
        return None
    args = [og.consts[n] if n else None for n in names]
    if node.op_type in ARITHMETIC and any(a is not None and np.issubdtype(a.dtype, np.number)
                                          and np.any(a == SENTINEL) for a in args):
        return None
    if node.op_type in ("ConstantOfShape", "Expand", "Range") and not _small(node, args):
        return None
    fn = LAYOUT.get(node.op_type) or ARITHMETIC[node.op_type]
    return np.asarray(fn(node, args))


def _small(node, args):
    try:
        if node.op_type == "Range":
            start, limit, delta = (float(np.asarray(a).reshape(())) for a in args[:3])
            return delta != 0 and abs((limit - start) / delta) < MAX_ELEMENTS
        dims = np.asarray(args[-1 if node.op_type == "Expand" else 0]).reshape(-1)
        return np.all(dims >= 0) and np.prod(dims.astype(np.float64)) < MAX_ELEMENTS
    except (TypeError, ValueError, IndexError):
        return False


def fold_constants(og):
    """Replace foldable nodes by constants."""
    changed = False
    kept = []
    for node in og.nodes:
        value = None
        if len([o for o in node.outputs if o]) == 1 and node.outputs[0]:
            try:
                value = _fold_one(og, node)
            except Exception as exc:  # numpy refuses: leave the node, it will be reported
                og.meta.setdefault("fold_errors", {})[node.name] = str(exc)[:200]
                value = None
        if value is None:
            kept.append(node)
            continue
        og.consts[node.outputs[0]] = value
        changed = True
    if changed:
        og.nodes = kept
        og.touch()
    return og, changed
