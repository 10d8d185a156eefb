"""Recognise a recurrent layer that an exporter unrolled into per-step nodes, and say so."""

from collections import Counter

from ..ir import OGraph

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
            "PyTorch's dynamo ONNX exporter writes nn.RNN. edgedfa needs the ONNX RNN node: "
            "export with torch.onnx.export(model, args, path, dynamo=False), which keeps it")
