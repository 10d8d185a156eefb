"""A zero Pad on the spatial axes right before a Conv becomes part of the Conv's pads; a Pad
with an ``axes`` input (opset 18+) is spelled over every axis first."""

import numpy as np

from ..ir import OGraph


def pads_over_every_axis(og: OGraph):
    """Pad(x, pads, value, axes) with constant pads and axes -> Pad(x, pads of every axis, value)
    (ONNX shape inference loses the batch dimension through the axes form)."""
    for pad in og.nodes:
        names = list(pad.inputs) + ["", "", ""]
        if pad.op_type != "Pad" or not names[3] or not og.is_const(names[1]) or not og.is_const(names[3]):
            continue
        shape = og.shape(names[0])
        pads, axes = og.consts[names[1]].reshape(-1), og.consts[names[3]].reshape(-1)
        if shape is None or len(pads) != 2 * len(axes):
            continue
        rank = len(shape)
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in axes]
        if sorted(set(axes)) != sorted(axes) or not all(0 <= a < rank for a in axes):
            continue  # the Pad handler names the mismatch
        full = np.zeros(2 * rank, dtype=np.int64)
        for k, a in enumerate(axes):
            full[a], full[a + rank] = pads[k], pads[k + len(axes)]
        pad.inputs = [names[0], og.add_const(f"{pad.name}_pads", full), names[2]]
        og.touch()
        return og, True
    return og, False


def _pad_amounts(og, pad):
    """Pads (begin..., end...) over every axis of a constant zero Pad, or None."""
    if pad.attrs.get("mode", "constant") != "constant":
        return None
    if "pads" in pad.attrs or "paddings" in pad.attrs:  # Pad-1, Pad-2
        pads, value = pad.attrs.get("pads", pad.attrs.get("paddings")), pad.attrs.get(
            "value", 0.0)
    else:
        names = list(pad.inputs) + ["", "", ""]
        if not og.is_const(names[1]) or (names[2] and not og.is_const(names[2])) or names[3]:
            return None
        pads = og.consts[names[1]].reshape(-1).tolist()
        value = og.consts[names[2]].reshape(-1)[0] if names[2] else 0.0
    return [int(p) for p in pads] if float(value) == 0.0 else None


def fold_pad_into_conv(og: OGraph):
    """Pad(zeros on spatial axes) -> Conv: the Conv pads absorb it."""
    producers = og.producers()
    for conv in og.nodes:
        pad = producers.get(conv.inputs[0]) if conv.op_type == "Conv" else None
        if pad is None or pad.op_type != "Pad" or og.uses(conv.inputs[0]) != 1 or \
                conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            continue
        amounts = _pad_amounts(og, pad)
        if amounts is None or len(amounts) % 2:
            continue
        rank = len(amounts) // 2
        begin, end = amounts[:rank], amounts[rank:]
        if rank < 3 or any(begin[:2]) or any(end[:2]) or min(amounts) < 0:
            continue
        spatial = rank - 2
        old = list(conv.attrs.get("pads", [0] * 2 * spatial))
        new = [o + p for o, p in zip(old, begin[2:] + end[2:])]
        conv.set_attr("pads", new, 7)  # AttributeProto.INTS
        conv.inputs[0] = pad.inputs[0]
        og.touch()
        return og, True
    return og, False


__all__ = ["fold_pad_into_conv", "pads_over_every_axis"]
