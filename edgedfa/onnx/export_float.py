"""``float`` and ``qdq`` exports: standard float ops on dequantized parameters.

``float`` writes the trained parameters as float32 and every canonical op as its ONNX op.
``qdq`` writes the same ops, but parameters are integer codes behind DequantizeLinear and
every activation passes QuantizeLinear -> DequantizeLinear at the engine's power-of-two
format (zero point 0), the convention of onnxruntime's quantization tools and Brevitas.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, requantize
from ..float_ref import GELU_TANH_CUBIC, GELU_TANH_SCALE
from ..layers.pad import constant_code
from ..layers.pool import given_pads, window_counts
from ..graph import MERGES, MOVES, RECURRENT
from ..registry import Registry
from .export_graph import Builder, emit_move, tensor_info, window_attrs


def tensor_formats(model) -> dict:
    """Canonical tensor name -> its static FixedFormat in the engine."""
    fmts = {model.graph.input_name: model.in_fmt}
    for node, layer in zip(model.graph.nodes, model.layers):
        outs = layer.out_fmts if getattr(layer, "n_outputs", 1) > 1 else [layer.out_fmt]
        fmts.update({name: f for name, f in zip(node.outputs, outs) if name})
    return fmts


def all_tensor_names(graph) -> set:
    return {graph.input_name} | {o for n in graph.nodes for o in n.outputs if o}


class FloatEmitter:
    """Canonical graph -> ONNX float graph; subclassed by the QDQ emitter."""

    kind = "float"

    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.fmts = tensor_formats(model)
        self.b = Builder(all_tensor_names(self.graph))
        self.inexact: list = []  # (node, param) whose float32 value is not its exact code value
        self._staged = None  # the input stage's output, once emitted

    # ---------------------------------------------------------------- hooks
    def source(self, name: str) -> str:
        """ONNX tensor that feeds canonical input ``name``."""
        return self.staged_input() if name == self.graph.input_name else name

    def staged_input(self) -> str:
        """The graph's input through its input stage (float32 Mul and Add), emitted once."""
        stage = self.model.input_stage
        if stage is None:
            return self.graph.input_name
        if self._staged is None:
            x = self.b.node("Mul", [self.graph.input_name, self.b.const(stage[0], np.float32, "input/stage_scale")],
                            "input/stage_scale")
            self._staged = self.b.node("Add", [x, self.b.const(stage[1], np.float32, "input/stage_offset")],
                                       "input/stage_offset")
        return self._staged

    def target(self, name: str) -> str:
        """ONNX tensor an op writes for canonical output ``name``."""
        return name

    def finish(self, node):
        """Called after a node's ops are emitted (QDQ adds the output Q/DQ here)."""

    def pad_value(self, node, layer) -> float:
        """A constant Pad's value: the graph's own (the engine's is its code, §8.5.1)."""
        return float(node.attrs.get("value", 0.0))

    def param(self, node, layer, key: str, transpose: bool = False) -> str:
        value = np.asarray(layer.float_params()[key])
        value32 = value.astype(np.float32)
        if not np.array_equal(value32.astype(np.float64), value):
            self.inexact.append((node.name, key))
        return self.b.const(value32.T if transpose else value32, np.float32, f"{node.name}/{key}")

    def bias(self, node, layer, x_name: str) -> str:
        return self.param(node, layer, "B")

    # ---------------------------------------------------------------- driver
    def build(self):
        """(GraphProto, opset) of the whole model."""
        g, m = self.graph, self.model
        inputs = [tensor_info(g.input_name, TensorProto.FLOAT, g.input_shape)]
        for node, layer in zip(g.nodes, m.layers):
            self.emit(node, layer)
            self.finish(node)
        outputs = [tensor_info(g.output_name, TensorProto.FLOAT, m.shapes[g.output_name])]
        return self.b.graph(g.name or "edgedfa", inputs, outputs), self.opset()

    def opset(self) -> int:
        return 17

    def emit(self, node, layer):
        ins = [self.source(i) for i in node.inputs if i]
        outs = [self.target(o) if o else "" for o in node.outputs]
        FLOAT_OPS.get(node.op, f"node {node.name!r}: ")(self, node, layer, ins, outs)

    # ---------------------------------------------------------------- ops
    def dense(self, node, layer, x, out):
        has_b = "B" in layer.params
        if len(self.model.shapes[node.inputs[0]]) == 1:
            ins = [x, self.param(node, layer, "W")] + ([self.bias(node, layer, node.inputs[0])] if has_b else [])
            self.b.node("Gemm", ins, node.name, [out], transB=1)
            return
        w = self.param(node, layer, "W", transpose=True)
        if not has_b:
            self.b.node("MatMul", [x, w], node.name, [out])
            return
        mm = self.b.node("MatMul", [x, w], node.name)
        self.b.node("Add", [mm, self.bias(node, layer, node.inputs[0])], f"{node.name}/bias", [out])

    def moved(self, node, name: str, op: str, extra: list, base: str, **attrs) -> str:
        """``op`` (Transpose, Reshape) of canonical input ``name`` and ``extra`` inputs."""
        return self.b.node(op, [self.source(name)] + extra, base, **attrs)

    def time_major(self, node, name: str) -> str:
        """The batch-first input of a recurrent node made time-major (onnxruntime runs layout 0 only)."""
        return self.moved(node, name, "Transpose", [], f"{node.name}/to_time_major", perm=[1, 0, 2])

    def recurrent(self, node, layer, x_name, outs):
        a = node.attrs
        batch_first = int(a.get("layout", 0)) == 1
        x = self.time_major(node, x_name) if batch_first else self.source(x_name)
        ins = [x, self.param(node, layer, "W"), self.param(node, layer, "R")]
        if "B" in layer.params:
            ins.append(self.param(node, layer, "B"))
        attrs = {"hidden_size": int(a.get("hidden_size", layer.hidden)),
                 "direction": _text(a.get("direction", "forward")), "layout": 0}
        if a.get("activations"):
            attrs["activations"] = [_text(s) for s in a["activations"]]
        if node.op == "GRU":
            attrs["linear_before_reset"] = int(a.get("linear_before_reset", 0))
        raw = list(outs)
        if batch_first:
            raw = [self.b.unique(f"{o}/time_major") if o else "" for o in outs]
        while raw and not raw[-1]:
            raw.pop()
        self.b.node(node.op, ins, node.name, raw, **attrs)
        if batch_first:
            for i, (r, o) in enumerate(zip(raw, outs)):
                perm = [2, 0, 1, 3] if i == 0 else [1, 0, 2]
                if r:
                    self.b.node("Transpose", [r], f"{node.name}/to_batch_first_{i}", [o], perm=perm)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


