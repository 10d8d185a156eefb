"""A small deterministic ONNX graph builder shared by the three export formats.

Names depend only on the order in which nodes and constants are added, so exporting the
same model twice gives the same bytes. Data-movement ops (Flatten, Reshape, Transpose,
Squeeze, Unsqueeze, Gather, Pad) are emitted here for every format: they move codes and floats alike.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgeDFAError

BATCH_DIM = "N"  # dim_param of the batch axis on the exported input and output


class Builder:
    """Nodes and initializers of one ONNX graph, with unique deterministic names."""

    def __init__(self, reserved=()):
        self.nodes: list = []
        self.inits: list = []
        self._taken: set = set(reserved)  # exact names written by the caller (canonical tensors)
        self._consts: dict = {}

    def unique(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``... when already used."""
        name, i = base, 1
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def const(self, value, dtype, base: str = "const") -> str:
        """An initializer holding ``value`` as ``dtype``; equal constants are shared."""
        arr = np.asarray(value).astype(dtype, order="C")  # keeps 0-d scalars 0-d
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.unique(base)
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def i64(self, value, base: str = "i64") -> str:
        return self.const(value, np.int64, base)

    def node(self, op: str, inputs, base: str, outputs=None, n_out: int = 1, **attrs):
        """Add one node; returns its output name (or the list when ``n_out`` > 1)."""
        name = self.unique(base)
        if outputs is None:
            outputs = [name] if n_out == 1 else [self.unique(f"{name}:{i}") for i in range(n_out)]
        attrs = {k: v for k, v in sorted(attrs.items()) if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def graph(self, name: str, inputs, outputs) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, self.inits)


def tensor_info(name: str, elem_type, per_sample_shape) -> onnx.ValueInfoProto:
    """A batch-first value info: [N, *per_sample_shape]."""
    return helper.make_tensor_value_info(name, elem_type, [BATCH_DIM] + [int(d) for d in per_sample_shape])


def float_type(width: int):
    """(TensorProto type, numpy dtype) that holds every code of ``width`` bits exactly."""
    return (TensorProto.FLOAT, np.float32) if width <= 24 else (TensorProto.DOUBLE, np.float64)


# --------------------------------------------------------------------------- data movement

def emit_move(b: Builder, node, x: str, out: str, in_shape, pad_value: str | None = None) -> str:
    """The ONNX op of a canonical data-movement node; ``in_shape`` is per sample; ``pad_value``
    names the scalar initializer a constant Pad writes (of the tensor's element type)."""
    a = node.attrs
    if node.op == "Pad":
        return emit_pad(b, node, x, out, in_shape, pad_value)
    if node.op == "Flatten":
        return b.node("Flatten", [x], node.name, [out], axis=1)
    if node.op == "Reshape":
        shape = [int(s) for s in a["shape"]]
        shape[0] = 0  # the batch: copied from the input
        return b.node("Reshape", [x, b.i64(shape, f"{node.name}/shape")], node.name, [out])
    if node.op == "Transpose":
        perm = [int(p) for p in a.get("perm", list(range(len(in_shape) + 1))[::-1])]
        return b.node("Transpose", [x], node.name, [out], perm=perm)
    if node.op == "Gather":
        ind = b.i64(a["indices"], f"{node.name}/indices")  # an int stays 0-d: the axis goes
        return b.node("Gather", [x, ind], node.name, [out], axis=int(a["axis"]))
    rank = len(in_shape) + 1
    if node.op == "Squeeze":
        axes = sorted(int(v) % rank for v in a.get("axes", []))
        axes = axes or [i + 1 for i, s in enumerate(in_shape) if s == 1]
        return b.node("Squeeze", [x, b.i64(axes, f"{node.name}/axes")], node.name, [out])
    if node.op == "Unsqueeze":
        axes = [int(v) for v in a["axes"]]
        axes = sorted(v % (rank + len(axes)) for v in axes)
        return b.node("Unsqueeze", [x, b.i64(axes, f"{node.name}/axes")], node.name, [out])
    raise EdgeDFAError(f"node {node.name!r}: {node.op} is not a data-movement op")


def emit_pad(b: Builder, node, x: str, out: str, in_shape, value: str | None) -> str:
    """ONNX Pad (opset 11+ inputs) for constant, reflect and edge; wrap, which ONNX has from
    opset 19 only, as one Gather of constant indices per padded axis."""
    mode, pads = str(node.attrs.get("mode", "constant")), [int(p) for p in node.attrs["pads"]]
    r = len(in_shape)
    if mode != "wrap":
        full = b.i64([0] + pads[:r] + [0] + pads[r:], f"{node.name}/pads")
        return b.node("Pad", [x, full] + ([value] if mode == "constant" else []), node.name, [out], mode=mode)
    axes = [a for a in range(r) if pads[a] or pads[a + r]]
    if not axes:
        return b.node("Identity", [x], node.name, [out])
    for k, a in enumerate(axes):
        n = int(in_shape[a])
        idx = b.i64(np.arange(-pads[a], n + pads[a + r]) % n, f"{node.name}/wrap{a + 1}")
        x = b.node("Gather", [x, idx], f"{node.name}/axis{a + 1}", [out] if k == len(axes) - 1 else None, axis=a + 1)
    return x


def window_attrs(geo) -> dict:
    """kernel_shape, strides, explicit pads, dilations of an engine geometry, in the model's rank."""
    t, left, b, r = geo.pads
    if geo.ndim == 1:
        return {"kernel_shape": [geo.kernel[1]], "strides": [geo.strides[1]], "pads": [left, r],
                "dilations": [geo.dilations[1]]}
    return {"kernel_shape": list(geo.kernel), "strides": list(geo.strides), "pads": [t, left, b, r],
            "dilations": list(geo.dilations)}


# --------------------------------------------------------------------------- model proto

def make_model(graph: onnx.GraphProto, opset: int, metadata: dict) -> onnx.ModelProto:
    """A ModelProto with the minimal IR version for ``opset`` and sorted metadata."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgedfa", ir_version=IR_VERSION[opset])
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    return model


IR_VERSION = {17: 8, 21: 10}
