"""A Graph made integer: layers wired by tensor name, static formats, run and state (§7)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import EdgeDFAError
from .fixed import FixedFormat, QTensor, dequantize, int_bits_for, quantize
from .fold_batchnorm import fold_batchnorm, folded_batchnorms
from .graph import Graph, Node, apply_stage, input_stage
from .layers import LayerSpec, layer_class
from .layers.conv import BACKWARD_MODES
from .numerics import Numerics
from .scaling import remember_floors
from .schema import names, setting


@dataclass
class LayerOptions:
    """Per-layer settings of ``[layers.<name>]`` that are not numerics."""

    backward_mode: str = setting("full", "Conv: the input error by the full transposed convolution, or by its"
                                 " block-diagonal part over backward_groups channel blocks", choices=BACKWARD_MODES)
    backward_groups: int | None = setting(None, "Conv: channel blocks of backward_mode = \"group\"", lo=1,
                                          hi=1 << 16, none="no blocks")
    bptt_steps: int | None = setting(None, "recurrent: steps an error travels back in time (0: none)", lo=0,
                                     hi=1 << 20, none="full BPTT")


LAYER_OPTION_ALIASES = {"backward": "backward_mode"}  # the older spelling
LAYER_OPTIONS = tuple(names(LayerOptions)) + tuple(LAYER_OPTION_ALIASES)


def _in_shapes(node: Node, shapes: dict):
    missing = [i for i in node.inputs if i and i not in shapes]
    if missing:
        raise EdgeDFAError(f"node {node.name!r}: input tensor(s) {missing} are never produced")
    return [shapes[i] for i in node.inputs if i]


class IntModel:
    """The engine's integer model of a Graph."""

    def __init__(self, graph: Graph, numerics: Numerics, seed: int = 0,
                 layer_numerics: dict | None = None, backend: str | None = None):
        self.numerics = numerics
        self.seed = int(seed)
        self.backend = backend
        self.layer_numerics = dict(layer_numerics or {})
        unknown = set(self.layer_numerics) - {n.name for n in graph.nodes} - set(folded_batchnorms(graph))
        if unknown:
            raise EdgeDFAError(f"config: per-layer settings for unknown layer(s) {sorted(unknown)};"
                               f" layers are {[n.name for n in graph.nodes]}")
        self.graph = graph = fold_batchnorm(graph, lambda n: self._numerics(n).batchnorm == "fold")
        self.in_fmt: FixedFormat | None = None
        self.input_stage = input_stage(graph)  # parsed once: every batch passes through it
        self.layers = []
        shapes = {graph.input_name: tuple(graph.input_shape)}
        for i, node in enumerate(graph.nodes):
            extra = {k: v for k, v in self.layer_numerics.get(node.name, {}).items() if k in LAYER_OPTIONS}
            num = self._numerics(node)
            spec = LayerSpec(index=i + 1, numerics=num, seed=self.seed,
                             in_shapes=_in_shapes(node, shapes), backend=backend, extra=extra)
            layer = layer_class(node.op, node.name)(node, spec)
            outs = layer.out_shape if getattr(layer, "n_outputs", 1) > 1 else [layer.out_shape]
            for name, shp in zip(node.outputs, outs):
                if name:
                    shapes[name] = tuple(shp)
            remember_floors(layer)
            self.layers.append(layer)
        self.shapes = shapes
        if graph.output_name not in shapes:
            raise EdgeDFAError(f"graph output {graph.output_name!r} is not produced by any node")
        out_shape = shapes[graph.output_name]
        if len(out_shape) != 1:
            raise EdgeDFAError(f"graph output {graph.output_name!r} has per-sample shape {out_shape};"
                               " a classifier's logits must be one-dimensional")
        self.n_classes = int(out_shape[0])

    def _numerics(self, node: Node) -> Numerics:
        """A node's numerics: [numerics] with its [layers.<name>] table over them."""
        table = {k: v for k, v in self.layer_numerics.get(node.name, {}).items() if k not in LAYER_OPTIONS}
        return self.numerics.with_overrides(table, f"layer {node.name!r}")

    # ------------------------------------------------------------------ inputs
    @property
    def input_shape(self) -> tuple:
        return tuple(self.graph.input_shape)

    def reshape_input(self, x, what="input") -> np.ndarray:
        """Batch-first floats reshaped to the model's input (same per-sample element count)."""
        x = np.asarray(x, dtype=np.float64)
        per = int(np.prod(self.input_shape))
        if x.ndim == 0 or int(np.prod(x.shape[1:])) != per:
            raise EdgeDFAError(f"{what}: per-sample shape {x.shape[1:]} has {int(np.prod(x.shape[1:])) if x.ndim else 0}"
                               f" elements; the model input {self.input_shape} needs {per}")
        return x.reshape((x.shape[0],) + self.input_shape)

    def staged_input(self, x, what="input") -> np.ndarray:
        """Float input reshaped and through the graph's input stage: what the input quantizer sees."""
        return apply_stage(self.input_stage, self.reshape_input(x, what))

    def quantize_input(self, x) -> QTensor:
        if self.in_fmt is None:
            raise EdgeDFAError("model is not calibrated: call calibrate(x) first")
        x = self.staged_input(x)
        return QTensor(quantize(x, self.in_fmt, "AP_RND_CONV", "AP_SAT"), self.in_fmt)

    def calibrate(self, x) -> None:
        """Input format from max|x|, then each layer's static output format, in order."""
        x = self.staged_input(x, "calibration data")
        if self.in_fmt is None:
            self.in_fmt = FixedFormat(self.numerics.act_bits, int_bits_for(float(np.abs(x).max()), 0))
        env = {self.graph.input_name: QTensor(quantize(x, self.in_fmt), self.in_fmt)}
        for node, layer in zip(self.graph.nodes, self.layers):
            xs = [env[i] for i in node.inputs if i]
            if layer.out_fmt is None:
                layer.calibrate(xs)
                if node.outputs[0] == self.graph.output_name and layer.changes_scale \
                        and layer.num.act_int_bits is None:
                    # logits grow under cross-entropy by design: give them room (§7)
                    f = layer.out_fmt
                    layer.out_fmt = FixedFormat(f.width, f.int_bits + layer.num.logit_headroom, f.signed)
            self._store(env, node, layer.calibration_output(xs))

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _store(env, node, y):
        ys = (y,) if isinstance(y, QTensor) else tuple(y)
        for name, t in zip(node.outputs, ys):
            if name and t is not None:
                env[name] = t

    def forward(self, xq: QTensor, train: bool = False):
        """(logits QTensor, caches by node name, all tensors by name)."""
        env = {self.graph.input_name: xq}
        caches = {}
        for node, layer in zip(self.graph.nodes, self.layers):
            y, cache = layer.forward([env[i] for i in node.inputs if i], train)
            caches[node.name] = cache
            self._store(env, node, y)
        return env[self.graph.output_name], caches, env

    def logits_codes(self, x, batch: int = 512) -> QTensor:
        """Integer logits for float inputs, in batches (inference: static formats only)."""
        x = self.reshape_input(x)
        parts = [self.forward(self.quantize_input(x[i:i + batch]))[0] for i in range(0, len(x), batch)]
        if not parts:
            raise EdgeDFAError("run: empty input batch")
        return QTensor(np.concatenate([p.codes for p in parts]), parts[0].fmt)

    def run(self, x) -> np.ndarray:
        """The engine's integer inference, logits dequantized to float64."""
        t = self.logits_codes(x)
        return dequantize(t.codes, t.fmt)

    def predict(self, x) -> np.ndarray:
        return self.logits_codes(x).codes.argmax(axis=1)

    def to_graph(self) -> Graph:
        """The graph with dequantized (float64) trained parameters."""
        g = self.graph.copy()
        for node, layer in zip(g.nodes, self.layers):
            node.params.update(layer.float_params())
        return g

    def run_float(self, x) -> np.ndarray:
        """Float64 reference execution of the graph with the model's current parameters."""
        from .float_ref import run_float

        return run_float(self.to_graph(), self.reshape_input(x))

    # ------------------------------------------------------------------ state
    def layer(self, name: str):
        for node, layer in zip(self.graph.nodes, self.layers):
            if node.name == name:
                return layer
        raise EdgeDFAError(f"model has no layer {name!r}")

    def formats(self) -> dict:
        """Every static format by layer: parameters and output activation."""
        out = {"input": str(self.in_fmt) if self.in_fmt else None}
        for layer in self.layers:
            entry = {k: str(v) for k, v in layer.param_formats().items()}
            entry["output"] = str(layer.out_fmt) if layer.out_fmt else None
            out[layer.name] = entry
        return out

    def state_arrays(self) -> dict:
        """Integer state as named arrays (codes in their storage dtype)."""
        arrays = {}
        for layer in self.layers:
            for pname, t in layer.params.items():
                arrays[f"param/{layer.name}/{pname}"] = t.codes.astype(t.fmt.code_dtype)
            for sname, arr in getattr(layer, "state", {}).items():
                arrays[f"state/{layer.name}/{sname}"] = arr
        return arrays

    def load_state(self, arrays: dict, formats: dict) -> None:
        """Restore codes and formats written by state_arrays/formats (exact)."""
        self.in_fmt = FixedFormat.parse(formats["input"]) if formats.get("input") else None
        for layer in self.layers:
            f = formats.get(layer.name, {})
            for pname in list(layer.params):
                key = f"param/{layer.name}/{pname}"
                if key not in arrays or pname not in f:
                    raise EdgeDFAError(f"checkpoint: missing {key}")
                layer.params[pname] = QTensor(np.asarray(arrays[key], dtype=np.int64), FixedFormat.parse(f[pname]))
            layer.out_fmt = FixedFormat.parse(f["output"]) if f.get("output") else None
            prefix = f"state/{layer.name}/"
            for key in arrays:
                rest = key[len(prefix):]
                if key.startswith(prefix) and "/" not in rest:  # names may hold "/"
                    layer.state[rest] = np.asarray(arrays[key])