FLOAT_OPS = Registry("op of the float/qdq export")

ZERO_ROW_EPS = 2.0 ** -100  # RMSNorm's ε = 0 in the float export (see _rms_norm)


@FLOAT_OPS.register(*MOVES)
def _move(em, node, layer, ins, outs):
    constant = node.op == "Pad" and node.attrs.get("mode", "constant") == "constant"
    value = em.b.const(em.pad_value(node, layer), np.float32, f"{node.name}/value") if constant else None
    emit_move(em.b, node, ins[0], outs[0], em.model.shapes[node.inputs[0]], value)


@FLOAT_OPS.register("Dense")
def _dense(em, node, layer, ins, outs):
    em.dense(node, layer, ins[0], outs[0])


@FLOAT_OPS.register(*RECURRENT)
def _recurrent(em, node, layer, ins, outs):
    em.recurrent(node, layer, node.inputs[0], outs)


@FLOAT_OPS.register("Relu", "Tanh", "Sigmoid", "Softplus")
def _simple(em, node, layer, ins, outs):
    em.b.node(node.op, ins, node.name, outs[:1])


@FLOAT_OPS.register("Softmax")
def _softmax(em, node, layer, ins, outs):
    em.b.node("Softmax", ins, node.name, outs[:1], axis=int(node.attrs.get("axis", -1)))


def _scaled(em, node, outs):
    """Where an average pool writes: its output, or a temporary a Mul by 2^scale_log2 reads (a sum)."""
    return outs[:1] if not node.attrs.get("scale_log2", 0) else [em.b.unique(f"{node.name}/mean")]


def _times_power(em, node, mean, outs):
    k = int(node.attrs.get("scale_log2", 0))
    if k:
        em.b.node("Mul", [mean[0], em.b.const(np.float32(np.ldexp(1.0, k)), np.float32, f"{node.name}/2^{k}")],
                  f"{node.name}/times_2^{k}", outs[:1])


