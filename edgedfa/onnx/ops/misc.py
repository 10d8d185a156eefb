"""BatchNormalization, LayerNormalization, InstanceNormalization, RMSNormalization (and the GroupNorm,
RMSNorm and F.normalize the import passes fuse), pass-through ops, and Softmax away from the output."""

import math

import numpy as np

from ..affine import emit_affine
from ..registry import register, register_fused, schema_version


@register("Identity", 1, 13, 14, 16, 19, 21, 23, 24, 25)
def identity(node, ctx):
    ctx.set_alias(node.outputs[0], ctx.data_input(node))


@register("Dropout", 6, 7, 10, 12, 13, 22)
def dropout(node, ctx):
    if len(node.outputs) > 1 and node.outputs[1]:
        ctx.fail(node, "the mask output of Dropout is not supported")
    ctx.set_alias(node.outputs[0], ctx.data_input(node))


@register("Softmax", 1, 11, 13)
@register("LogSoftmax", 1, 11, 13)
def softmax(node, ctx):
    """A Softmax inside the graph over one non-batch axis (the last node's is absorbed by the pass
    ``absorb_output_softmax``); before opset 13 over the axes from ``axis`` on, flattened, taken
    where that is one axis: the others after it of size 1."""
    if node.op_type == "LogSoftmax":
        ctx.fail(node, "LogSoftmax is supported only as the last node, over the last axis (it is then recorded in"
                 " graph.meta['output_softmax'] and removed); inside the graph only Softmax")
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    rank, flattens = len(shape), schema_version("Softmax", ctx.og.opset) < 13
    axis = int(node.attr("axis", 1 if flattens else -1))
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, "Softmax needs the batch on axis 0")
    if not -rank <= axis < rank or axis % rank == 0:
        ctx.fail(node, f"Softmax over axis {axis} of a rank-{rank} input: only a non-batch axis (1..{rank - 1})")
    axis %= rank
    if flattens:
        wide = [a for a in range(axis, rank) if shape[a] != 1]
        if len(wide) > 1:
            ctx.fail(node, f"Softmax-{schema_version('Softmax', ctx.og.opset)} over axis {axis} of shape"
                     f" {list(shape)} normalises the axes {axis}..{rank - 1} together; only one of them may"
                     " exceed 1 (a softmax over one axis)")
        axis = wide[0] if wide else axis
    ctx.emit(node, "Softmax", [x], [node.outputs[0]], {"axis": axis})


@register("BatchNormalization", 6, 7, 9, 14, 15)
def batch_norm(node, ctx):
    """A canonical BatchNorm (trained, or folded by the model when ``batchnorm = "fold"``); a
    training-mode node is read the same way when its running-statistics outputs are unused."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if any(o and ctx.uses.get(o) for o in node.outputs[1:]):
        ctx.fail(node, "the running mean/variance outputs of BatchNormalization are read by the graph;"
                 " edgedfa keeps the running statistics itself")
    if node.attr("spatial", 1) != 1 and len(shape) > 2:
        ctx.fail(node, "BatchNormalization with spatial=0 is not supported")
    if ctx.batch_at(node, x) != 0 or len(shape) not in (2, 3, 4):
        ctx.fail(node, f"BatchNormalization needs a [N, C], [N, C, L] or [N, C, H, W] input, got rank {len(shape)}")
    channels = shape[1]
    names = ("scale", "B", "mean", "var")
    stats = [ctx.weight(node, i, what) for i, what in
             enumerate(("scale", "bias", "mean", "variance"), start=1)]
    if any(v.size != channels for v in stats):
        ctx.fail(node, f"scale, bias, mean and variance must each hold {channels} values")
    eps, momentum = float(node.attr("epsilon", 1e-5)), float(node.attr("momentum", 0.9))
    if not np.isfinite(eps) or eps < 0 or not np.all(np.isfinite(np.concatenate(stats))) or stats[3].min() < 0:
        ctx.fail(node, "epsilon, scale, bias, mean and variance must be finite, epsilon and variance >= 0")
    ctx.emit(node, "BatchNorm", [x], [node.outputs[0]], {"epsilon": eps, "momentum": momentum},
             {k: v.reshape(-1) for k, v in zip(names, stats)})


@register("LayerNormalization", 17)
def layer_norm(node, ctx):
    """A LayerNorm over the trailing axes from ``axis`` on, the batch (axis 0) never among them;
    Scale and B broadcast to the normalised shape (B absent: zeros)."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    rank, axis = len(shape), int(node.attr("axis", -1))
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, "LayerNormalization needs the batch on axis 0")
    a = axis - rank if axis >= 0 else axis
    if not -(rank - 1) <= a <= -1:
        ctx.fail(node, f"LayerNormalization over axis {axis} of a rank-{rank} input is not supported: only the"
                 f" trailing axes after the batch (axis 1..{rank - 1} or -{rank - 1}..-1), the batch untouched")
    if any(o and ctx.uses.get(o) for o in node.outputs[1:]):
        ctx.fail(node, "the Mean/InvStdDev outputs of LayerNormalization are read by the graph; not supported")
    norm = tuple(int(d) for d in shape[rank + a:])
    params = {"scale": ctx.weight(node, 1, "scale")}
    params["B"] = ctx.weight(node, 2, "bias") if len(node.inputs) > 2 and node.inputs[2] else np.zeros(norm)
    eps = float(node.attr("epsilon", 1e-5))
    _check_affine(node, ctx, params, norm, eps)
    ctx.emit(node, "LayerNorm", [x], [node.outputs[0]], {"epsilon": eps, "axis": a}, params)


