"""Human-readable summaries for ``edgedfa info``: a canonical Graph, or an ONNX file."""

from __future__ import annotations

import json
import os

import onnx

from ..errors import EdgeDFAError
from ..graph import Graph, input_stage
from .registry import lookup
from .ir import BATCH


def describe(graph: Graph) -> str:
    """One line per canonical node: op, input and output shapes, parameter shapes."""
    from ..float_ref import tensor_shapes

    try:
        shapes = tensor_shapes(graph)
    except (EdgeDFAError, ValueError, IndexError) as exc:
        shapes = {}
        note = f"  (shapes unavailable: {exc})"
    else:
        note = ""
    lines = [f"graph {graph.name!r}: input {graph.input_name!r} [N, "
             f"{', '.join(map(str, graph.input_shape))}] -> output {graph.output_name!r} "
             f"{_fmt(shapes.get(graph.output_name))}{note}"]
    stage = input_stage(graph)
    if stage is not None:
        lines.append(f"  (input stage: x * scale{list(stage[0].shape)} + offset{list(stage[1].shape)} on the float"
                     " data before the input quantizer: the model's own normalisation of its input)")
    if graph.meta.get("output_softmax"):
        lines.append(f"  (a final {graph.meta.get('output_softmax_op', 'Softmax')} was "
                     "removed: the output is logits)")
    for n in graph.nodes:
        ins = ", ".join(_fmt(shapes.get(i)) for i in n.inputs if i)
        outs = ", ".join(_fmt(shapes.get(o)) for o in n.outputs if o)
        params = " ".join(f"{k}{list(v.shape)}" for k, v in n.params.items())
        if n.attrs.get("scale_log2"):
            params = f"x2^{n.attrs['scale_log2']} (a sum)"
        if n.op == "Softmax":
            params = f"over axis {n.attrs.get('axis')}"
        if n.op == "RMSNorm":  # its parameters are optional: say which axes and what it has
            params = f"over axes {list(n.attrs['axes'])} " + (params or "(no γ, β: x / rms(x))")
        lines.append(f"  {n.name:<28} {n.op:<18} {ins} -> {outs}  {params}".rstrip())
    return "\n".join(lines)


def _fmt(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("N" if d in ("N", BATCH) else ("?" if d is None else str(d))
                           for d in shape) + "]"


def inspect_onnx(path) -> dict:
    """Import ``path`` and report, even when it fails: nodes, shapes, unsupported ops.

    Keys: ``ok``, ``error`` (message or None), ``graph`` (Graph or None), ``opset``,
    ``nodes`` (dicts with name, op_type, inputs/outputs shapes, supported), ``unsupported``.
    """
    from .importer import load_graph, read_model

    source = os.fspath(path)
    report = {"ok": False, "error": None, "graph": None, "opset": None, "nodes": [],
              "unsupported": []}
    try:
        report["graph"] = load_graph(source)
        report["ok"] = True
    except EdgeDFAError as exc:
        report["error"] = str(exc)
    try:
        model = read_model(source)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # unreadable: the error above says why
        return report
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report["opset"] = opset
    shapes = {vi.name: _dims(vi) for vi in list(inferred.graph.value_info) +
              list(inferred.graph.input) + list(inferred.graph.output)}
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for i, n in enumerate(model.graph.node):
        supported = lookup(n.op_type, opset, n.domain) is not None
        entry = {"name": n.name or f"{n.op_type}_{i}", "op_type": n.op_type,
                 "inputs": [shapes.get(x) for x in n.input],
                 "outputs": [shapes.get(x) for x in n.output], "supported": supported}
        report["nodes"].append(entry)
        if not supported:
            report["unsupported"].append(entry["name"] + f" ({n.op_type})")
    return report


def _dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in t.shape.dim]


def describe_onnx(path) -> str:
    """Text for ``edgedfa info FILE.onnx``: the imported graph, or why it cannot be."""
    text, error = describe_import(path)
    return text if error is None else f"{os.fspath(path)}: cannot be imported\n  {error}\n{text}"


def describe_import(path, bits: int = 8) -> tuple:
    """(text, error): the imported graph with its integer formats at ``bits``; or, when the file
    cannot be imported, its ONNX nodes with the ops that have no handler marked, and why."""
    from ..model import IntModel
    from ..numerics import Numerics

    report = inspect_onnx(path)
    if not report["ok"]:
        lines = [f"{os.fspath(path)}: ONNX nodes (opset {report['opset']}); '!' marks ops without a handler"
                 " (shape ops may still fold away):"] if report["nodes"] else [f"{os.fspath(path)}: no nodes read"]
        for e in report["nodes"]:
            mark = " " if e["supported"] else "!"
            lines.append(f"  {mark} {e['name']:<28} {e['op_type']:<18} {e['inputs']} -> {e['outputs']}")
        return "\n".join(lines), report["error"]
    model = IntModel(report["graph"], Numerics.from_bits(bits), 0)
    lines = [describe(report["graph"]),
             f"integer formats at --bits {bits} (activation formats are calibrated from the training data):"]
    for layer in model.layers:
        fmts = ", ".join(f"{k} {v}" for k, v in layer.param_formats().items())
        if fmts:
            lines.append(f"  {layer.name}: {fmts}")
    return "\n".join(lines), None


def describe_export(path) -> str | None:
    """Text for an ONNX file edgedfa exported (any format): how it was exported, the model's
    layers and its integer formats, from the file's metadata; None for other files."""
    from ..model import graph_from_json
    from .export import read_metadata
    from .importer import read_model

    meta = read_metadata(read_model(os.fspath(path)))
    if "format" not in meta or "graph" not in meta:
        return None
    try:
        graph = graph_from_json(meta["graph"], {})
        formats = json.loads(meta.get("formats", "{}"))
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgeDFAError(f"{os.fspath(path)}: corrupt edgedfa export metadata ({exc})") from exc
    lines = [f"{os.fspath(path)}: edgedfa {meta.get('version', '?')} export, format {meta['format']}",
             f"  {meta.get('report', '')}", describe(graph), "integer formats of the exported model:"]
    lines += [f"  {name}: {f}" for name, f in formats.items()]
    return "\n".join(lines)