def graph_to_json(graph: Graph) -> str:
    """Structure of a graph (no parameters) as JSON."""
    def clean(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating,)):
            return float(v)
        if isinstance(v, (list, tuple)):
            return [clean(a) for a in v]
        if isinstance(v, bytes):
            return v.decode()
        return v

    nodes = [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
              "attrs": {k: clean(v) for k, v in n.attrs.items()},
              "param_shapes": {k: list(np.shape(v)) for k, v in n.params.items()}} for n in graph.nodes]
    return json.dumps({"name": graph.name, "input_name": graph.input_name,
                       "input_shape": list(graph.input_shape), "output_name": graph.output_name,
                       "meta": {k: clean(v) for k, v in graph.meta.items()}, "nodes": nodes})


def graph_from_json(text: str, params: dict) -> Graph:
    """Inverse of graph_to_json; ``params`` maps node name -> {param: float array}."""
    d = json.loads(text)
    _check_graph_json(d)
    nodes = []
    for n in d["nodes"]:
        p = params.get(n["name"], {})
        for k, shape in n["param_shapes"].items():
            p.setdefault(k, np.zeros(shape))
        nodes.append(Node(n["name"], n["op"], n["inputs"], n["outputs"], n["attrs"], p))
    return Graph(d["name"], d["input_name"], tuple(d["input_shape"]), d["output_name"], nodes, d["meta"])


def _check_graph_json(d) -> None:
    """The stored structure has the shape graph_to_json writes (a damaged file: EdgeDFAError)."""
    def names(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def dims(v, low):
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= low for x in v)

    ok = (isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("input_name"), str)
          and isinstance(d.get("output_name"), str) and dims(d.get("input_shape"), 1)
          and isinstance(d.get("meta", {}), dict) and isinstance(d.get("nodes"), list))
    for n in d.get("nodes", []) if ok else ():
        ok = ok and isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("op"), str) \
            and names(n.get("inputs")) and names(n.get("outputs")) and isinstance(n.get("attrs"), dict) \
            and isinstance(n.get("param_shapes"), dict) and all(dims(v, 0) for v in n["param_shapes"].values())
    if not ok:
        raise EdgeDFAError("the stored graph structure is damaged")