@FLOAT_OPS.register("GlobalAveragePool")
def _global_average(em, node, layer, ins, outs):
    mean = _scaled(em, node, outs)
    em.b.node("GlobalAveragePool", ins, node.name, mean)
    _times_power(em, node, mean, outs)


@FLOAT_OPS.register("LeakyRelu")
def _leaky(em, node, layer, ins, outs):
    em.b.node("LeakyRelu", ins, node.name, outs[:1], alpha=float(node.attrs.get("alpha", 0.01)))


@FLOAT_OPS.register("PRelu")
def _prelu(em, node, layer, ins, outs):
    """ONNX PRelu with the trained slope in its per-sample shape (it broadcasts right-aligned)."""
    em.b.node("PRelu", ins + [em.param(node, layer, "slope")], node.name, outs[:1])


@FLOAT_OPS.register("HardSigmoid")
def _hard_sigmoid(em, node, layer, ins, outs):
    em.b.node("HardSigmoid", ins, node.name, outs[:1], alpha=float(node.attrs.get("alpha", 0.2)),
              beta=float(node.attrs.get("beta", 0.5)))


@FLOAT_OPS.register("Elu")
def _elu(em, node, layer, ins, outs):
    """Elu when gamma is 1 (ELU, CELU of alpha 1), else Selu with both attributes."""
    alpha, gamma = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("gamma", 1.0))
    if gamma == 1.0:
        em.b.node("Elu", ins, node.name, outs[:1], alpha=alpha)
    else:
        em.b.node("Selu", ins, node.name, outs[:1], alpha=alpha, gamma=gamma)


@FLOAT_OPS.register("NormalCdf")
def _normal_cdf(em, node, layer, ins, outs):
    """(1 + erf(x/sqrt 2)) / 2, or PyTorch's tanh form of it: what the importer fuses back."""
    b, base = em.b, node.name
    k = lambda v, name: b.const(np.float32(v), np.float32, f"{base}/{name}")  # noqa: E731
    x = ins[0]
    if node.attrs.get("approximate", "none") == "tanh":
        cube = b.node("Mul", [x, b.node("Mul", [x, x], f"{base}/square")], f"{base}/cube")
        inner = b.node("Add", [x, b.node("Mul", [cube, k(GELU_TANH_CUBIC, "cubic")], f"{base}/cubic")], f"{base}/inner")
        core = b.node("Tanh", [b.node("Mul", [inner, k(GELU_TANH_SCALE, "scale")], f"{base}/scaled")], f"{base}/tanh")
    else:
        core = b.node("Erf", [b.node("Div", [x, k(math.sqrt(2.0), "sqrt2")], f"{base}/div")], f"{base}/erf")
    b.node("Mul", [b.node("Add", [core, k(1.0, "one")], f"{base}/one_plus"), k(0.5, "half")], base, outs[:1])


@FLOAT_OPS.register("Clip")
def _clip(em, node, layer, ins, outs):
    bounds = []
    for key in ("min", "max"):
        v = node.attrs.get(key)
        finite = v is not None and np.isfinite(float(v))
        bounds.append(em.b.const(np.float32(v), np.float32, f"{node.name}/{key}") if finite else "")
    em.b.node("Clip", ins + bounds, node.name, outs[:1])


@FLOAT_OPS.register("Conv")
def _conv(em, node, layer, ins, outs):
    ins = ins + [em.param(node, layer, "W")]
    if "B" in layer.params:
        ins.append(em.bias(node, layer, node.inputs[0]))
    em.b.node("Conv", ins, node.name, outs[:1], group=layer.geo.groups, **window_attrs(layer.geo))


@FLOAT_OPS.register("BatchNorm")
def _batch_norm(em, node, layer, ins, outs):
    """ONNX BatchNormalization (inference) with the trained scale and bias and the running statistics."""
    params = [em.param(node, layer, key) for key in ("scale", "B", "mean", "var")]
    em.b.node("BatchNormalization", ins + params, node.name, outs[:1], epsilon=float(node.attrs.get("epsilon", 1e-5)),
              momentum=float(node.attrs.get("momentum", 0.9)))


