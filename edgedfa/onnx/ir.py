"""The light ONNX-level representation the import passes rewrite (protobuf stays in here).

It stays a valid ONNX graph after every pass, so ONNX shape inference can be re-run on it;
the graph input's batch axis is the symbolic dimension ``BATCH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import EdgeDFAError
from ..graph import consumers as graph_consumers, producers as graph_producers

BATCH = "__batch__"  # dim_param given to the graph input's batch axis
FUSED_DOMAIN = "edgedfa"  # shape-preserving ops the import passes fuse from decompositions (NormalCdf, GroupNorm)
SENTINEL = 3 * 2**29  # stands for the batch size in folded shape tensors (exact in float32)
_SMALL_CONST = 4096  # constants up to this many elements go to shape inference by value


@dataclass
class ONode:
    """One ONNX node with decoded attributes (strings as str)."""

    name: str
    op_type: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    attr_types: dict = field(default_factory=dict)
    domain: str = ""

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def set_attr(self, key, value, attr_type):
        self.attrs[key] = value
        self.attr_types[key] = attr_type

    def to_proto(self) -> onnx.NodeProto:
        node = helper.make_node(self.op_type, self.inputs, self.outputs, name=self.name,
                                domain=self.domain or None)
        for key, value in self.attrs.items():
            node.attribute.append(helper.make_attribute(key, value,
                                                        attr_type=self.attr_types[key]))
        return node

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto, index: int) -> "ONode":
        attrs, types = {}, {}
        for a in proto.attribute:
            attrs[a.name] = _decode(helper.get_attribute_value(a))
            types[a.name] = a.type
        name = proto.name or f"{proto.op_type}_{index}"
        return cls(name, proto.op_type, list(proto.input), list(proto.output), attrs, types,
                   proto.domain if proto.domain != "ai.onnx" else "")

    def label(self) -> str:
        return f"node {self.name!r} ({self.op_type})"


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass
class OGraph:
    """Nodes, constants and the single input/output of the model being imported."""

    name: str
    nodes: list
    consts: dict  # tensor name -> numpy array (initializers, folded Constant nodes)
    input_name: str
    input_type: onnx.TypeProto
    output_name: str
    output_type: onnx.TypeProto
    opset: int
    ir_version: int
    opset_imports: list
    source: str
    export_batch: int | None = None
    meta: dict = field(default_factory=dict)
    _shapes: dict | None = None
    _counter: int = 0

    def touch(self):
        """Forget cached shapes after a rewrite."""
        self._shapes = None

    def producers(self) -> dict:
        return graph_producers(self.nodes)

    def consumers(self) -> dict:
        return graph_consumers(self.nodes)

    def uses(self, tensor: str) -> int:
        """How many node inputs (and the graph output) read ``tensor``."""
        count = sum(i == tensor for n in self.nodes for i in n.inputs)
        return count + (tensor == self.output_name)

    def fresh(self, base: str) -> str:
        taken = set(self.consts) | {o for n in self.nodes for o in n.outputs} | {self.input_name}
        while True:
            self._counter += 1
            name = f"{base}__{self._counter}"
            if name not in taken:
                return name

    def add_const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.consts[name] = np.asarray(value)
        return name

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def rename_tensor(self, old: str, new: str):
        """Make every reader of ``old`` read ``new`` instead."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        if self.output_name == old:
            self.output_name = new
        self.touch()

    def shapes(self) -> dict:
        """Tensor name -> tuple of dims (int, BATCH or None when unknown), or absent."""
        if self._shapes is None:
            self._shapes = self._infer()
        return self._shapes

    def shape(self, name: str):
        if name in self.consts:
            return tuple(int(d) for d in self.consts[name].shape)
        return self.shapes().get(name)

    def to_model(self, with_values: bool = True) -> onnx.ModelProto:
        """Rebuild a ModelProto (large constants as typed inputs unless ``with_values``)."""
        inputs = [helper.make_value_info(self.input_name, self.input_type)]
        inits = []
        for name, value in self.consts.items():
            if with_values or value.size <= _SMALL_CONST:
                inits.append(numpy_helper.from_array(np.asarray(value), name))
            else:
                dtype = helper.np_dtype_to_tensor_dtype(value.dtype)
                inputs.append(helper.make_tensor_value_info(name, dtype, value.shape))
        output = helper.make_value_info(self.output_name, self.output_type)
        graph = helper.make_graph([n.to_proto() for n in self.nodes], self.name or "graph",
                                  inputs, [output], inits)
        model = helper.make_model(graph, opset_imports=self.opset_imports)
        model.ir_version = max(self.ir_version, 4)
        return model

    def _infer(self) -> dict:
        model = self.to_model(with_values=False)
        for n in model.graph.node:
            if n.domain == FUSED_DOMAIN:  # shape-preserving: shaped as an Identity of its data is
                n.op_type, n.domain = "Identity", ""
                del n.attribute[:]
                del n.input[1:]
        try:
            model = shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # inference is best effort; missing shapes are reported later
            return {}
        out = {}
        for vi in list(model.graph.value_info) + list(model.graph.output) + list(
                model.graph.input):
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.HasField("shape"):
                out[vi.name] = tuple(_dim(d) for d in t.shape.dim)
        return out

    def topological(self, strict: bool = True) -> list:
        """The nodes ordered so that every input is written first. A cycle or a read of a tensor
        nothing writes fails (``strict``) or leaves those nodes last, in their order (a pass
        that leaves the verdict to the importer)."""
        ready = {self.input_name, ""} | set(self.consts)
        pending, order = list(self.nodes), []
        while pending:
            progress = [n for n in pending if all(i in ready for i in n.inputs)]
            if not progress:
                if strict:
                    self.fail(f"node {pending[0].name!r} reads a tensor that nothing writes "
                              f"({[i for i in pending[0].inputs if i not in ready]})")
                return order + pending
            order += progress
            ready.update(o for n in progress for o in n.outputs if o)
            pending = [n for n in pending if n not in progress]
        return order

    def fail(self, message: str, node: ONode | None = None):
        where = f"{self.source}: " + (f"{node.label()}: " if node is not None else "")
        raise EdgeDFAError(where + message)


def _dim(d):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.dim_param == BATCH:
        return BATCH
    return None


def batch_axis(shape) -> int | None:
    """Position of the batch dimension in ``shape`` (None when absent or repeated)."""
    if shape is None:
        return None
    hits = [i for i, d in enumerate(shape) if d == BATCH]
    return hits[0] if len(hits) == 1 else None
