"""``batchnorm = "fold"``: a BatchNorm node folded into the Conv or Dense right before it, or
made a per-channel affine layer (a diagonal Dense, a depthwise 1x1 Conv) when there is none.

The folded weights are those edgedfa's importer wrote before BatchNorm trained: W·s and
B·s + t, with s = γ / sqrt(var + eps) and t = β - mean·s computed in float64, rounded to
float32 as the ONNX constants they replaced were.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node

FOLDED = "folded_batchnorm"  # graph.meta: BatchNorm node -> the node it was folded into


def bn_affine(gamma, beta, mean, var, eps):
    """BatchNorm in inference as y = scale * x + shift, per channel."""
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def folded_batchnorms(graph: Graph) -> dict:
    """BatchNorm nodes a graph no longer has because they were folded: name -> host node."""
    return dict(graph.meta.get(FOLDED, {}))


def fold_batchnorm(graph: Graph, wanted) -> Graph:
    """``graph`` with every BatchNorm node for which ``wanted(node)`` holds folded away (the
    same graph when there is none)."""
    if not any(n.op == "BatchNorm" and wanted(n) for n in graph.nodes):
        return graph
    from .float_ref import tensor_shapes

    g = graph.copy()
    shapes = tensor_shapes(g)
    folded = folded_batchnorms(g)
    for bn in [n for n in g.nodes if n.op == "BatchNorm" and wanted(n)]:
        p = bn.params
        scale, shift = bn_affine(p["scale"], p["B"], p["mean"], p["var"], float(bn.attrs.get("epsilon", 1e-5)))
        host = _host(g, bn, shapes, scale.size)
        if host is not None:
            _scale_host(host, scale, shift)
            host.outputs = list(bn.outputs)
            g.nodes.remove(bn)
            folded[bn.name] = host.name
        else:
            g.nodes[g.nodes.index(bn)] = _affine(bn, scale, shift, len(shapes[bn.inputs[0]]) - 1)
    g.meta[FOLDED] = folded
    return g


def _host(g: Graph, bn: Node, shapes: dict, channels: int):
    """The Conv or Dense that writes the BatchNorm's input and nothing else reads, or None."""
    x = bn.inputs[0]
    prev = g.producers().get(x)
    if prev is None or prev.op not in ("Conv", "Dense") or len(g.consumers().get(x, [])) != 1:
        return None
    if np.shape(prev.params["W"])[0] != channels:
        return None
    if prev.op == "Dense" and len(shapes[prev.inputs[0]]) != 2:
        return None  # on [N, T, F] the BatchNorm's channels are not the Dense's outputs
    return prev


def _scale_host(host: Node, scale, shift) -> None:
    w = np.asarray(host.params["W"], np.float64)
    b = np.asarray(host.params["B"], np.float64).reshape(-1) if "B" in host.params else np.zeros(w.shape[0])
    w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    host.params["W"] = w.astype(np.float32).astype(np.float64)
    host.params["B"] = (b * scale + shift).astype(np.float32).astype(np.float64)


def _affine(bn: Node, scale, shift, rank: int) -> Node:
    """A per-channel affine layer in the BatchNorm's place (its name and tensors); ``rank`` per sample."""
    if rank == 1:
        return Node(bn.name, "Dense", list(bn.inputs), list(bn.outputs), {}, {"W": np.diag(scale), "B": shift})
    spatial = rank - 1
    attrs = {"strides": [1] * spatial, "pads": [0] * 2 * spatial, "dilations": [1] * spatial,
             "group": scale.size}
    weight = scale.reshape((scale.size, 1) + (1,) * spatial)
    return Node(bn.name, "Conv", list(bn.inputs), list(bn.outputs), attrs, {"W": weight, "B": shift})
