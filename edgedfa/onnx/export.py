"""ONNX export of an integer model: ``float``, ``qdq`` or bit-exact ``int`` (docs/export.md).

``export_model(model, fmt, path)`` writes the file and returns a one-line report saying
whether onnxruntime reproduces the engine's integer inference bit for bit and, when it
does not, why. The report and everything needed to restore the exact integer model (formats,
numerics, seed, canonical structure) are stored in the file's ``metadata_props``;
``load_exported`` reads a ``float`` export back into the same integer model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx

from ..checkpoint import atomic_write, new_model, numerics_from_dict, numerics_to_dict
from ..errors import EdgeDFAError
from ..fixed import FixedFormat, Overflow, Rounding, dequantize, quantize
from ..model import graph_to_json
from ..version import __version__
from .export_float import FloatEmitter, QdqEmitter, tensor_formats
from .export_graph import make_model
from .export_int import AccPlan, IntEmitter, accumulator_init, data_plan
from .importer import load_model_proto, read_model

FORMATS = ("float", "qdq", "int")
META = "edgedfa."  # prefix of our metadata_props keys
FLOAT32_EXACT = 2**24  # integers below this are exact in float32 sums


def export_model(model, fmt: str, path: str) -> str:
    """Write ``model`` as ONNX in format ``fmt`` to ``path``; returns the exactness report."""
    proto, report = build_proto(model, fmt)
    data = proto.SerializeToString(deterministic=True)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, data, ".export-", ".onnx")
    except OSError as exc:
        raise EdgeDFAError(f"{path}: cannot write the ONNX file ({exc.strerror or exc})") from exc
    return report


def build_proto(model, fmt: str):
    """(checked onnx.ModelProto, report) for ``model`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise EdgeDFAError(f"export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if model.in_fmt is None or any(layer.out_fmt is None for layer in model.layers):
        raise EdgeDFAError("export: the model is not calibrated (call model.calibrate(x) first)")
    emitter = {"float": FloatEmitter, "qdq": QdqEmitter, "int": IntEmitter}[fmt](model)
    graph, opset = emitter.build()
    report = REPORTS[fmt](model, emitter)
    proto = make_model(graph, opset, metadata(model, fmt, report, emitter))
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # our bug, not the user's: say which export and why
        raise EdgeDFAError(f"export {fmt}: the ONNX checker rejects the exported graph: {exc}") from exc
    return proto, report


# --------------------------------------------------------------------------- reports

def float_report(model, em) -> str:
    text = ("float: not bit-exact by design (float32 weights and float ops, no activation rounding);"
            " follows edgedfa.float_ref.run_float(model.to_graph(), x) within float32 rounding")
    if em.inexact:
        names = ", ".join(f"{n}.{p}" for n, p in em.inexact)
        text += f"; {names} rounded to float32 (exact codes kept in metadata for re-import)"
    return text


def int_report(model, em) -> str:
    groups: dict = {}
    for name, plan in em.plans.items():
        groups.setdefault(plan.describe().split(",")[0], []).append(name)
    acc = "; ".join(f"{how}: {', '.join(names)}" for how, names in groups.items())
    return ("int: bit-exact: onnxruntime reproduces model.run(x) bit for bit for float32 inputs"
            " (input rounded half to even in float64, integer requantization by floor shift with the"
            f" engine's rounding and saturation{'; accumulators ' + acc if acc else ''})")


def qdq_report(model, em) -> str:
    reasons = qdq_reasons(model)
    if not reasons:
        return ("qdq: bit-exact: onnxruntime reproduces model.run(x) bit for bit (power-of-two scales,"
                " half-to-even rounding = the engine's AP_RND_CONV, every |accumulator| < 2^24, no saturation)")
    return "qdq: not bit-exact in onnxruntime: " + "; ".join(reasons)


REPORTS = {"float": float_report, "qdq": qdq_report, "int": int_report}


def qdq_reasons(model) -> list:
    """Why onnxruntime's float/QDQ arithmetic can differ from the engine, layer by layer."""
    fmts = tensor_formats(model)
    reasons, rounding, overflow = [], {}, {}
    for node, layer in zip(model.graph.nodes, model.layers):
        num, name = layer.num, node.name
        if node.op in ("Dense", "Conv", "Add", "Mul", "MatMul", "Concat", "AveragePool", "GlobalAveragePool", "Softmax"):
            act_rounding, act_overflow = Rounding.parse(num.act_rounding), Overflow.parse(num.act_overflow)
            if act_rounding is not Rounding.AP_RND_CONV:
                rounding.setdefault(act_rounding.value, []).append(name)
            if act_overflow is not Overflow.AP_SAT:
                overflow.setdefault(act_overflow.value, []).append(name)
        reasons += _layer_reasons(node, layer, fmts)
    for mode, names in rounding.items():
        reasons.append(f"the engine rounds {', '.join(names)} with {mode} but QuantizeLinear rounds half"
                       " to even (one LSB apart at exact ties)")
    for mode, names in overflow.items():
        reasons.append(f"{', '.join(names)} overflow by {mode} but QuantizeLinear saturates")
    return reasons


def _layer_reasons(node, layer, fmts) -> list:
    name, op = node.name, node.op
    if op in ("Dense", "Conv", "MatMul"):
        xf = fmts[node.inputs[0]]
        if op == "MatMul":
            plan = data_plan(name, layer.in_shapes[0][-1], xf, fmts[node.inputs[1]], layer.num)
        else:
            w = layer.params["W"]
            init = accumulator_init(layer, xf.frac_bits + w.fmt.frac_bits)
            plan = AccPlan(name, w.codes.reshape(w.codes.shape[0], -1), xf, w.fmt, init, layer.num)
        if plan.kind != "sum":
            return [(f"{name}: the {plan.acc_bits}-bit accumulator may {plan.mode.value} (|acc| up to"
                     f" 2^{plan.bound.bit_length()}) where onnxruntime's does not")]
        if plan.bound >= FLOAT32_EXACT:
            return [(f"{name}: |accumulator| may reach 2^{plan.bound.bit_length()}; float32 sums and"
                     " onnxruntime's float32 requantization are exact only below 2^24")]
    if op in ("AveragePool", "GlobalAveragePool") and np.any(layer.counts & (layer.counts - 1)):
        return [f"{name}: the engine divides by the 17-bit reciprocal of the window count, float divides exactly"]
    if op == "Add":
        frac = max(fmts[i].frac_bits for i in node.inputs if i)
        total = sum((-fmts[i].min_code) << (frac - fmts[i].frac_bits) for i in node.inputs if i)
        if total >= FLOAT32_EXACT:
            return [f"{name}: the aligned sum may reach 2^{total.bit_length()}, beyond float32's exact integers"]
    if op == "Mul":
        top = (-fmts[node.inputs[0]].min_code) * (-fmts[node.inputs[1]].min_code)
        if top >= FLOAT32_EXACT:
            return [f"{name}: the product may reach 2^{top.bit_length()}, beyond float32's exact integers"]
    if op == "HardSigmoid":
        return [f"{name}: the engine multiplies by alpha as a 16-bit fraction and rounds alpha x + beta"]
    if op == "PRelu":
        return [f"{name}: the engine rounds the product of x and the slope's code into x's format"]
    if op == "LeakyRelu":
        return [f"{name}: the engine multiplies by alpha as a 16-bit fraction and rounds the product"]
    if op == "BatchNorm":
        return [f"{name}: the engine normalises with rounded statistics, an rsqrt table and x̂ of"
                f" {layer.xhat_fmt.width} bits (datapath §8.7); float BatchNormalization does not"]
    if op == "LayerNorm":
        return [f"{name}: the engine normalises with rounded per-sample statistics, an rsqrt table and x̂ of"
                f" {layer.xhat_fmt.width} bits (datapath §8.8); float LayerNormalization does not"]
    if op == "RMSNorm":
        return [f"{name}: the engine normalises with a rounded mean square, an rsqrt table and x̂ of"
                f" {layer.xhat_fmt.width} bits (datapath §8.11); the float root does not"]
    if op == "GroupNorm":
        return [f"{name}: the engine normalises with rounded per-sample group statistics, an rsqrt table and x̂ of"
                f" {layer.xhat_fmt.width} bits (datapath §8.9); float InstanceNormalization does not"]
    if op in ("Tanh", "Sigmoid", "NormalCdf", "Elu", "Softplus"):
        return [f"{name}: the engine's {op} is an interpolated table (datapath §9), onnxruntime's is float"]
    if op == "Softmax":
        return [f"{name}: the engine's Softmax is base 2 with a 16-bit exponent table and a rounded reciprocal per"
                " row (datapath §8.10), onnxruntime's is float"]
    if op in ("RNN", "GRU", "LSTM"):
        return [f"{name}: the engine's {op} cell uses table tanh/sigmoid and integer state rounding"]
    return []


# --------------------------------------------------------------------------- metadata

def _jsonable(v):
    if isinstance(v, (Rounding, Overflow)):
        return v.value
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


def _dump(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=_jsonable, separators=(",", ":"))


def metadata(model, fmt: str, report: str, emitter) -> dict:
    """Everything load_exported needs to rebuild the exact integer model, as strings."""
    state = {layer.name: {k: np.asarray(v).tolist() for k, v in layer.state.items() if np.size(v) <= 64}
             for layer in model.layers if layer.state}
    meta = {"format": fmt, "report": report, "version": __version__, "seed": str(model.seed),
            "formats": _dump(model.formats()),
            "numerics": _dump(numerics_to_dict(model.numerics)),
            "layer_numerics": _dump(model.layer_numerics), "state": _dump(state),
            "graph": graph_to_json(model.graph)}
    if fmt == "float" and emitter.inexact:
        codes = {}
        for node, key in emitter.inexact:
            codes.setdefault(node, {})[key] = model.layer(node).params[key].codes
        meta["codes"] = _dump(codes)
    return {META + k: v for k, v in meta.items()}


def read_metadata(proto) -> dict:
    """Our metadata_props (prefix stripped)."""
    return {p.key[len(META):]: p.value for p in proto.metadata_props if p.key.startswith(META)}


# --------------------------------------------------------------------------- re-import

def load_exported(path, backend=None):
    """The exact integer model of an edgedfa ``float`` export, or None for any other file."""
    source = os.fspath(path)
    proto = read_model(source)
    meta = read_metadata(proto)
    if meta.get("format") != "float" or "formats" not in meta:
        return None
    try:
        formats, stored = json.loads(meta["formats"]), json.loads(meta["graph"])
        described = {"numerics": numerics_from_dict(json.loads(meta["numerics"])), "seed": int(meta["seed"]),
                     "layer_numerics": json.loads(meta["layer_numerics"])}
        state, codes = json.loads(meta["state"]), json.loads(meta.get("codes", "{}"))
    except (KeyError, ValueError) as exc:
        raise EdgeDFAError(f"{source}: corrupt edgedfa export metadata ({exc})") from exc
    graph = load_model_proto(proto, source)
    _restore_structure(graph, stored, source)
    model = new_model(graph, described, backend)
    arrays = _param_codes(model, formats, codes, source)
    for lname, entries in state.items():
        arrays.update({f"state/{lname}/{k}": np.asarray(v) for k, v in entries.items()})
    model.load_state(arrays, formats)
    return model


def _restore_structure(graph, stored: dict, source: str) -> None:
    """Tensor names, attributes ONNX cannot carry (e.g. backward options) and the graph meta."""
    by_name = {n["name"]: n for n in stored["nodes"]}
    rename = {}
    for node in graph.nodes:
        ref = by_name.get(node.name)
        if ref is None or ref["op"] != node.op or len(ref["outputs"]) != len(node.outputs):
            raise EdgeDFAError(f"{source}: node {node.name!r} ({node.op}) of the imported graph is not in"
                               " the exported model; the file was edited or the importer renamed it")
        rename.update({new: old for new, old in zip(node.outputs, ref["outputs"]) if new and old})
        node.attrs.update(ref["attrs"])
    for node in graph.nodes:  # the importer may rename tensors (e.g. batch-first recurrent outputs)
        node.inputs = [rename.get(i, i) for i in node.inputs]
        node.outputs = [rename.get(o, o) for o in node.outputs]
    graph.output_name = rename.get(graph.output_name, graph.output_name)
    graph.meta = dict(stored.get("meta", {}))


def _param_codes(model, formats: dict, codes: dict, source: str) -> dict:
    """Parameter codes: the float values re-quantized with the stored formats (exact)."""
    arrays = {}
    for node, layer in zip(model.graph.nodes, model.layers):
        for pname in layer.params:
            fmt_text = formats.get(layer.name, {}).get(pname)
            if fmt_text is None:
                raise EdgeDFAError(f"{source}: no stored format for {layer.name}.{pname}")
            fmt = FixedFormat.parse(fmt_text)
            value = np.asarray(node.params[pname], dtype=np.float64)
            q = quantize(value, fmt, Rounding.AP_RND_CONV, Overflow.AP_SAT)
            exact = codes.get(layer.name, {}).get(pname)
            if exact is not None:  # float32 could not hold it: use the stored codes if unedited
                exact = np.asarray(exact, dtype=np.int64)
                same = dequantize(exact, fmt).astype(np.float32).astype(np.float64)
                if same.shape == value.shape and np.array_equal(same, value):
                    q = exact
            arrays[f"param/{layer.name}/{pname}"] = q
    return arrays
