"""Recognise a recurrent layer that an exporter unrolled into per-step nodes, and say so."""

from collections import Counter

import numpy as np

from ..ir import OGraph, ONode

_STEP_ACTIVATIONS = ("Tanh", "Relu", "Sigmoid")


def reject_unrolled_rnn(og: OGraph):
    """Raise when one weight feeds several MatMul/Gemm nodes that each end in an activation."""
    uses = Counter()
    for node in og.nodes:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.inputs[1:2]:
                if og.is_const(name):
                    uses[name] += 1
    shared = [(name, n) for name, n in uses.items() if n > 1]
    steps = sum(node.op_type in _STEP_ACTIVATIONS for node in og.nodes)
    if not shared or steps < 2:
        return
    name, count = max(shared, key=lambda item: item[1])
    og.fail(f"this graph looks like a recurrent layer unrolled into per-time-step "
            f"MatMul/Add/Tanh nodes (the weight {name!r} feeds {count} MatMul nodes), as "
            "PyTorch's dynamo ONNX exporter writes nn.RNN; edgedfa rebuilds RNN nodes from "
            "that pattern only with a zero initial state and nothing else reading the inner "
            "steps. Export with "
            "torch.onnx.export(model, args, path, dynamo=False), which keeps the ONNX RNN node")


# -- re-rolling: per-step MatMul/Add/Tanh back into one ONNX RNN node --------------------
def reroll_rnn(og: OGraph):
    """Steps h_t = act(x_t + h_{t-1} @ R + b) from a zero state become one RNN node.

    Matches what PyTorch's dynamo exporter writes for each direction of an ``nn.RNN`` layer:
    L = X' @ W + b_ih (reversed on axis 0 for the reverse direction) sliced per step, one
    shared recurrent weight, and optionally the steps' outputs concatenated on axis 0 (Y)
    and the last one read again (Y_h). Anything else is left alone (and then rejected by
    ``reject_unrolled_rnn``).
    """
    producers, consumers = og.producers(), og.consumers()
    for node in og.nodes:
        if node.op_type not in ("Tanh", "Relu"):
            continue
        found = _match_layer(og, producers, consumers, node)
        if found is not None:
            _replace_with_rnn(og, *found)
            return og, True
    return og, False


def _step(og, producers, act, t):
    """(h_prev, R, b_hh, L) when ``act`` computes step ``t`` of an unrolled layer, or None."""
    if act.op_type not in ("Tanh", "Relu"):
        return None
    consts, data = _split_terms(og, producers, act.inputs[0])
    if len(data) != 2 or len(consts) > 1:
        return None
    for rec_name, x_name in (data, data[::-1]):
        rec, seq = _linear(og, producers, rec_name), _step_input(og, producers, x_name, t)
        if rec is None or seq is None:
            continue
        h_prev, r, b_hh = rec
        if consts:
            extra = np.asarray(og.consts[consts[0]], np.float64).reshape(-1)
            b_hh = extra if b_hh is None else b_hh + extra
        return h_prev, r, b_hh, seq
    return None


def _match_layer(og, producers, consumers, first):
    """Everything ``_replace_with_rnn`` needs when ``first`` is step 0 of a layer."""
    from .rnn import _is_zero

    step0 = _step(og, producers, first, 0)
    if step0 is not None and _is_zero(og, step0[0], producers):
        _, r, b_hh, seq = step0
    else:  # R is read off step 1
        folded = _folded_first_step(og, producers, first)
        if folded is None:
            return None
        (b_hh, seq), r = folded, None
    seq_shape = og.shape(seq)
    if seq_shape is None or len(seq_shape) != 3 or not isinstance(seq_shape[0], int):
        return None
    acts = [first]
    for t in range(1, seq_shape[0]):
        nxt = [s for s in _step_candidates(og, consumers, acts[-1].outputs[0])
               if _same_step(og, producers, s, t, acts[-1].outputs[0], r, b_hh, seq)]
        if len(nxt) != 1:
            return None
        if r is None:
            r = _step(og, producers, nxt[0], t)[1]
        acts.append(nxt[0])
    outs = [a.outputs[0] for a in acts]
    flipped = _flip_source(og, producers, seq)
    reverse = flipped is not None
    concat = _concat_of(og, consumers, outs[::-1] if reverse else outs)
    for h in outs[:-1]:  # inner states feed the next step (and the Concat) only
        if og.uses(h) != 1 + (concat is not None):
            return None
    last_shape = og.shape(outs[-1])
    if og.uses(outs[-1]) > (concat is not None) and (
            last_shape is None or len(last_shape) != 3 or last_shape[0] != 1):
        return None
    proj = _linear(og, producers, flipped if reverse else seq)
    if proj is None:
        return None
    x, w, b_ih = proj
    direction = "reverse" if reverse else "forward"
    return first.op_type, direction, x, w, r, b_ih, b_hh, concat, outs[-1]


def _flip_source(og, producers, name):
    """``src`` when ``name`` is src reversed along axis 0 (a Slice with step -1), or None."""
    sl = producers.get(name)
    if sl is None or sl.op_type != "Slice" or len(sl.inputs) < 5:
        return None
    args = [og.consts.get(i) if i else None for i in sl.inputs[1:5]]
    if any(a is None for a in args):
        return None
    starts, ends, axes, steps = (np.asarray(a).reshape(-1).tolist() for a in args)
    shape = og.shape(sl.inputs[0])
    if shape is None or not isinstance(shape[0], int):
        return None
    if axes != [0] or steps != [-1] or starts[0] not in (-1, shape[0] - 1) or \
            ends[0] > -shape[0] - 1:
        return None
    return sl.inputs[0]


