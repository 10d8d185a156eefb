"""Elementwise activations."""

import math

import numpy as np

from ...lut import SOFTPLUS_CORE_BOUND
from ..registry import register, register_fused

SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX's defaults (float32)
ELU_COEF_LIMIT = 16.0  # gamma and gamma*alpha are codes of ap_ufixed<20,4> (datapath §9.9)
# above it log(1 + exp(-t)) is below the table's own error: x there is softplus(x) (datapath §9.10)
SOFTPLUS_MIN_THRESHOLD = -math.log(math.expm1(SOFTPLUS_CORE_BOUND))


def _simple(op):
    def handler(node, ctx):
        ctx.emit(node, op, [ctx.data_input(node)], [node.outputs[0]])
    handler.__name__ = op.lower()
    return handler


register("Relu", 6, 13, 14)(_simple("Relu"))
register("Tanh", 6, 13)(_simple("Tanh"))
register("Sigmoid", 6, 13)(_simple("Sigmoid"))


@register("LeakyRelu", 6, 16)
def leaky_relu(node, ctx):
    ctx.emit(node, "LeakyRelu", [ctx.data_input(node)], [node.outputs[0]],
             {"alpha": float(node.attr("alpha", 0.01))})


@register("PRelu", 6, 7, 9, 16)
def prelu(node, ctx):
    """x above zero, slope * x at or below, the slope a trained parameter (PyTorch's nn.PReLU).
    It broadcasts to X as ONNX says (right-aligned; opset 6: a vector is per channel); kept in the
    per-sample shape, the batch axis dropped: (C,) after a Gemm, (C, 1) / (C, 1, 1) per channel of a Conv map, ones when shared."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, "PRelu needs the batch on axis 0")
    slope = ctx.weight(node, 1, "slope")
    if ctx.og.opset < 7 and slope.ndim == 1 and slope.size == shape[1] > 1:
        slope = slope.reshape((-1,) + (1,) * (len(shape) - 2))  # opset 6: a vector slope is per channel (axis 1)
    full = (1,) * (len(shape) - slope.ndim) + slope.shape
    if slope.ndim > len(shape) or full[0] != 1 or any(s not in (1, d) for s, d in zip(full[1:], shape[1:])):
        ctx.fail(node, f"a slope of shape {list(slope.shape)} does not broadcast to the input's per-sample shape"
                       f" {list(shape[1:])} (one value per sample is no parameter)")
    if not np.all(np.isfinite(slope)):
        ctx.fail(node, "the slope must be finite")
    ctx.emit(node, "PRelu", [x], [node.outputs[0]], {}, {"slope": slope.reshape(full[1:])})


def _slope(node, ctx, alpha, beta):
    if not (0 < alpha < 1 and 0 <= beta <= 1):
        ctx.fail(node, f"alpha {alpha} and beta {beta}: HardSigmoid takes 0 < alpha < 1 and 0 <= beta <= 1")
    return {"alpha": alpha, "beta": beta}


@register("HardSigmoid", 6, 22)
def hard_sigmoid(node, ctx):
    attrs = _slope(node, ctx, float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5)))
    ctx.emit(node, "HardSigmoid", [ctx.data_input(node)], [node.outputs[0]], attrs)


@register("HardSwish", 14, 22)
def hard_swish(node, ctx):
    """x * HardSigmoid(x) with alpha 1/6, beta 1/2 (PyTorch's nn.Hardswish): two layers."""
    x, gate = ctx.data_input(node), node.outputs[0] + "/hardsigmoid"
    ctx.emit(node, "HardSigmoid", [x], [gate], {"alpha": 1.0 / 6.0, "beta": 0.5}, suffix="/hardsigmoid")
    ctx.emit(node, "Mul", [x, gate], [node.outputs[0]])


@register("Gelu", 20)
def gelu(node, ctx):
    """x * Phi(x) (PyTorch's nn.GELU, both forms, from opset 20): a NormalCdf and a Mul."""
    x, cdf = ctx.data_input(node), node.outputs[0] + "/normal_cdf"
    ctx.emit(node, "NormalCdf", [x], [cdf], _approximate(node, ctx), suffix="/normal_cdf")
    ctx.emit(node, "Mul", [x, cdf], [node.outputs[0]])


@register_fused("NormalCdf")
def normal_cdf(node, ctx):
    """Phi(x) as the import passes fuse it from an Erf or Tanh decomposition (passes/gelu.py)."""
    ctx.emit(node, "NormalCdf", [ctx.data_input(node)], [node.outputs[0]], _approximate(node, ctx))


def _approximate(node, ctx) -> dict:
    form = node.attr("approximate", "none")
    if form not in ("none", "tanh"):
        ctx.fail(node, f"approximate={form!r}: GELU takes 'none' (erf) or 'tanh'")
    return {"approximate": form}


@register("Elu", 6, 22)
def elu(node, ctx):
    """alpha (exp(x) - 1) at or below zero, x above (PyTorch's nn.ELU)."""
    _emit_elu(node, ctx, float(node.attr("alpha", 1.0)), 1.0)


@register("Selu", 6, 22)
def selu(node, ctx):
    """gamma * ELU_alpha(x) (PyTorch's nn.SELU), with the attribute values the node carries."""
    _emit_elu(node, ctx, float(node.attr("alpha", SELU_ALPHA)), float(node.attr("gamma", SELU_GAMMA)))


@register("Celu", 12, 28)
def celu(node, ctx):
    """max(0, x) + min(0, alpha (exp(x/alpha) - 1)): ELU itself when alpha = 1 (PyTorch's default)."""
    alpha = float(node.attr("alpha", 1.0))
    if alpha != 1.0:
        ctx.fail(node, f"alpha={alpha}: Celu is taken with alpha = 1 only (it is then ELU); "
                       "another alpha scales the table's input, which the datapath does not do")
    _emit_elu(node, ctx, 1.0, 1.0)


def _emit_elu(node, ctx, alpha: float, gamma: float):
    ok = all(map(math.isfinite, (alpha, gamma))) and alpha >= 0 and 0 < gamma < ELU_COEF_LIMIT
    if not ok or gamma * alpha >= ELU_COEF_LIMIT:
        ctx.fail(node, f"alpha={alpha}, gamma={gamma}: {node.op_type} takes alpha >= 0, 0 < gamma and "
                       f"gamma, gamma*alpha below {ELU_COEF_LIMIT:g} (datapath §9.9)")
    ctx.emit(node, "Elu", [ctx.data_input(node)], [node.outputs[0]], {"alpha": alpha, "gamma": gamma})


@register("Softplus", 1, 22)
def softplus(node, ctx):
    """log(1 + exp(x)) (PyTorch's nn.Softplus; its beta is a constant Mul and Div around it, which
    the importer folds into the Dense or Conv next to them)."""
    ctx.emit(node, "Softplus", [ctx.data_input(node)], [node.outputs[0]])


@register_fused("Softplus")
def softplus_fused(node, ctx):
    """Softplus under the dynamo exporter's threshold select (passes/softplus.py): taken where the
    select changes softplus by less than the table's error (datapath §9.10)."""
    threshold = float(node.attr("threshold"))
    if not threshold >= SOFTPLUS_MIN_THRESHOLD:
        gap = max(-threshold, 0.0) + math.log1p(math.exp(-abs(threshold)))  # softplus(-threshold), no overflow
        ctx.fail(node, f"threshold={threshold:g}: above it the exported Softplus is x, up to {gap:.2g} "
                       f"from softplus(x), beyond the table's error {SOFTPLUS_CORE_BOUND:.2g} (datapath §9.10); "
                       f"a threshold of {math.ceil(SOFTPLUS_MIN_THRESHOLD * 100) / 100} or more is taken "
                       "(PyTorch's default is 20)")
    ctx.emit(node, "Softplus", [ctx.data_input(node)], [node.outputs[0]])


@register("Mish", 18, 22)
def mish(node, ctx):
    """x * tanh(softplus(x)) (PyTorch's nn.Mish, as the dynamo exporter writes it): three layers,
    TorchScript's own decomposition."""
    x, sp, gate = ctx.data_input(node), node.outputs[0] + "/softplus", node.outputs[0] + "/tanh"
    ctx.emit(node, "Softplus", [x], [sp], suffix="/softplus")
    ctx.emit(node, "Tanh", [sp], [gate], suffix="/tanh")
    ctx.emit(node, "Mul", [x, gate], [node.outputs[0]])


@register("Clip", 6)
def clip_attrs(node, ctx):
    lo = float(node.attr("min", -np.inf))
    hi = float(node.attr("max", np.inf))
    ctx.emit(node, "Clip", [ctx.data_input(node)], [node.outputs[0]], {"min": lo, "max": hi})


@register("Clip", 11, 12, 13)
def clip_inputs(node, ctx):
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if not name:
            bounds.append(default)
            continue
        value = ctx.const(name)
        if value is None or np.asarray(value).size != 1:
            ctx.fail(node, f"the Clip bound {name!r} must be a constant scalar")
        bounds.append(float(np.asarray(value).reshape(-1)[0]))
    ctx.emit(node, "Clip", [ctx.data_input(node)], [node.outputs[0]],
             {"min": bounds[0], "max": bounds[1]})