@FLOAT_OPS.register("LayerNorm")
def _layer_norm(em, node, layer, ins, outs):
    """ONNX LayerNormalization (opset 17) with the trained scale and bias (shaped like the
    normalised axes)."""
    params = [em.param(node, layer, key) for key in ("scale", "B")]
    em.b.node("LayerNormalization", ins + params, node.name, outs[:1], axis=int(layer.axis),
              epsilon=float(node.attrs.get("epsilon", 1e-5)))


@FLOAT_OPS.register("GroupNorm")
def _group_norm(em, node, layer, ins, outs):
    """ONNX InstanceNormalization with the trained scale and bias when every channel is a group
    with positions; else PyTorch's own decomposition (onnxruntime 1.32 has no
    GroupNormalization-21): Reshape to [N, G, -1], InstanceNormalization(ones, zeros), Reshape
    back, Mul γ, Add β."""
    eps = float(node.attrs.get("epsilon", 1e-5))
    scale, bias = (em.param(node, layer, key) for key in ("scale", "B"))
    if layer.groups == layer.channels and len(layer.in_shapes[0]) > 1:
        em.b.node("InstanceNormalization", ins + [scale, bias], node.name, outs[:1], epsilon=eps)
        return
    b, g, base = em.b, layer.groups, node.name
    view = em.moved(node, node.inputs[0], "Reshape", [b.i64([0, g, -1], f"{base}/groups")], f"{base}/to_groups")
    norm = b.node("InstanceNormalization", [view, b.const(np.ones(g), np.float32, f"{base}/ones"),
                                            b.const(np.zeros(g), np.float32, f"{base}/zeros")], base, epsilon=eps)
    back = b.node("Reshape", [norm, b.node("Shape", ins[:1], f"{base}/shape")], f"{base}/from_groups")
    per_channel = b.i64([layer.channels] + [1] * (len(layer.in_shapes[0]) - 1), f"{base}/per_channel")
    times = b.node("Mul", [back, b.node("Reshape", [scale, per_channel], f"{base}/scale_view")], f"{base}/scale")
    b.node("Add", [times, b.node("Reshape", [bias, per_channel], f"{base}/bias_view")], f"{base}/bias", outs[:1])


@FLOAT_OPS.register("RMSNorm")
def _rms_norm(em, node, layer, ins, outs):
    """The engine's x / sqrt(mean(x²) + ε) (§8.11) as the dynamo exporter writes nn.RMSNorm at
    opset 17 (RMSNormalization is opset 23): Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, then γ
    (Mul) and β (Add) when the layer has them. ε = 0 is written as 2^-100: a zero row then gives
    0 as the engine's does, any other row's mean square is above 2^-80, and the import rounds
    it back to ε's code 0."""
    b, base, (x,) = em.b, node.name, ins
    axes, eps = [int(a) for a in node.attrs["axes"]], float(node.attrs.get("epsilon", 0.0))
    view = tuple(layer.param_shape) + (1,) * (len(layer.in_shapes[0]) - max(axes))
    params = {k: em.param(node, layer, k) for k in ("scale", "B") if k in layer.params}  # QDQ: widths first
    sq = b.node("Pow", [x, b.const(2.0, np.float32, f"{base}/two")], f"{base}/square")
    if em.opset() >= 18:  # QDQ of 16-bit words is opset 21: the axes are an input there
        mean = b.node("ReduceMean", [sq, b.i64(axes, f"{base}/axes")], base, keepdims=1)
    else:
        mean = b.node("ReduceMean", [sq], base, axes=axes, keepdims=1)  # named as the node: the fused one is
    ms = b.node("Add", [mean, b.const(eps if eps > 0 else ZERO_ROW_EPS, np.float32, f"{base}/epsilon")],
                f"{base}/plus_eps")
    inv = b.node("Reciprocal", [b.node("Sqrt", [ms], f"{base}/root")], f"{base}/rsqrt")
    keys = list(params)
    y = b.node("Mul", [x, inv], f"{base}/normalise", None if keys else outs[:1])
    for key, op in (("scale", "Mul"), ("B", "Add")):
        if key in params:
            p = b.node("Reshape", [params[key], b.i64(list(view), f"{base}/{key}_view")], f"{base}/{key}_shape")
            y = b.node(op, [y, p], f"{base}/{key}", outs[:1] if key == keys[-1] else None)