def _check_affine(node, ctx, params: dict, norm: tuple, eps: float) -> None:
    """γ and β (``params``, in place) broadcast to the normalised shape, finite; epsilon >= 0."""
    for k in params:
        try:
            params[k] = np.array(np.broadcast_to(params[k], norm))
        except ValueError:
            ctx.fail(node, f"{k} of shape {list(np.shape(params[k]))} does not broadcast to the normalised"
                     f" shape {list(norm)}")
    if not np.isfinite(eps) or eps < 0 or not all(np.all(np.isfinite(v)) for v in params.values()):
        ctx.fail(node, "epsilon, scale and bias must be finite, epsilon >= 0")


@register("InstanceNormalization", 6, 22)
def instance_norm(node, ctx):
    """A GroupNorm with one group per channel (PyTorch's InstanceNorm1d/2d(affine=True))."""
    x = ctx.data_input(node)
    shape = ctx.known_shape(node, x)
    if len(shape) < 3:  # no positions: every value its own mean
        ctx.fail(node, f"InstanceNormalization needs a [N, C, positions...] input, got rank {len(shape)}")
    _group_norm(node, ctx, x, int(shape[1]))


@register_fused("GroupNormalization")
def group_norm(node, ctx):
    """PyTorch's GroupNorm decomposition, fused by passes/groupnorm.py ([N, C] included)."""
    _group_norm(node, ctx, ctx.data_input(node), int(node.attr("groups", 0)))


def _group_norm(node, ctx, x, groups: int):
    """A GroupNorm of ``groups`` groups over [N, C, positions...], scale and B (C,) constant."""
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0 or len(shape) < 2:
        ctx.fail(node, f"{node.op_type} needs a [N, C, ...] input with the batch on axis 0, got rank {len(shape)}")
    channels = int(shape[1])
    params = {"scale": ctx.weight(node, 1, "scale"), "B": ctx.weight(node, 2, "bias")}
    if any(v.size != channels for v in params.values()):
        ctx.fail(node, f"scale and bias must each hold {channels} values (one per channel)")
    if groups < 1 or channels % groups:
        ctx.fail(node, f"{groups} groups do not divide the {channels} channels")
    eps = float(node.attr("epsilon", 1e-5))
    if not np.isfinite(eps) or eps < 0 or not all(np.all(np.isfinite(v)) for v in params.values()):
        ctx.fail(node, "epsilon, scale and bias must be finite, epsilon >= 0")
    ctx.emit(node, "GroupNorm", [x], [node.outputs[0]], {"groups": groups, "epsilon": eps},
             {k: v.reshape(-1) for k, v in params.items()})


@register("RMSNormalization", 23)
def rms_normalization(node, ctx):
    """ONNX RMSNormalization (nn.RMSNorm from the dynamo exporter at opset 23): over the trailing
    axes from ``axis`` on, Scale (γ) broadcast to them; ``stash_type`` ignored (sums are exact)."""
    x = ctx.data_input(node)
    rank = len(ctx.known_shape(node, x))
    axis = int(node.attr("axis", -1))
    first = axis + rank if axis < 0 else axis
    if not 1 <= first < rank:
        ctx.fail(node, f"RMSNormalization over axis {axis} of a rank-{rank} input is not supported: only the"
                 f" trailing axes after the batch (axis 1..{rank - 1} or -{rank - 1}..-1)")
    if len(node.outputs) > 1 and any(o and ctx.uses.get(o) for o in node.outputs[1:]):
        ctx.fail(node, "the extra outputs of RMSNormalization are read by the graph; not supported")
    _rms_norm(node, ctx, x, list(range(first, rank)), float(node.attr("epsilon", 1e-5)),
              {"scale": ctx.weight(node, 1, "scale")}, False)


@register_fused("RMSNormalization")
def rms_norm(node, ctx):
    """nn.RMSNorm's decomposition or F.normalize, fused by passes/rmsnorm.py."""
    params = {k: ctx.weight(node, i, k) for i, k in ((1, "scale"), (2, "B")) if len(node.inputs) > i and node.inputs[i]}
    _rms_norm(node, ctx, ctx.data_input(node), list(node.attr("axes")), float(node.attr("epsilon", 0.0)), params,
              bool(node.attr("l2", 0)))


def _rms_norm(node, ctx, x, axes: list, eps: float, params: dict, l2: bool):
    """An RMSNorm over the consecutive batched ``axes`` (datapath §8.11). F.normalize (``l2``) is
    x / max(||x||, eps) = x̂ / sqrt(D) with x̂'s ε = eps² / D: its 1/sqrt(D) goes into γ when the
    graph scales it, else it is a constant scale for the Dense or Conv next to it (onnx/affine.py)."""
    shape = ctx.known_shape(node, x)
    if ctx.batch_at(node, x) != 0:
        ctx.fail(node, f"{node.op_type} needs the batch on axis 0")
    if not axes or min(axes) < 1 or max(axes) >= len(shape):
        ctx.fail(node, f"axes {axes} must name axes after the batch of a rank-{len(shape)} input")
    norm = tuple(int(shape[a]) for a in axes)
    d = math.prod(norm)
    _check_affine(node, ctx, params, norm, eps)
    if l2:
        eps = eps * eps / d
        if params:
            params["scale"] = params.get("scale", np.ones(norm)) / math.sqrt(d)
    out = node.outputs[0] + "__rms" if l2 and not params else node.outputs[0]
    ctx.emit(node, "RMSNorm", [x], [out], {"epsilon": eps, "axes": [int(a) for a in axes]}, params)
    if out != node.outputs[0]:
        emit_affine(ctx, node, out, 1.0 / math.sqrt(d), 0.0, shape)
