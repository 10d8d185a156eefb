"""Recurrent nodes batch-first: layout 0 becomes layout 1 and the tensors around them follow.

Each tensor the rewrite replaces is tracked as ``old = new.transpose(perm)``, ``new`` being
batch-first. A reader of ``old`` is rebuilt on ``new`` with its axes mapped through ``perm``;
its output is tracked in turn until it is batch-first again, where it is materialised by
nothing (identity) or one batch-keeping Transpose. A reader that cannot be mapped is an error.
"""

import numpy as np
from onnx import AttributeProto

from ..ir import BATCH, SENTINEL, OGraph, ONode, batch_axis
from .rnn import RECURRENT

LAYOUT1_PERMS = ([1, 2, 0, 3], [1, 0, 2], [1, 0, 2])  # Y, Y_h, Y_c: layout 0 from layout 1
SEQ_FIRST = [1, 0, 2]  # X [T, N, I] from [N, T, I]
ELEMENTWISE = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "Identity", "Dropout", "Cast", "HardSigmoid",
               "HardSwish", "Gelu", "NormalCdf", "Elu", "Selu", "Celu", "Softplus", "Mish")
REGROUP = ("Squeeze", "Unsqueeze", "Reshape", "Flatten")
REDUCTIONS = {"ReduceMean": 18, "ReduceMax": 18, "ReduceSum": 13}  # the opset from which axes are an input
MIN_OPSET = 14  # the first opset whose RNN/GRU/LSTM have the layout attribute
EXPORT_HINT = ("export the recurrent layer with batch_first=True and read its output batch "
               "first (output[:, -1], h_n[-1], or the whole output reshaped without moving "
               "the batch)")


def batch_first(og: OGraph):
    """Every layout-0 RNN/GRU/LSTM becomes layout 1; no tensor keeps its batch off axis 0."""
    seq_first = any(_seq_first(n) for n in og.nodes)
    if seq_first and og.opset < MIN_OPSET:
        _upgrade_opset(og)
        return og, True
    if not seq_first and not _batch_moved(og):
        return og, False
    return og, _Rewrite(og).run()


def _batch_moved(og: OGraph) -> bool:
    """Whether some data tensor has its batch on an axis other than 0."""
    return any(batch_axis(shape) not in (0, None) for name, shape in og.shapes().items()
               if name not in og.consts)


def _seq_first(node: ONode) -> bool:
    return node.op_type in RECURRENT and not int(node.attrs.get("layout", 0))


def _merged(d) -> bool:
    """A folded dimension that is the batch size times another axis (``k·SENTINEL``, k > 1)."""
    return isinstance(d, (int, np.integer)) and d > SENTINEL and d % SENTINEL == 0


def _show(shape) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("N" if d == BATCH else "?" if d is None else f"{d // SENTINEL}·N" if _merged(d)
                           else str(d) for d in shape) + "]"


def _identity(perm) -> bool:
    return list(perm) == list(range(len(perm)))


def _upgrade_opset(og: OGraph):
    """Convert the light graph to opset 14, where the layout attribute exists."""
    from onnx import version_converter

    try:
        model = version_converter.convert_version(og.to_model(), MIN_OPSET)
    except Exception as exc:  # noqa: BLE001  (no adapter, or a graph it refuses: say so)
        og.fail(f"making the recurrent layers batch-first needs opset {MIN_OPSET} (the layout "
                f"attribute) and converting this opset-{og.opset} model failed ({exc}); "
                f"re-export it with opset_version >= {MIN_OPSET}")
    from onnx import numpy_helper

    og.meta.setdefault("source_opset", og.opset)
    og.nodes = [ONode.from_proto(n, i) for i, n in enumerate(model.graph.node)]
    og.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    og.opset, og.opset_imports = MIN_OPSET, list(model.opset_import)
    og.ir_version = max(og.ir_version, int(model.ir_version))
    og.touch()