@FLOAT_OPS.register("MaxPool", "AveragePool")
def _pool(em, node, layer, ins, outs):
    """Explicit pads from the engine's geometry (auto_pad and ceil_mode resolved, as it computes)."""
    attrs = window_attrs(layer.geo)
    if node.op == "MaxPool":
        em.b.node("MaxPool", ins, node.name, outs[:1], **attrs)
        return
    if any(d != 1 for d in attrs.pop("dilations")):
        raise EdgeDFAError(f"node {node.name!r}: dilated AveragePool has no opset-17 ONNX form")
    include = int(node.attrs.get("count_include_pad", 0))
    extra = tuple(layer.geo.pads) != tuple(given_pads(node, layer.geo))
    scaled = _scaled(em, node, outs)
    if not (include and extra):
        em.b.node("AveragePool", ins, node.name, scaled, count_include_pad=include, **attrs)
    else:  # ceil_mode's extra end padding is never counted (datapath §8.5): rescale the padding-free mean
        inside = window_counts(layer.geo, layer.geo.pads, False)
        ratio = (inside / layer.counts).reshape((1, 1) + tuple(layer.geo.out_spatial()))
        mean = em.b.node("AveragePool", ins, f"{node.name}/mean_inside", count_include_pad=0, **attrs)
        em.b.node("Mul", [mean, em.b.const(ratio, np.float32, f"{node.name}/count_ratio")], node.name, scaled)
    _times_power(em, node, scaled, outs)


@FLOAT_OPS.register(*MERGES)
def _merge(em, node, layer, ins, outs):
    if node.op == "Concat":
        em.b.node("Concat", ins, node.name, outs[:1], axis=int(node.attrs.get("axis", 1)))
    elif node.op in ("Mul", "MatMul"):
        em.b.node(node.op, ins, node.name, outs[:1])
    elif node.attrs.get("signs") == [1, -1]:
        em.b.node("Sub", ins, node.name, outs[:1])
    else:
        signs = node.attrs.get("signs") or [1] * len(ins)
        ins = [x if s > 0 else em.b.node("Neg", [x], f"{node.name}/negate{i}") for i, (x, s) in enumerate(zip(ins, signs))]
        em.b.node("Add" if len(ins) == 2 else "Sum", ins, node.name, outs[:1])


# --------------------------------------------------------------------------- QDQ

def int_type(fmt: FixedFormat, where: str, widest: int = 16):
    """(numpy dtype, TensorProto type) of the narrowest signed integer holding fmt's codes."""
    for dt, tp, bits in ((np.int8, TensorProto.INT8, 8), (np.int16, TensorProto.INT16, 16),
                         (np.int32, TensorProto.INT32, 32)):
        info = np.iinfo(dt)
        if bits <= widest and info.min <= fmt.min_code and fmt.max_code <= info.max:
            return dt, tp
    raise EdgeDFAError(f"{where}: format {fmt} is wider than the {widest}-bit integers QDQ can hold;"
                       " use --format int or float")


