"""Recurrent-layer patterns: zero initial states, and picking a step or a layer by Gather."""

import math

import numpy as np

from ..ir import BATCH, OGraph, ONode

RECURRENT = ("RNN", "GRU", "LSTM")
_STATE_INPUTS = {"RNN": (5,), "GRU": (5,), "LSTM": (5, 6)}


def _is_zero(og, name, producers, depth=0):
    """Whether tensor ``name`` is all zeros whatever the batch size."""
    if og.is_const(name):
        return not np.any(og.consts[name])
    node = producers.get(name)
    if node is None or depth > 8:
        return False
    if node.op_type == "ConstantOfShape":
        value = node.attrs.get("value")
        from onnx import numpy_helper
        return value is None or not np.any(numpy_helper.to_array(value))
    if node.op_type in ("Expand", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
                        "Identity", "Cast", "Tile"):
        return _is_zero(og, node.inputs[0], producers, depth + 1)
    return False


def drop_zero_initial_state(og: OGraph):
    """An initial_h/initial_c that is all zeros is the same as none."""
    producers = og.producers()
    for node in og.nodes:
        for i in _STATE_INPUTS.get(node.op_type, ()):
            if i < len(node.inputs) and node.inputs[i] and _is_zero(og, node.inputs[i],
                                                                     producers):
                node.inputs[i] = ""
                og.touch()
                return og, True
    return og, False


def _gather_index(og, node):
    """(axis, scalar index) of a Gather with a constant scalar index, or None."""
    if node.op_type != "Gather" or len(node.inputs) < 2 or not og.is_const(node.inputs[1]):
        return None
    index = np.asarray(og.consts[node.inputs[1]])
    if index.ndim != 0 or og.is_const(node.inputs[0]):
        return None
    return int(node.attrs.get("axis", 0)), int(index)


def _squeeze_node(og, name, x, axis, out):
    if og.opset >= 13:
        return ONode(name, "Squeeze", [x, og.add_const(name + "_axes", np.array([axis]))],
                     [out])
    node = ONode(name, "Squeeze", [x], [out])
    node.set_attr("axes", [axis], 7)  # AttributeProto.INTS
    return node


def gather_single(og: OGraph):
    """Gather of one index on a length-1 axis is a Squeeze; on a Concat, pick the part."""
    producers = og.producers()
    for pos, node in enumerate(og.nodes):
        found = _gather_index(og, node)
        shape = og.shape(node.inputs[0])
        if found is None or shape is None:
            continue
        axis, index = found
        axis = axis + len(shape) if axis < 0 else axis
        src = node.inputs[0]
        concat = producers.get(src)
        if shape[axis] != 1 and concat is not None and concat.op_type == "Concat":
            src = _concat_part(og, concat, axis, index, shape)
            if src is None:
                continue
        elif shape[axis] != 1:
            continue
        og.nodes[pos] = _squeeze_node(og, node.name, src, axis, node.outputs[0])
        og.touch()
        return og, True
    return og, False


def _concat_part(og, concat, axis, index, shape):
    """The length-1 Concat input that Gather(index) on ``axis`` selects, or None."""
    cat_axis = int(concat.attrs.get("axis", 0))
    if (cat_axis + len(shape) if cat_axis < 0 else cat_axis) != axis or shape[axis] is None:
        return None
    index = index + shape[axis] if index < 0 else index
    start = 0
    for part in concat.inputs:
        part_shape = og.shape(part)
        if part_shape is None or part_shape[axis] is None:
            return None
        if start <= index < start + part_shape[axis]:
            return part if part_shape[axis] == 1 else None
        start += part_shape[axis]
    return None


def last_step_to_hidden(og: OGraph):
    """Gather of the last time step of a recurrent output Y reads Y_h instead.

    Follows Transpose/Squeeze/Unsqueeze/Reshape nodes between Y and the Gather, tracking the
    time axis, then rebuilds the same chain on Y_h (which is Y at its last step).
    """
    producers = og.producers()
    for pos, node in enumerate(og.nodes):
        found = _gather_index(og, node)
        if found is None:
            continue
        chain = _trace_time_axis(og, producers, node.inputs[0], found[0])
        if chain is None:
            continue
        rnn, steps, links = chain
        index = found[1] + steps if found[1] < 0 else found[1]
        direction = rnn.attrs.get("direction", "forward")
        if (direction, index) not in (("forward", steps - 1), ("reverse", 0)):
            continue
        _rebuild_on_hidden(og, pos, node, rnn, links)
        return og, True
    return og, False