class _Rewrite:
    """One sweep in topological order over the graph, with shapes as inferred before it."""

    def __init__(self, og: OGraph):
        self.og = og
        self.shapes = dict(og.shapes())
        self.producers = og.producers()
        self.tracked: dict = {}  # old tensor -> (new tensor, perm, who wrote old)
        self.alias: dict = {}  # old tensor -> the tensor equal to it
        self.out: list = []
        self.changed = False

    def run(self):
        for node in self.og.topological(strict=False):
            node.inputs = [self.alias.get(i, i) for i in node.inputs]
            if _seq_first(node):
                self.changed = True
                self.recurrent(node)
            elif any(i in self.tracked for i in node.inputs):
                self.reader(node)
            elif self.moves_batch(node):  # a batch-first input read as identity-tracked
                self.changed = True
                x = node.inputs[0]
                self.tracked[x] = (x, list(range(len(self.shape(x)))), node.label())
                self.reader(node)
                del self.tracked[x]
            else:
                self.out.append(node)
        og = self.og
        og.output_name = self.alias.get(og.output_name, og.output_name)
        if og.output_name in self.tracked:
            og.fail(f"the graph output {og.output_name!r} (shape "
                    f"{_show(self.shape(og.output_name))}) does not have the batch first; "
                    + EXPORT_HINT)
        og.nodes = self.out
        og.touch()
        return self.changed

    # -- helpers ------------------------------------------------------------------------
    def shape(self, name):
        if name in self.og.consts:
            return tuple(self.og.consts[name].shape)
        return self.shapes.get(name)

    def known(self, node, name):
        shape = self.shape(name)
        src = self.shape(node.inputs[0]) if node.op_type == "Reshape" and node.inputs else None
        mixes = shape is not None and None in shape and src is not None and None not in src and BATCH in src
        if shape is not None and (any(_merged(d) for d in shape) or mixes):
            what = "a size no constant gives: it seems to merge the batch with another axis" if mixes else \
                "the batch merged with another axis"
            self.og.fail(f"it writes {name!r} of shape {_show(shape)}, {what} "
                         "(nn.MultiheadAttention and nn.TransformerEncoderLayer fold the heads into the batch this "
                         "way). edgedfa keeps the batch apart from every other axis: write the attention on "
                         "batch-first [N, heads, T, d] tensors (F.scaled_dot_product_attention, or q @ k.transpose(-2, "
                         "-1) and a softmax), which import", node)
        if shape is None or None in shape or batch_axis(shape) is None:
            self.og.fail(f"cannot make {name!r} batch-first: its shape is not known "
                         f"({_show(shape)})", node)
        return shape

    def emit(self, name, op, inputs, out, **attrs):
        node = ONode(name, op, inputs, [out])
        for key, value in attrs.items():
            kind = AttributeProto.INTS if isinstance(value, list) else AttributeProto.INT
            node.set_attr(key, value, kind)
        self.out.append(node)
        return node

    def axes_node(self, name, op, x, axes, out):
        """Squeeze/Unsqueeze: axes as an input from opset 13, as an attribute before."""
        if self.og.opset >= 13:
            return self.emit(name, op, [x, self.const(name + "_axes", axes)], out)
        return self.emit(name, op, [x], out, axes=list(axes))

    def const(self, base, values):
        return self.og.add_const(base, np.asarray(values, dtype=np.int64))

    def transposed(self, src, perm, node, out=None):
        """A tensor equal to ``src.transpose(perm)`` (``perm`` keeps the batch first)."""
        if _identity(perm):
            if out is not None:
                self.alias[out] = src
            return src
        if perm[0] != 0:
            raise AssertionError("only batch-keeping transposes are materialised")
        out = out or self.og.fresh(node.name + "_bf")
        self.emit(self.og.fresh(node.name + "_bf_transpose"), "Transpose", [src], out,
                  perm=[int(p) for p in perm])
        return out

    def settle(self, node, old, new, perm, origin):
        """``old`` equals ``new.transpose(perm)``: materialise it when batch-first, else track."""
        if perm[0] == 0:
            self.transposed(new, perm, node, out=old)
        else:
            self.tracked[old] = (new, [int(p) for p in perm], origin)

    def output_for(self, node, perm):
        """Name a rebuilt node writes: the old one when nothing is left to permute."""
        old = node.outputs[0]
        return old if _identity(perm) else self.og.fresh(old + "_bf")

    def finish(self, node, new_out, perm, origin):
        if new_out != node.outputs[0]:
            self.settle(node, node.outputs[0], new_out, perm, origin)

    def moves_batch(self, node) -> bool:
        """A layout op reading a batch-first tensor and writing one with the batch elsewhere."""
        if node.op_type not in ("Transpose", "Gather") + REGROUP or not node.inputs:
            return False
        out = self.shape(node.outputs[0]) if node.outputs else None
        return batch_axis(self.shape(node.inputs[0])) == 0 and batch_axis(out) not in (0, None)

    def unsupported(self, node, name, why=""):
        _, perm, origin = self.tracked[name]
        where = (f"moves the batch of {name!r} off axis 0" if _identity(perm) else
                 f"reads {name!r}, which {origin} writes with the batch on axis "
                 f"{perm.index(0)}")
        self.og.fail(f"it {where}{why}; edgedfa keeps the batch first and rewrites only "
                     "Transpose, Squeeze, Unsqueeze, Reshape, Flatten, Gather, Split, Slice, Concat, Add/Sum/Mul, "
                     "ReduceMean/Max/Sum, LayerNormalization over unmoved trailing axes, MatMul by a constant and "
                     "element-wise readers of such a tensor, and only "
                     "when they keep the batch apart from other axes. Instead, " + EXPORT_HINT,
                     node)

    # -- recurrent nodes ----------------------------------------------------------------
    def recurrent(self, node):
        x = node.inputs[0]
        if x in self.tracked:
            new, perm, _ = self.tracked[x]
            want = [perm[i] for i in SEQ_FIRST]
            if want[0] != 0:
                self.unsupported(node, x, " (a recurrent input needs it [seq, N, features])")
            node.inputs[0] = self.transposed(new, want, node)
        else:
            self.untracked_input(node, x)
        states = [i for i in (5, 6) if i < len(node.inputs) and node.inputs[i]]
        if states:
            self.og.fail(f"the initial state {node.inputs[states[0]]!r} must be absent or zero",
                         node)
        node.set_attr("layout", 1, AttributeProto.INT)
        for k, old in enumerate(node.outputs):
            if old:
                new = self.og.fresh(f"{node.name}_{('Y', 'Y_h', 'Y_c')[k]}")
                node.outputs[k] = new
                self.tracked[old] = (new, LAYOUT1_PERMS[k], f"the recurrent {node.label()}")
        self.out.append(node)

    def untracked_input(self, node, x):
        """Fail: an untracked layout-0 input is not the transpose of a batch-first tensor."""
        shape = self.shape(x)
        axis = batch_axis(shape)
        if axis == 0:
            self.og.fail(f"it reads {x!r} (shape {_show(shape)}) as "
                         "[seq, batch, features] (layout 0), so the model input's first axis "
                         "is its sequence, not the batch: the model was exported "
                         "sequence-first. edgedfa needs the batch first: export with "
                         "batch_first=True so the input is [batch, seq, features]", node)
        src = self.producers.get(x)
        where = f"{src.label()}, which edgedfa cannot follow" if src else "outside the graph"
        self.og.fail(f"its input {x!r} (shape {_show(shape)}) has the batch on axis {axis} "
                     f"and comes from {where} back to a batch-first tensor; edgedfa inserts no "
                     "transpose of the batch: " + EXPORT_HINT, node)

    # -- readers of tracked tensors -----------------------------------------------------
    def reader(self, node):
        op = node.op_type
        data = [i for i in node.inputs if i and i not in self.og.consts]
        first = next(i for i in node.inputs if i in self.tracked)
        if op == "Split" and node.inputs[0] == first:
            return self.split(node, first)
        if not node.outputs or not node.outputs[0] or any(
                self.og.uses(o) for o in node.outputs[1:] if o):
            self.unsupported(node, first, f" and {op} writes several outputs")
        if op == "Transpose":
            return self.transpose(node, first)
        if op in REGROUP:
            return self.regroup(node, first)
        if op == "Gather" and node.inputs[0] == first:
            return self.gather(node, first)
        if op == "Slice" and node.inputs[0] == first:
            return self.slice(node, first)
        if op in REDUCTIONS and node.inputs[0] == first:
            return self.reduce(node, first)
        if op == "Gemm" and node.inputs[0] == first and self.tracked[first][1] == [1, 0] \
                and node.attrs.get("transA", 0):  # Gemm(x.T, transA=1) is Gemm(x)
            node.inputs[0] = self.tracked[first][0]
            node.set_attr("transA", 0, AttributeProto.INT)
            return self.out.append(node)
        if op in ELEMENTWISE and data == [first] and node.inputs[0] == first:
            return self.same_layout(node, [first])
        if op in ("MatMul", "Add", "PRelu") and data == [first] and self.on_last_axis(node, first):
            return self.same_layout(node, data)
        if op == "LayerNormalization" and node.inputs[0] == first and self.trailing_unmoved(node, first):
            return self.same_layout(node, [first])
        if op == "RMSNormalization" and node.domain and node.inputs[0] == first \
                and all(self.tracked[first][1][a] == a for a in node.attrs["axes"]):  # the features of [T, N, H]
            return self.same_layout(node, [first])
        if op in ("Concat", "Add", "Sum", "Mul") and data == [i for i in node.inputs if i]:
            return self.same_layout(node, data)
        self.unsupported(node, first)

    def on_last_axis(self, node, x) -> bool:
        """MatMul by a constant matrix, or Add of a constant row (or PRelu by a slope row): all act on
        the last axis."""
        perm, c = self.tracked[x][1], self.og.consts.get(node.inputs[1 - node.inputs.index(x)])
        if perm[-1] != len(perm) - 1 or c is None:
            return False
        if node.op_type == "MatMul":
            return node.inputs[0] == x and c.ndim == 2
        return c.ndim <= len(perm) and all(d == 1 for d in c.shape[:-1])

    def trailing_unmoved(self, node, x) -> bool:
        """A LayerNormalization over trailing axes that the batch-first rewrite left in place
        (the features of a seq-first [T, N, H]): the same normalisation on the batch-first tensor."""
        perm = self.tracked[x][1]
        axis = int(node.attrs.get("axis", -1)) % len(perm)
        return all(perm[a] == a for a in range(axis, len(perm)))

    def transpose(self, node, x):
        new, perm, origin = self.tracked[x]
        q = [int(p) for p in node.attrs.get("perm", list(range(len(perm)))[::-1])]
        self.settle(node, node.outputs[0], new, [perm[i] for i in q], origin)

    def gather(self, node, x):
        new, perm, origin = self.tracked[x]
        index = self.og.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
        axis = int(node.attrs.get("axis", 0)) % len(perm)
        if index is None or np.ndim(index) > 1 or perm[axis] == 0:
            self.unsupported(node, x, " (a Gather needs a constant index off the batch axis)")
        new_axis = perm[axis]
        if np.ndim(index) == 0:
            perm = [p - (p > new_axis) for i, p in enumerate(perm) if i != axis]
        out = self.output_for(node, perm)
        self.emit(node.name, "Gather", [new, node.inputs[1]], out, axis=new_axis)
        self.finish(node, out, perm, origin)

    def split(self, node, x):
        """A Split off the batch axis (timm's ``qkv.permute(2, 0, 3, 1, 4).unbind(0)``) is the same
        Split of the batch-first tensor along the mapped axis; every part keeps the layout."""
        new, perm, origin = self.tracked[x]
        axis = int(node.attrs.get("axis", 0)) % len(perm)
        if perm[axis] == 0:
            self.unsupported(node, x, " (a Split of the batch)")
        node.inputs[0] = new
        node.set_attr("axis", perm[axis], AttributeProto.INT)
        olds = list(node.outputs)
        node.outputs = [self.output_for(node, perm) if o else o for o in olds]
        self.out.append(node)
        for old, out in zip(olds, node.outputs):
            if out and out != old:
                self.settle(node, old, out, perm, origin)

    def slice(self, node, x):
        """A Slice with constant axes off the batch: the same Slice of the batch-first tensor along
        the mapped axes (a Slice-1 with its attributes, later ones with their inputs)."""
        new, perm, origin = self.tracked[x]
        rank = len(perm)
        if self.og.opset < 10:
            starts = node.attrs.get("starts", [])
            axes = node.attrs.get("axes", list(range(len(starts))))
        else:
            starts = self.og.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
            given = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
            axes = self.og.consts.get(given) if given else (None if starts is None else range(np.size(starts)))
            if axes is None:
                self.unsupported(node, x, " (a Slice whose axes are not constant)")
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        if any(perm[a] == 0 for a in axes):
            self.unsupported(node, x, " (a Slice of the batch)")
        mapped = [perm[a] for a in axes]
        node.inputs[0] = new
        if self.og.opset < 10:
            node.set_attr("axes", mapped, AttributeProto.INTS)
        else:
            while len(node.inputs) < 4:
                node.inputs.append("")
            node.inputs[3] = self.const(node.name + "_axes", mapped)
        old = node.outputs[0]
        out = self.output_for(node, perm)
        node.outputs = [out]
        self.out.append(node)
        if out != old:
            self.settle(node, old, out, perm, origin)

    def reduce(self, node, x):
        """A mean, maximum or sum over non-batch axes (a sequence's time axis: ``y.mean(dim=0)``
        on [T, N, H]) is the same reduction of the batch-first tensor, its axes mapped through perm."""
        new, perm, origin = self.tracked[x]
        rank = len(perm)
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            value = self.og.consts.get(node.inputs[1])
            if value is None:
                self.unsupported(node, x, " (its axes are not a constant)")
            axes = [int(a) for a in np.asarray(value).reshape(-1)]
        if not axes and node.attrs.get("noop_with_empty_axes", 0):
            return self.settle(node, node.outputs[0], new, perm, origin)
        axes = sorted({int(a) % rank for a in axes}) if axes else list(range(rank))
        if any(perm[a] == 0 for a in axes):
            self.unsupported(node, x, f" (a {node.op_type} over the batch)")
        new_axes = sorted(perm[a] for a in axes)
        keep = int(node.attrs.get("keepdims", 1))
        out_perm = list(perm) if keep else [p - sum(q < p for q in new_axes)
                                            for i, p in enumerate(perm) if i not in axes]
        out = self.output_for(node, out_perm)
        if self.og.opset >= REDUCTIONS[node.op_type]:  # axes an input from then on, an attribute before
            self.emit(node.name, node.op_type, [new, self.const(node.name + "_axes", new_axes)], out, keepdims=keep)
        else:
            self.emit(node.name, node.op_type, [new], out, axes=new_axes, keepdims=keep)
        self.finish(node, out, out_perm, origin)

    def same_layout(self, node, names):
        """Element-wise ops, Add/Sum/Mul and Concat: every data input tracked with one perm."""
        found = [self.tracked.get(n) for n in names]
        if any(f is None for f in found) or len({tuple(f[1]) for f in found}) != 1 or (
                node.op_type != "Concat" and len({self.shape(n) for n in names}) != 1):
            bad = next(n for n in names if n in self.tracked)
            self.unsupported(node, bad, " and its other inputs do not line up with it")
        perm, origin = found[0][1], found[0][2]
        if node.op_type == "Concat":
            axis = int(node.attrs.get("axis", 0)) % len(perm)
            if perm[axis] == 0:
                self.unsupported(node, names[0], " (Concat over the batch)")
            node.set_attr("axis", perm[axis], AttributeProto.INT)
        node.inputs = [self.tracked[i][0] if i in self.tracked else i for i in node.inputs]
        old, out = node.outputs[0], self.output_for(node, perm)
        node.outputs = [out] + node.outputs[1:]
        self.out.append(node)
        if out != old:
            self.settle(node, old, out, perm, origin)

    def regroup(self, node, x):
        """Squeeze/Unsqueeze/Reshape/Flatten as a regrouping of axes, mapped through perm."""
        new, perm, origin = self.tracked[x]
        src, dst = self.known(node, x), self.known(node, node.outputs[0])
        plan = _regroup(src, dst, perm)
        if plan is None:
            self.unsupported(node, x, f" and {node.op_type} to {dst} cannot be done on the "
                             "batch-first tensor")
        groups, order, out_perm = plan
        flat = [j for _, b in order for j in b]
        dropped = sorted(perm[a[0]] for a, b in groups if not b)
        new_units = {b[0] for a, b in groups if not a}
        inserted = [k for k, j in enumerate(flat) if j in new_units]
        simple = all(len(a) <= 1 and len(b) <= 1 for a, b in groups)
        if simple and not dropped and not inserted:
            return self.settle(node, node.outputs[0], new, out_perm, origin)
        out = self.output_for(node, out_perm)
        if simple and not inserted:
            self.axes_node(node.name, "Squeeze", new, dropped, out)
        elif simple and not dropped:
            self.axes_node(node.name, "Unsqueeze", new, inserted, out)
        else:
            target = [0 if dst[j] == BATCH else int(dst[j]) for j in flat]
            self.emit(node.name, "Reshape", [new, self.const(node.name + "_shape", target)],
                      out)
        self.finish(node, out, out_perm, origin)


