"""Constant scales and offsets (Mul, Div, Add, Sub with one constant operand) folded into the
Dense or Conv next to them.

A handler writes ``y = x * a + b`` as a temporary ``ConstAffine`` node (``a``, ``b``: constants
broadcast to one sample's shape); ``fold_affines`` then removes every one before the graph is
canonical, so the engine, ``hdl_models`` and the exports never see it:

- a power of two ``2^j`` (``j >= 1``, no offset) after an average pool: the pool's ``scale_log2``;
- into the Dense or Conv that writes ``x`` (its rows scaled by ``a``, its bias ``B * a + b``),
  also through reshapes, and, for a positive scale with no offset, through ReLU, LeakyReLU,
  PReLU and pooling (``relu(z) * a == relu(z * a)`` for ``a > 0``): PyTorch's ``x + 0.5 * relu(fc(x))``;
  one scalar scale with no offset also through a MatMul of two data tensors into the Dense
  behind either operand (attention's ``q @ k^T / sqrt(d)``), and through a Gather whose input
  is read only by Gathers of other places (timm's ``q * scale`` with q sliced out of one qkv
  projection: only q's rows of that Dense are scaled);
- else into every Dense or Conv that reads ``y`` (their input columns scaled by ``a``, their
  bias ``B + W·b``), also through reshapes and, for one value everywhere, through a Gather
  (``F.normalize(y)[-1]``): a model that normalises its own input,
  ``fc((x - mean) / std)``. An offset cannot fold into a zero-padded Conv (the padding would
  not see it), and a scale or offset must be one value per unit (Dense) or channel (Conv);
- else, when it reads the graph's input (also through reshapes) and nothing else does, it
  becomes the graph's **input stage** (``graph.meta["input_affine"]``): the float data is
  scaled and offset before the input quantizer, as the host would (``edgedfa.graph.stage_input``):
  ``conv((x - mean) / std)`` with a zero-padded Conv, a per-pixel mean, a normalisation before
  a recurrent layer or a BatchNorm.

Anything else is refused by name. Both rules are exact in real arithmetic: the float graph
computes what the ONNX graph did, up to float rounding.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Node, consumers, producers
from .ir import batch_axis

AFFINE = "ConstAffine"  # a handler's temporary node, never in a canonical graph
MOVES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")
POSITIVE_SCALE = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool")  # commute with a > 0
HOSTS = ("Dense", "Conv")


def emit_affine(ctx, node, x: str, scale, offset, shape=None) -> None:
    """``node``'s output = x * scale + offset, constants broadcast over x (numpy rules); ``shape``:
    x's, when x is a tensor the handler made (the light graph knows only its own)."""
    shape = ctx.known_shape(node, x) if shape is None else shape
    if batch_axis(shape) != 0:
        ctx.fail(node, f"a constant {node.op_type} needs its data input's batch on axis 0")
    a, b = (_per_sample(ctx, node, v, shape) for v in (scale, offset))
    ctx.emit(node, AFFINE, [x], [node.outputs[0]], {"onnx_node": node}, {"a": a, "b": b})


def _per_sample(ctx, node, c, shape) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        ctx.fail(node, f"the constant of {node.op_type} is not finite")
    if c.ndim > len(shape):
        ctx.fail(node, f"a constant of shape {list(c.shape)} has more axes than the data ({len(shape)})")
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    sample = tuple(int(d) for d in shape[1:])
    if c.shape[0] != 1:
        ctx.fail(node, f"a constant of shape {list(c.shape)} differs along the batch")
    try:
        return np.array(np.broadcast_to(c[0], sample))
    except ValueError:
        ctx.fail(node, f"a constant of shape {list(c.shape)} does not broadcast to the data's per-sample"
                 f" shape {list(sample)} (it would change the data's shape)")


def legacy_align(node, c, rank: int):
    """A constant operand of an opset-6 ``broadcast=1`` node with ``axis``: aligned at that axis."""
    c = np.asarray(c, dtype=np.float64)
    if not node.attr("broadcast", 0) or node.attr("axis") is None:
        return c
    axis = int(node.attr("axis"))
    axis = axis + rank if axis < 0 else axis
    return c.reshape(c.shape + (1,) * max(0, rank - axis - c.ndim))


def fold_affines(nodes: list, og, output: str) -> tuple:
    """(``nodes`` with every ConstAffine folded away, the input stage's ``{"scale", "offset"}``
    or None), or an error naming the first that cannot fold."""
    nodes, stage = list(nodes), None
    while True:
        t = next((n for n in nodes if n.op == AFFINE), None)
        if t is None:
            return nodes, stage
        graph = _Nodes(nodes, og, output)
        if graph.merge_next(t) or graph.into_pool(t) or graph.fold_back(t) or graph.fold_forward(t):
            continue
        ab = None if stage is not None else graph.on_input(t)
        if ab is None:
            og.fail(graph.why(t), t.attrs["onnx_node"])
        graph.bypass(t)
        stage = {"scale": _compact(ab[0]), "offset": _compact(ab[1])}


