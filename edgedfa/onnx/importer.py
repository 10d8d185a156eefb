"""ONNX file -> canonical ``edgedfa.graph.Graph``: parse, check, infer shapes, rewrite, convert."""

from __future__ import annotations

import os

import onnx
from onnx import numpy_helper

from ..errors import EdgeDFAError
from ..graph import Graph
from .ops import OP_MODULES  # noqa: F401  (importing them fills the registry)
from .convert import convert
from .ir import BATCH, OGraph, ONode
from .passes import run_passes

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}


def load_graph(path, input_shape=None) -> Graph:
    """Import the ONNX file at ``path``; ``input_shape`` pins the per-sample input shape."""
    source = os.fspath(path)
    return _guard(source, lambda: load_model_proto(read_model(source), source, input_shape))


def load_graph_bytes(data: bytes, source: str = "<bytes>", input_shape=None) -> Graph:
    """Import a serialized ONNX model."""
    return _guard(source, lambda: load_model_proto(parse_model(data, source), source,
                                                   input_shape))


def load_model_proto(model, source: str = "<model>", input_shape=None) -> Graph:
    """Import an in-memory ``onnx.ModelProto``."""
    return _guard(source, lambda: convert(prepare(model, source, input_shape)))


def prepare(model, source: str, input_shape=None) -> OGraph:
    """Checked, shape-inferred and rewritten light graph, ready for conversion."""
    if not isinstance(model, onnx.ModelProto):
        raise EdgeDFAError(f"{source}: expected an onnx.ModelProto, got {type(model).__name__}")
    check_model(model, source)
    og = to_light(model, source, input_shape)
    og = run_passes(og)
    og.nodes = og.topological()
    if og.output_name in og.consts:
        og.fail(f"the output {og.output_name!r} is a constant: the graph ignores its input")
    return og


def _guard(source, fn):
    """Run ``fn``; any failure that is not already an EdgeDFAError becomes one."""
    try:
        return fn()
    except EdgeDFAError:
        raise
    except RecursionError as exc:
        raise EdgeDFAError(f"{source}: the model is too deeply nested to import") from exc
    except Exception as exc:  # the promise: bad input never escapes as another type
        raise EdgeDFAError(f"{source}: could not import the model "
                           f"({type(exc).__name__}: {exc})") from exc


def read_model(path: str) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise EdgeDFAError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    model = parse_model(data, path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except Exception as exc:
            raise EdgeDFAError(f"{path}: cannot load external tensor data: {exc}") from exc
    return model


def parse_model(data: bytes, source: str) -> onnx.ModelProto:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EdgeDFAError(f"{source}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise EdgeDFAError(f"{source}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(data))
    except Exception as exc:
        raise EdgeDFAError(f"{source}: not an ONNX model, or a truncated or corrupt one "
                           f"(protobuf parse failed: {exc})") from exc
    if not model.HasField("graph") or not model.opset_import:
        raise EdgeDFAError(f"{source}: not an ONNX model (no graph or no opset_import)")
    return model


def check_model(model, source):
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        message = str(exc).strip().splitlines()
        raise EdgeDFAError(f"{source}: the ONNX checker rejects the model: "
                           f"{' '.join(message)[:600]}") from exc


def _opset(model, source) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise EdgeDFAError(f"{source}: the model imports no default-domain ONNX opset")
    return int(versions[0])


def to_light(model, source, input_shape=None) -> OGraph:
    """The light graph of ``model`` with a symbolic batch on its input."""
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    name = g.name or os.path.splitext(os.path.basename(source))[0]
    if len(inputs) != 1:
        raise EdgeDFAError(f"{source}: the model must have exactly one input besides its "
                           f"initializers, it has {len(inputs)} "
                           f"({', '.join(repr(i.name) for i in inputs) or 'none'})")
    if len(g.output) != 1:
        raise EdgeDFAError(f"{source}: the model must have exactly one output, it has "
                           f"{len(g.output)} ({', '.join(repr(o.name) for o in g.output)})")
    inp, out = inputs[0], g.output[0]
    input_type, export_batch = _input_type(inp, source, input_shape)
    output_type = onnx.TypeProto()
    output_type.CopyFrom(out.type)
    if output_type.HasField("tensor_type"):
        output_type.tensor_type.ClearField("shape")
    consts = {}
    for t in g.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as exc:
            raise EdgeDFAError(f"{source}: initializer {t.name!r} cannot be read: {exc}") from exc
    nodes = [ONode.from_proto(n, i) for i, n in enumerate(g.node)]
    _unique_names(nodes)
    return OGraph(name, nodes, consts, inp.name, input_type, out.name, output_type,
                  _opset(model, source), int(model.ir_version), list(model.opset_import),
                  source, export_batch, {"producer": model.producer_name})


def _input_type(inp, source, input_shape):
    """The input's type with its batch axis made symbolic; also the export batch size."""
    t = onnx.TypeProto()
    t.CopyFrom(inp.type)
    if not t.HasField("tensor_type") or t.tensor_type.elem_type not in FLOAT_TYPES:
        raise EdgeDFAError(f"{source}: input {inp.name!r} must be a float tensor")
    tt = t.tensor_type
    if input_shape is not None:
        dims = [None] + [int(d) for d in input_shape]
        if tt.HasField("shape") and len(tt.shape.dim) not in (0, len(dims)):
            raise EdgeDFAError(f"{source}: input_shape {tuple(input_shape)} does not fit input "
                               f"{inp.name!r} of rank {len(tt.shape.dim)}")
        first = tt.shape.dim[0] if tt.HasField("shape") and tt.shape.dim else None
        tt.ClearField("shape")
        for d in dims:
            dim = tt.shape.dim.add()
            if d is not None:
                dim.dim_value = d
        if first is not None:
            tt.shape.dim[0].CopyFrom(first)
    if not tt.HasField("shape") or len(tt.shape.dim) == 0:
        raise EdgeDFAError(f"{source}: input {inp.name!r} has no batch dimension (its shape "
                           "is unknown or a scalar); pass input_shape= to give it")
    dims = list(tt.shape.dim)
    export_batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else None
    rest = dims[1:]
    loose = [i + 1 for i, d in enumerate(rest) if not d.HasField("dim_value") or d.dim_value < 1]
    if loose:
        hint = (" (the batch must be the first axis: export RNNs with batch_first=True)"
                if export_batch is not None else "")
        raise EdgeDFAError(f"{source}: input {inp.name!r} has dynamic or unknown dimension(s) "
                           f"at axis {loose}; only the first (batch) axis may be dynamic"
                           f"{hint}; pass input_shape= to pin them")
    if export_batch is not None and len(dims) == 1:
        raise EdgeDFAError(f"{source}: input {inp.name!r} of fixed shape [{export_batch}] has no "
                           "batch dimension")
    dims[0].Clear()
    dims[0].dim_param = BATCH
    return t, export_batch


def _unique_names(nodes):
    seen = set()
    for i, n in enumerate(nodes):
        if n.name in seen:
            n.name = f"{n.name}_{i}"
        seen.add(n.name)


__all__ = ["load_graph", "load_graph_bytes", "load_model_proto", "prepare"]
