"""RNN, GRU, LSTM: ONNX gate order and layout are kept; W, R, B as ONNX stores them."""

import numpy as np

from ..registry import register

DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
KNOWN_ACTIVATIONS = {"Tanh", "Sigmoid", "Relu"}


def _recurrent(node, ctx):
    op = node.op_type
    x = ctx.data_input(node, 0)
    shape = ctx.known_shape(node, x)
    layout = int(node.attr("layout", 0))
    if len(shape) != 3 or ctx.batch_at(node, x) != (1 if layout == 0 else 0):
        where = "[seq, N, features]" if layout == 0 else "[N, seq, features]"
        ctx.fail(node, f"input {x!r} must be {where} with the batch dimension there, got "
                 f"shape {shape}; export with batch_first=True so the graph input is batch "
                 "first")
    w = ctx.weight(node, 1, "W")
    r = ctx.weight(node, 2, "R")
    hidden = int(node.attr("hidden_size", r.shape[-1]))
    direction = node.attr("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    if direction not in ("forward", "reverse", "bidirectional"):
        ctx.fail(node, f"unknown direction {direction!r}")
    if w.shape != (dirs, gates * hidden, shape[2]) or r.shape != (dirs, gates * hidden, hidden):
        ctx.fail(node, f"W {w.shape} / R {r.shape} do not fit hidden_size {hidden}, "
                 f"{dirs} direction(s) and {shape[2]} input features")
    params = {"W": w, "R": r}
    if len(node.inputs) > 3 and node.inputs[3]:
        params["B"] = ctx.weight(node, 3, "B")
        if params["B"].shape != (dirs, 2 * gates * hidden):
            ctx.fail(node, f"B has shape {params['B'].shape}")
    _check_optional_inputs(node, ctx, shape[0 if layout == 0 else 1])
    for unsupported in ("activation_alpha", "activation_beta"):
        if unsupported in node.attrs:
            ctx.fail(node, f"the attribute {unsupported} is not supported")
    activations = list(node.attr("activations", DEFAULT_ACTIVATIONS[op] * dirs))
    if len(activations) == len(DEFAULT_ACTIVATIONS[op]) and dirs == 2:
        activations = activations * 2
    if any(a not in KNOWN_ACTIVATIONS for a in activations) or \
            len(activations) != len(DEFAULT_ACTIVATIONS[op]) * dirs:
        ctx.fail(node, f"activations {activations} are not supported (Tanh, Sigmoid, Relu; "
                 f"{len(DEFAULT_ACTIVATIONS[op])} per direction)")
    attrs = {"hidden_size": hidden, "direction": direction, "activations": activations,
             "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = int(node.attr("linear_before_reset", 0))
    if op == "LSTM" and node.attr("input_forget", 0):
        attrs["input_forget"] = 1
    if "clip" in node.attrs:
        attrs["clip"] = float(node.attrs["clip"])
    n_out = 3 if op == "LSTM" else 2
    outputs = (list(node.outputs) + [""] * n_out)[:n_out]
    ctx.emit(node, op, [x], outputs, attrs, params)


def _check_optional_inputs(node, ctx, seq_len):
    names = list(node.inputs) + [""] * 8
    lens = names[4]
    if lens:
        value = ctx.const(lens)
        if value is None or np.any(np.asarray(value) != seq_len):
            ctx.fail(node, "sequence_lens must be absent (every sequence full length)")
    states = [5, 6] if node.op_type == "LSTM" else [5]
    for i in states:
        if names[i]:
            value = ctx.const(names[i])
            if value is None or np.any(np.asarray(value) != 0):
                ctx.fail(node, f"the initial state {names[i]!r} must be absent or zero")
    if node.op_type == "LSTM" and names[7]:
        value = ctx.const(names[7])
        if value is None or np.any(np.asarray(value) != 0):
            ctx.fail(node, "peephole weights P are not supported")


@register("RNN", 7, 14, 22)
def rnn(node, ctx):
    _recurrent(node, ctx)


@register("GRU", 7, 14, 22)
def gru(node, ctx):
    _recurrent(node, ctx)


@register("LSTM", 7, 14, 22)
def lstm(node, ctx):
    _recurrent(node, ctx)