class _Nodes:
    """The node list being rewritten, with the shapes the light graph inferred."""

    def __init__(self, nodes, og, output):
        self.nodes, self.og, self.output = nodes, og, output
        self.prods, self.cons = producers(nodes), consumers(nodes)
        self._shapes = None

    def uses(self, name) -> int:
        return len(self.cons.get(name, [])) + (name == self.output)

    def sample_shape(self, name):
        """One sample's shape of a tensor: the light graph's, or for the tensors the handlers
        made, the canonical nodes' (each ConstAffine run as a Reshape to its own shape)."""
        shape = self.og.shape(name)
        if shape is not None and all(d is not None for d in shape[1:]):
            return tuple(int(d) for d in shape[1:])
        if self._shapes is None:
            from ..float_ref import tensor_shapes

            nodes = [Node(n.name, "Reshape", n.inputs, n.outputs, {"shape": [-1, *n.params["a"].shape]})
                     if n.op == AFFINE else n for n in self.nodes]
            x = self.og.shape(self.og.input_name)
            try:
                graph = Graph("fold", self.og.input_name, tuple(int(d) for d in x[1:]), self.output, nodes)
                self._shapes = {k: tuple(v[1:]) for k, v in tensor_shapes(graph).items()}
            except Exception:  # a graph that does not run yet: the light graph's shapes only
                self._shapes = {}
        return self._shapes.get(name)

    # -- a scale and offset merged into the next one ----------------------------------------
    def merge_next(self, t) -> bool:
        (y,) = t.outputs
        nxt = self.cons.get(y, [])
        if self.uses(y) != 1 or len(nxt) != 1 or nxt[0].op != AFFINE:
            return False
        a2, b2 = nxt[0].params["a"], nxt[0].params["b"]
        nxt[0].params = {"a": t.params["a"] * a2, "b": t.params["b"] * a2 + b2}
        nxt[0].inputs = list(t.inputs)
        self.nodes.remove(t)
        return True

    # -- a power of two into the average pool before ------------------------------------------
    def into_pool(self, t) -> bool:
        """``pool(x) * 2^j`` (one power of two, j >= 1, no offset) is the pool's own ``scale_log2``
        raised by ``j``: a free move of its binary point (a sum's exponent, datapath §8.5), the
        layers keeping their weights (``x.mean(1) * 4``; the float export's ``Mul(2^k)`` after a
        summing pool, which so reads back as the same pool)."""
        a, b = t.params["a"], t.params["b"]
        p = self.prods.get(t.inputs[0])
        if p is None or p.op not in ("AveragePool", "GlobalAveragePool") or self.uses(t.inputs[0]) != 1 \
                or np.any(b) or not a.size:
            return False
        c = float(a.reshape(-1)[0])
        mant, exp = np.frexp(c)
        if not np.all(a == c) or mant != 0.5 or exp - 1 < 1:
            return False
        p.attrs["scale_log2"] = int(p.attrs.get("scale_log2", 0)) + int(exp - 1)
        self.bypass(t)
        return True

    # -- into the Dense or Conv before ------------------------------------------------------
    def fold_back(self, t) -> bool:
        writer = self.prods.get(t.inputs[0])
        if writer is None or not self._into_host(t.inputs[0], t.params["a"], t.params["b"]):
            return False
        writer.outputs = [t.outputs[0] if o == t.inputs[0] else o for o in writer.outputs]
        self.nodes.remove(t)
        return True

    def _into_host(self, cur, a, b) -> bool:
        """Scale the rows of the Dense or Conv that writes ``cur`` (through the nodes ``_before``
        passes, each output read once) so that it writes ``cur * a + b``; False if none can."""
        shared = False  # cur is one of several disjoint Gathers of its input: that input may have more readers
        while True:
            p = self.prods.get(cur)
            if p is None or (self.uses(cur) != 1 and not shared):
                return False
            shared = False
            if p.op in HOSTS:
                return _scale_rows(p, a, b)
            if p.op == "Gather":  # the gathered places take (a, b), the others (1, 0): no other reader sees them
                ab = self._through_gather(p, a, b)
                if ab is None:
                    return False
                a, b, cur, shared = ab[0], ab[1], p.inputs[0], True
                continue
            if p.op == "MatMul":  # (x @ w) * c == (x * c) @ w for one scalar c: either operand takes it
                c = a.reshape(-1)[:1]
                if np.any(b) or not np.all(a == c):
                    return False
                shapes = [self.sample_shape(x) for x in p.inputs]
                return any(self._into_host(x, np.full(s, c[0]), np.zeros(s))
                           for x, s in zip(p.inputs, shapes) if s is not None)
            ab = self._before(p, a, b)
            if ab is None:
                return False
            a, b, cur = ab[0], ab[1], p.inputs[0]

    def _through_gather(self, p, a, b):
        """(a, b) on a Gather's input giving its output ``* a + b`` at the gathered places and the
        input unchanged elsewhere, when every reader of that input is a Gather on the same axis
        and no two read one place (timm's q, k, v sliced out of one projection); else None."""
        shape, axis = self.sample_shape(p.inputs[0]), int(p.attrs["axis"]) - 1
        readers = self.cons.get(p.inputs[0], [])
        if shape is None or axis < 0 or p.inputs[0] == self.output or any(
                r.op != "Gather" or int(r.attrs["axis"]) - 1 != axis for r in readers):
            return None
        places = [np.atleast_1d(r.attrs["indices"]) % shape[axis] for r in readers]
        if sum(len(x) for x in places) != len(np.unique(np.concatenate(places))):
            return None
        idx = p.attrs["indices"]
        a_in, b_in = np.ones(shape), np.zeros(shape)
        at = (slice(None),) * axis + (idx,)
        try:
            a_in[at], b_in[at] = a, b
        except ValueError:
            return None
        return a_in, b_in

    def _before(self, p, a, b):
        """(a, b) on ``p``'s input giving the same ``p(x) * a + b``, or None."""
        shape = self.sample_shape(p.inputs[0])
        if shape is None:
            return None
        if p.op in MOVES:
            a, b = _inverse_move(p, a, shape), _inverse_move(p, b, shape)
            return None if a is None or b is None else (a, b)
        if p.op not in POSITIVE_SCALE or np.any(a <= 0) or (np.any(b) and p.op != "GlobalAveragePool"):
            return None
        if p.op in ("Relu", "LeakyRelu", "PRelu"):
            return a, b
        ac, bc = _per_channel(a), _per_channel(b)
        if ac is None or bc is None:
            return None
        # an average pool scaled by 2^k (a sum) adds b / 2^k per input value to give b
        return _spread(ac, shape), _spread(np.ldexp(bc, -int(p.attrs.get("scale_log2", 0))), shape)

    # -- into every Dense or Conv after -----------------------------------------------------
    def fold_forward(self, t) -> bool:
        plan = []
        if not self._after(t.outputs[0], t.params["a"], t.params["b"], plan):
            return False
        for host, a, b in plan:
            _scale_columns(host, a, b)
        self.bypass(t)
        return True

    def _after(self, name, a, b, plan) -> bool:
        readers = self.cons.get(name, [])
        if a is None or b is None or name == self.output or not readers:
            return False
        for r in readers:
            if r.op in MOVES:
                shape = self.sample_shape(r.outputs[0])
                if shape is None or not self._after(r.outputs[0], _move(r, a, shape), _move(r, b, shape), plan):
                    return False
            elif r.op == "Gather" and np.all(a == a.flat[0]) and np.all(b == b.flat[0]):  # picks keep a scalar
                shape = self.sample_shape(r.outputs[0])
                if shape is None or not self._after(r.outputs[0], np.full(shape, a.flat[0]), np.full(shape, b.flat[0]),
                                                    plan):
                    return False
            elif r.op in HOSTS and _columns_fit(r, a, b):
                plan.append((r, a, b))
            else:
                return False
        return True

    # -- the graph's input stage ------------------------------------------------------------
    def on_input(self, t):
        """(a, b) on the graph's input giving ``t``'s output when ``t`` reads the input through
        moves only, each read by nothing else; else None."""
        a, b, cur = t.params["a"], t.params["b"], t.inputs[0]
        while True:
            if self.uses(cur) != 1:
                return None
            if cur == self.og.input_name:
                return a, b
            p = self.prods.get(cur)
            shape = None if p is None or p.op not in MOVES else self.sample_shape(p.inputs[0])
            if shape is None:
                return None
            a, b, cur = _inverse_move(p, a, shape), _inverse_move(p, b, shape), p.inputs[0]
            if a is None or b is None:
                return None

    def bypass(self, t) -> None:
        """Remove ``t``; its readers read its input (its arithmetic went into their weights or the
        graph's input stage)."""
        (x,), (y,) = t.inputs, t.outputs
        for n in self.cons.get(y, []):
            n.inputs = [x if i == y else i for i in n.inputs]
        self.nodes.remove(t)

    def why(self, t) -> str:
        p = self.prods.get(t.inputs[0])
        before = f"{p.op} {p.name!r}" if p is not None else "the graph's input"
        after = ", ".join(f"{r.op} {r.name!r}" for r in self.cons.get(t.outputs[0], [])) or "the graph's output"
        return (f"a constant scale or offset between {before} and {after} cannot be folded: edgedfa folds one"
                " into the Dense or Conv before it (through reshapes, and through ReLU and pooling when it is"
                " a positive scale) or into every Dense or Conv after it (through reshapes), one value per unit"
                " or channel, and an offset never into a zero-padded Conv; on the graph's input (read by nothing"
                " else) it is applied to the data; scale the weights or the data instead")