def _groups(src, dst):
    """Pair runs of ``src`` axes with runs of ``dst`` axes of equal size: [(src, dst)].

    Length-1 axes that appear or vanish get a group with an empty side; the batch must map
    to the batch alone. None when the two shapes are no such regrouping of each other.
    """
    i = j = 0
    groups = []
    while i < len(src) or j < len(dst):
        a_one = i < len(src) and src[i] == 1
        b_one = j < len(dst) and dst[j] == 1
        if a_one and not b_one:
            groups.append(([i], []))
            i += 1
        elif b_one and not a_one:
            groups.append(([], [j]))
            j += 1
        elif i >= len(src) or j >= len(dst):
            return None
        elif BATCH in (src[i], dst[j]):
            if src[i] != dst[j]:
                return None
            groups.append(([i], [j]))
            i, j = i + 1, j + 1
        else:
            a, b, pa, pb = [i], [j], src[i], dst[j]
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb and i < len(src) and src[i] != BATCH:
                    a, pa, i = a + [i], pa * src[i], i + 1
                elif pb < pa and j < len(dst) and dst[j] != BATCH:
                    b, pb, j = b + [j], pb * dst[j], j + 1
                else:
                    return None
            groups.append((a, b))
    return groups


def _regroup(src, dst, perm):
    """(groups, groups in batch-first output order, output perm), or None.

    ``src`` is ``new.transpose(perm)``; each group of ``src`` axes must be consecutive,
    ascending axes of ``new`` so that the same regrouping applies to ``new``.
    """
    groups = _groups(src, dst)
    if groups is None:
        return None
    keyed, key = [], 0.0
    for index, (a, b) in enumerate(groups):
        if a:
            axes = [perm[o] for o in a]
            if axes != list(range(axes[0], axes[0] + len(axes))):
                return None
            key = float(axes[0])
        if b:
            keyed.append((key if a else key + 0.5, index, (a, b)))
    order = [g for _, _, g in sorted(keyed)]
    position = {j: k for k, j in enumerate(j for _, b in order for j in b)}
    out_perm = [position[j] for j in range(len(dst))]
    if dst[out_perm.index(0)] != BATCH:
        return None
    return groups, order, out_perm
