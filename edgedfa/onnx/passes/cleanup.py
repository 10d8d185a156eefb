"""Remove nodes that do nothing, and nodes nobody reads."""

import numpy as np

from ..ir import OGraph, ONode


def _noop_input(og: OGraph, node: ONode):
    """The input a no-op node passes through unchanged, or None."""
    op, ins = node.op_type, [i for i in node.inputs if i]
    if not ins or len([o for o in node.outputs if o]) != 1:
        if op == "Dropout" and ins and node.outputs and node.outputs[0] and \
                not any(og.uses(o) for o in node.outputs[1:] if o):
            return ins[0]
        return None
    if op in ("Identity", "Dropout"):
        return ins[0]
    if op in ("Concat", "Sum", "Max", "Min", "Mean") and len(ins) == 1:
        return ins[0]
    if op == "Transpose" and "perm" in node.attrs:
        return ins[0] if list(node.attrs["perm"]) == sorted(node.attrs["perm"]) else None
    if op in ("Squeeze", "Unsqueeze") and node.attrs.get("axes", None) == []:
        return ins[0]
    if op == "Pad" and len(ins) > 1 and og.is_const(ins[1]) and \
            not np.any(og.consts[ins[1]]) and node.attrs.get("mode", "constant") == "constant":
        return ins[0]
    if op in ("Reshape", "Flatten", "Cast"):
        a, b = og.shape(ins[0]), og.shape(node.outputs[0])
        same = a is not None and a == b and None not in a
        if op == "Cast":
            same = same and _float(og, ins[0]) and int(node.attrs.get("to", 0)) in (1, 11)
        return ins[0] if same and not og.is_const(ins[0]) else None
    return None


def _float(og, name):
    """Input tensors of our graphs are float; Cast float->float keeps values."""
    return name == og.input_name or not og.is_const(name)


def remove_noops(og: OGraph):
    """Drop Identity, inference Dropout, identity Transpose/Reshape and friends."""
    for node in og.nodes:
        src = _noop_input(og, node)
        if src is None:
            continue
        og.nodes.remove(node)
        og.rename_tensor(node.outputs[0], src)
        return og, True
    return og, False


def dead_code(og: OGraph):
    """Drop nodes whose outputs nobody reads, and unused constants."""
    changed = False
    while True:
        used = {i for n in og.nodes for i in n.inputs} | {og.output_name}
        dead = [n for n in og.nodes if not any(o in used for o in n.outputs if o)]
        if not dead:
            break
        og.nodes = [n for n in og.nodes if n not in dead]
        changed = True
    used = {i for n in og.nodes for i in n.inputs} | {og.output_name}
    unused = [c for c in og.consts if c not in used]
    for c in unused:
        del og.consts[c]
    if changed or unused:
        og.touch()
    return og, changed or bool(unused)