def _compact(v) -> list:
    """``v`` with every axis along which it is constant cut to length 1, as nested lists."""
    v = np.asarray(v, dtype=np.float64)
    for ax in range(v.ndim):
        first = v.take([0], axis=ax)
        if v.shape[ax] > 1 and np.all(v == first):
            v = first
    return v.tolist()


def _per_channel(v):
    """One value per channel (axis 0 of a sample) when ``v`` is constant over the rest, else None."""
    flat = v.reshape(v.shape[0], -1) if v.ndim else v.reshape(1, 1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else None


def _per_unit(v):
    """One value per unit of the last axis when ``v`` is constant over the others, else None."""
    flat = v.reshape(-1, v.shape[-1]) if v.ndim else v.reshape(1, 1)
    return flat[0].copy() if np.all(flat == flat[:1]) else None


def _spread(per_channel, shape):
    return np.array(np.broadcast_to(per_channel.reshape((-1,) + (1,) * (len(shape) - 1)), shape))


def _per_sample_perm(node):
    perm = [int(p) for p in node.attrs["perm"]]
    return None if perm[0] != 0 else [p - 1 for p in perm[1:]]


def _move(node, v, out_shape):
    """``v`` (a per-sample constant on the move's input) as the move lays it out."""
    if node.op == "Transpose":
        perm = _per_sample_perm(node)
        return None if perm is None else np.transpose(v, perm)
    return v.reshape(out_shape)


def _inverse_move(node, v, in_shape):
    """``v`` (on the move's output) on the move's input."""
    if node.op == "Transpose":
        perm = _per_sample_perm(node)
        return None if perm is None else np.transpose(v, np.argsort(perm))
    return v.reshape(in_shape)


def _scale_rows(host, a, b) -> bool:
    """host(x) * a + b as the host's own weights: per output unit (Dense) or channel (Conv)."""
    if a is None or b is None:
        return False
    pick = _per_unit if host.op == "Dense" else _per_channel
    au, bu = pick(a), pick(b)
    w = np.asarray(host.params["W"], dtype=np.float64)
    if au is None or bu is None or au.size != w.shape[0]:
        return False
    bias = np.asarray(host.params.get("B", np.zeros(w.shape[0])), dtype=np.float64).reshape(-1)
    host.params["W"] = w * au.reshape((-1,) + (1,) * (w.ndim - 1))
    host.params["B"] = bias * au + bu
    return True


def _columns_fit(host, a, b) -> bool:
    """Whether host(x * a + b) is a host of other weights: one value per input feature (Dense)
    or input channel (Conv), and no offset into a Conv's zero padding."""
    if a is None or b is None:
        return False
    w = np.asarray(host.params["W"])
    if host.op == "Dense":
        au, bu = _per_unit(a), _per_unit(b)
        return au is not None and bu is not None and au.size == w.shape[1]
    ac, bc = _per_channel(a), _per_channel(b)
    padded = any(int(p) for p in host.attrs.get("pads", ()))
    return ac is not None and bc is not None and ac.size == w.shape[1] * int(host.attrs.get("group", 1)) and \
        not (padded and np.any(bc))


def _scale_columns(host, a, b) -> None:
    w = np.asarray(host.params["W"], dtype=np.float64)
    bias = np.asarray(host.params.get("B", np.zeros(w.shape[0])), dtype=np.float64).reshape(-1)
    if host.op == "Dense":
        au, bu = _per_unit(a), _per_unit(b)
        host.params["B"] = bias + w @ bu
        host.params["W"] = w * au[None, :]
        return
    ac, bc = _per_channel(a), _per_channel(b)
    group = int(host.attrs.get("group", 1))
    per_in, per_out = w.shape[1], w.shape[0] // group
    first = (np.arange(w.shape[0]) // per_out) * per_in  # each output's first input channel
    cols = first[:, None] + np.arange(per_in)[None, :]  # (out, in/group) -> input channel
    spread = (w.shape[0], per_in) + (1,) * (w.ndim - 2)
    host.params["B"] = bias + (w * bc[cols].reshape(spread)).reshape(w.shape[0], -1).sum(axis=1)
    host.params["W"] = w * ac[cols].reshape(spread)


__all__ = ["AFFINE", "emit_affine", "fold_affines", "legacy_align"]