def _trace_time_axis(og, producers, name, axis):
    """Walk back to a recurrent node's Y; returns (node, seq length, [(op node, time axis)])."""
    links = []
    for _ in range(16):
        shape = og.shape(name)
        if shape is None or og.uses(name) != 1:
            return None
        axis = axis + len(shape) if axis < 0 else axis
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in RECURRENT and node.outputs[0] == name:
            time_axis = 1 if node.attrs.get("layout", 0) else 0
            return (node, shape[axis], links[::-1]) if axis == time_axis else None
        in_axis = _input_axis(og, node, axis)
        if in_axis is None:
            return None
        links.append((node, in_axis))
        name, axis = node.inputs[0], in_axis
    return None


def _input_axis(og, node, axis):
    """Where output axis ``axis`` of a layout node comes from in its input, or None."""
    shape_in, shape_out = og.shape(node.inputs[0]), og.shape(node.outputs[0])
    if shape_in is None or shape_out is None:
        return None
    if node.op_type == "Transpose":
        return int(node.attrs.get("perm", list(range(len(shape_in)))[::-1])[axis])
    if node.op_type in ("Squeeze", "Unsqueeze"):
        kept = _kept_axes(og, node, shape_in, shape_out)
        return None if kept is None else kept.get(axis)
    if node.op_type == "Reshape":
        before = [d for d in shape_out[:axis]]
        for i in range(len(shape_in)):
            if shape_in[i] == shape_out[axis] and _same_prefix(shape_in[:i], before):
                return i
    return None


def _same_prefix(a, b):
    if BATCH in a or BATCH in b or None in a or None in b:
        return list(a) == list(b)
    return math.prod(a) == math.prod(b)


def _kept_axes(og, node, shape_in, shape_out):
    """Output axis -> input axis for Squeeze/Unsqueeze."""
    if node.op_type == "Squeeze":
        squeezed = _squeezed_axes(og, node, shape_in)
        ins = [i for i in range(len(shape_in)) if i not in squeezed]
        return dict(enumerate(ins)) if len(ins) == len(shape_out) else None
    added = _squeezed_axes(og, node, shape_out)
    outs = [i for i in range(len(shape_out)) if i not in added]
    return {o: i for i, o in enumerate(outs)}


def _squeezed_axes(og, node, shape):
    if "axes" in node.attrs:
        axes = node.attrs["axes"]
    elif len(node.inputs) > 1 and og.is_const(node.inputs[1]):
        axes = og.consts[node.inputs[1]].reshape(-1).tolist()
    else:
        axes = [i for i, d in enumerate(shape) if d == 1]
    return {int(a) + len(shape) if int(a) < 0 else int(a) for a in axes}


def _rebuild_on_hidden(og, pos, gather, rnn, links):
    """Replace the Gather by the same layout chain applied to Y_h (time axis removed)."""
    n_out = 3 if rnn.op_type == "LSTM" else 2
    rnn.outputs = (list(rnn.outputs) + [""] * n_out)[:max(len(rnn.outputs), 2)]
    if not rnn.outputs[1]:
        rnn.outputs[1] = og.fresh(rnn.name + "_Y_h")
    current = rnn.outputs[1]
    new_nodes = []
    for i, (node, time_axis) in enumerate(links):
        out = gather.outputs[0] if i == len(links) - 1 else og.fresh(node.name + "_last")
        new_nodes.append(_without_axis(og, node, time_axis, current, out))
        current = out
    if not links:
        og.rename_tensor(gather.outputs[0], current)
    og.nodes[pos:pos + 1] = new_nodes
    og.touch()


def _without_axis(og, node, time_axis, x, out):
    """A copy of layout ``node`` reading ``x`` (its input minus the time axis)."""
    name = og.fresh(node.name + "_last")
    if node.op_type == "Transpose":
        perm = list(node.attrs.get("perm", []))
        perm = [p - (p > time_axis) for p in perm if p != time_axis]
        new = ONode(name, "Transpose", [x], [out])
        new.set_attr("perm", perm, 7)
        return new
    shape_out = [d for d in og.shape(node.outputs[0])]
    if node.op_type == "Reshape":
        out_axis = next(i for i in range(len(shape_out)) if _input_axis(og, node, i) ==
                        time_axis)
        target = [0 if d == "__batch__" else d for j, d in enumerate(shape_out)
                  if j != out_axis]
        return ONode(name, "Reshape", [x, og.add_const(name + "_shape", np.array(target))],
                     [out])
    if node.op_type == "Squeeze":
        axes = sorted(a - (a > time_axis) for a in _squeezed_axes(og, node, og.shape(
            node.inputs[0])))
    else:
        kept = _kept_axes(og, node, og.shape(node.inputs[0]), shape_out)
        out_time = next(o for o, i in kept.items() if i == time_axis)
        axes = sorted(a - (a > out_time) for a in _squeezed_axes(og, node, shape_out))
    if og.opset >= 13:
        return ONode(name, node.op_type, [x, og.add_const(name + "_axes", np.array(axes))],
                     [out])
    new = ONode(name, node.op_type, [x], [out])
    new.set_attr("axes", axes, 7)
    return new