def _step_candidates(og, consumers, h):
    """Activation nodes two Adds or fewer downstream of a MatMul reading ``h``."""
    found = []
    for mm in consumers.get(h, []):
        frontier = [mm]
        for _ in range(4):
            frontier = [c for n in frontier for o in n.outputs for c in consumers.get(o, [])]
            found += [n for n in frontier if n.op_type in ("Tanh", "Relu")]
            frontier = [n for n in frontier if n.op_type == "Add"]
    return found


def _same_step(og, producers, act, t, h_prev, r, b_hh, seq):
    step = _step(og, producers, act, t)
    if step is None:
        return False
    same_bias = (step[2] is None and b_hh is None) or (
        step[2] is not None and b_hh is not None and np.array_equal(step[2], b_hh))
    return step[0] == h_prev and (r is None or np.array_equal(step[1], r)) and same_bias and step[3] == seq


def _folded_first_step(og, producers, act):
    """(b_hh, L) when ``act`` is step 0 from a zero state whose ``0 @ R + b_hh`` the exporter
    folded to a constant (dynamo does when the example input has a batch of one):
    act(L[0] + b_hh), or act(L[0]) without a recurrent bias; else None."""
    if act.op_type not in ("Tanh", "Relu"):
        return None
    consts, data = _split_terms(og, producers, act.inputs[0])
    seq = _step_input(og, producers, data[0], 0) if len(data) == 1 and len(consts) <= 1 else None
    if seq is None:
        return None
    if not consts:
        return None, seq
    rows = np.asarray(og.consts[consts[0]], np.float64)
    rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
    return (rows[0], seq) if np.all(rows == rows[:1]) else None


def _concat_of(og, consumers, outs):
    for node in consumers.get(outs[0], []) + consumers.get(outs[-1], []):
        if node.op_type == "Concat" and list(node.inputs) == outs and \
                int(node.attrs.get("axis", 0)) == 0:
            return node
    return None


def _sum_terms(og, producers, name, depth=0):
    """Leaves of a tree of single-use Add nodes ending at ``name``."""
    node = producers.get(name)
    if node is None or node.op_type != "Add" or depth > 4 or (depth and og.uses(name) != 1):
        return [name]
    return [t for i in node.inputs for t in _sum_terms(og, producers, i, depth + 1)]


def _split_terms(og, producers, name):
    """(constant terms, data terms) of the Add tree ending at ``name``."""
    terms = _sum_terms(og, producers, name)
    return [t for t in terms if og.is_const(t)], [t for t in terms if not og.is_const(t)]


def _linear(og, producers, name):
    """(x, W (in, out), bias or None) when ``name`` is x @ W (+ b) with constant W and b."""
    consts, data = _split_terms(og, producers, name)
    mats = [producers.get(t) for t in data]
    if len(mats) != 1 or mats[0] is None or mats[0].op_type != "MatMul" or len(consts) > 1:
        return None
    mm = mats[0]
    if not og.is_const(mm.inputs[1]) or og.consts[mm.inputs[1]].ndim != 2:
        return None
    bias = np.asarray(og.consts[consts[0]], np.float64).reshape(-1) if consts else None
    return mm.inputs[0], np.asarray(og.consts[mm.inputs[1]], np.float64), bias


def _step_input(og, producers, name, t):
    """The tensor L when ``name`` is L[t] (Squeeze of a one-step Slice on axis 0)."""
    sq = producers.get(name)
    if sq is None or sq.op_type != "Squeeze":
        return None
    sl = producers.get(sq.inputs[0])
    if sl is None or sl.op_type != "Slice" or len(sl.inputs) < 3:
        return None
    args = [og.consts.get(i) if i else None for i in sl.inputs[1:5]] + [None] * 4
    if any(a is None for a in args[:2]):
        return None
    starts, ends = np.asarray(args[0]).reshape(-1), np.asarray(args[1]).reshape(-1)
    axes = np.asarray(args[2]).reshape(-1) if args[2] is not None else np.array([0])
    steps = np.asarray(args[3]).reshape(-1) if args[3] is not None else np.array([1])
    if starts.tolist() != [t] or ends.tolist() != [t + 1] or axes.tolist() != [0] or \
            steps.tolist() != [1]:
        return None
    return sl.inputs[0]


def _replace_with_rnn(og, act, direction, x, w, r, b_ih, b_hh, concat, last):
    hidden = r.shape[1]
    zeros = np.zeros(hidden)
    bias = np.concatenate([zeros if b_ih is None else b_ih, zeros if b_hh is None else b_hh])
    name = og.fresh("rerolled_rnn")
    inputs = [x, og.add_const(name + "_W", w.T[None].astype(np.float32)),
              og.add_const(name + "_R", r.T[None].astype(np.float32)),
              og.add_const(name + "_B", bias[None].astype(np.float32))]
    y, y_h = og.fresh(name + "_Y"), og.fresh(name + "_Y_h")
    rnn = ONode(name, "RNN", inputs, [y, y_h])
    rnn.set_attr("hidden_size", int(hidden), 2)  # AttributeProto.INT
    rnn.set_attr("activations", [act], 8)  # AttributeProto.STRINGS
    rnn.set_attr("direction", direction, 3)  # AttributeProto.STRING
    from .rnn import _squeeze_node

    new = [rnn]
    if concat is not None:  # the whole sequence [T, N, H] is Y [T, 1, N, H] squeezed
        new.append(_squeeze_node(og, og.fresh(name + "_squeeze"), y, 1, concat.outputs[0]))
        og.nodes.remove(concat)
    pos = max(i for i, n in enumerate(og.nodes) if last in n.outputs)
    og.nodes[pos + 1:pos + 1] = new
    og.rename_tensor(last, y_h)  # other readers of the final state ([1, N, H]) read Y_h
    og.touch()