class QdqEmitter(FloatEmitter):
    """Float ops between QuantizeLinear/DequantizeLinear pairs at the engine's formats."""

    kind = "qdq"

    def __init__(self, model, widest: int = 8):
        super().__init__(model)
        self.widest = widest  # grows with every Q/DQ written; the opset follows it
        self.asked: set = set()  # the opsets ops were written for (an op's form may depend on it)
        self.src: dict = {}
        self.raw: dict = {}  # canonical output -> the float tensor before its Q/DQ

    def opset(self) -> int:
        v = 17 if self.widest <= 8 else 21  # int16 Q/DQ needs opset 21
        self.asked.add(v)
        return v

    def build(self):
        """As the float build; if a wider Q/DQ written late raised the opset after an op chose its
        form for a lower one (an RMSNorm's ReduceMean before the first 16-bit word), build again
        with the final width known from the start."""
        graph, opset = super().build()
        if self.asked - {opset}:
            self.__init__(self.model, widest=self.widest)  # a fresh graph, the width known
            graph, opset = super().build()
        return graph, opset

    def scale(self, frac: int, base: str) -> str:
        return self.b.const(np.ldexp(np.float32(1.0), -frac), np.float32, base)

    def dequant(self, codes, fmt_frac: int, dtype, base: str) -> str:
        self.widest = max(self.widest, np.iinfo(dtype).bits)
        q = self.b.const(codes, dtype, f"{base}_q")
        zp = self.b.const(0, dtype, f"zero_{np.dtype(dtype).name}")
        return self.b.node("DequantizeLinear", [q, self.scale(fmt_frac, f"scale_2^-{fmt_frac}"), zp], base)

    def qdq(self, x: str, fmt: FixedFormat, out: str, where: str) -> str:
        """QuantizeLinear -> (Clip to a narrow width) -> DequantizeLinear, zero point 0."""
        dtype, _ = int_type(fmt, where)
        self.widest = max(self.widest, np.iinfo(dtype).bits)
        scale = self.scale(fmt.frac_bits, f"scale_2^-{fmt.frac_bits}")
        zp = self.b.const(0, dtype, f"zero_{np.dtype(dtype).name}")
        info = np.iinfo(dtype)
        narrow = (fmt.min_code, fmt.max_code) != (info.min, info.max)
        if narrow and dtype != np.int8:  # onnxruntime has no int16 Clip: clip the grid-aligned float bounds
            lo, hi = (self.b.const(np.ldexp(np.float32(c), -fmt.frac_bits), np.float32, f"{where}/{k}")
                      for c, k in ((fmt.min_code, "lo"), (fmt.max_code, "hi")))
            x = self.b.node("Clip", [x, lo, hi], f"{where}/saturate")
        q = self.b.node("QuantizeLinear", [x, scale, zp], f"{where}/quantize")
        if narrow and dtype == np.int8:  # Brevitas' form for narrow widths: Clip on the int8 codes
            lo, hi = (self.b.const(c, dtype, f"{where}/{k}") for c, k in ((fmt.min_code, "lo"), (fmt.max_code, "hi")))
            q = self.b.node("Clip", [q, lo, hi], f"{where}/saturate")
        return self.b.node("DequantizeLinear", [q, scale, zp], f"{where}/dequantize", [out])

    def source(self, name):
        if name == self.graph.input_name and name not in self.src:
            self.src[name] = self.qdq(self.staged_input(), self.fmts[name], self.b.unique(f"{name}/qdq"), "input")
        return self.src.get(name, name)

    def moved(self, node, name, op, extra, base, **attrs):
        """Move the float tensor before its Q/DQ: onnxruntime's QDQ propagation fails on DQ -> Transpose
        -> GRU and on DQ -> Reshape -> InstanceNormalization (int8)."""
        raw = self.staged_input() if name == self.graph.input_name else self.raw[name]
        t = self.b.node(op, [raw] + extra, base, **attrs)
        return self.qdq(t, self.fmts[name], self.b.unique(f"{t}/qdq"), f"{node.name}/input")

    def target(self, name):
        self.raw[name] = self.b.unique(f"{name}/float")
        return self.raw[name]

    def finish(self, node):
        for name in node.outputs:
            if name:
                self.qdq(self.raw[name], self.fmts[name], name, name)

    def pad_value(self, node, layer) -> float:
        """The engine's constant: its code in the input's format, dequantized (exact)."""
        fmt = self.fmts[node.inputs[0]]
        return float(np.ldexp(float(constant_code(node.attrs.get("value", 0.0), fmt)), -fmt.frac_bits))

    def param(self, node, layer, key, transpose=False):
        t = layer.params[key]
        dtype, _ = int_type(t.fmt, f"node {node.name!r} param {key}", widest=32)
        codes = t.codes.T if transpose else t.codes
        return self.dequant(codes, t.fmt.frac_bits, dtype, f"{node.name}/{key}")

    def bias(self, node, layer, x_name):
        """The bias as the engine adds it: requantized into the accumulator (scale s_x * s_w)."""
        b, w, num = layer.params["B"], layer.params["W"], layer.num
        frac = self.fmts[x_name].frac_bits + w.fmt.frac_bits
        acc = FixedFormat.with_frac(num.acc_bits, frac)
        codes = requantize(b.codes, b.fmt, acc, num.act_rounding, num.acc_overflow)
        if np.abs(codes).max(initial=0) >= 2**31:
            return self.b.const(np.ldexp(codes.astype(np.float64), -frac), np.float32, f"{node.name}/B")
        return self.dequant(codes, frac, np.int32, f"{node.name}/B")
