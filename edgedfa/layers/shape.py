"""Data movement (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Gather) and merges (Add, Mul, Concat)."""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor, exact_sum, narrow_wide, requantize
from ..scaling import observe
from .base import Layer, register
from .dense import calibrated_format


class _Move(Layer):
    """A layer that only rearranges codes: the error goes back by the inverse move."""

    def move(self, codes):
        raise NotImplementedError

    def forward(self, xs, train=False):
        x = xs[0]
        return QTensor(self.move(x.codes), x.fmt), x.codes.shape

    def backward(self, cache, dy, need_dx):
        return [QTensor(self.unmove(dy.codes, cache), dy.fmt)], {}

    def unmove(self, codes, in_shape):
        return codes.reshape(in_shape)

    def infer_shape(self):
        return tuple(self.move(np.zeros((1,) + self.in_shapes[0], dtype=np.int8)).shape[1:])


@register("Flatten")
class Flatten(_Move):
    def move(self, codes):
        axis = int(self.node.attrs.get("axis", 1))
        if axis < 0:
            axis += codes.ndim
        if axis != 1:
            raise EdgeDFAError(f"node {self.name!r}: Flatten axis {axis} (only 1 keeps the batch)")
        return codes.reshape(codes.shape[0], -1)


@register("Reshape")
class Reshape(_Move):
    def move(self, codes):
        shape = [int(s) for s in self.node.attrs["shape"]]
        if shape and shape[0] in (0, -1):
            shape = [codes.shape[0]] + [(-1 if s == -1 else s) for s in shape[1:]]
        shape = [codes.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        try:
            return codes.reshape(shape)
        except ValueError as exc:
            raise EdgeDFAError(f"node {self.name!r}: cannot reshape {codes.shape} to {shape}") from exc


@register("Transpose")
class Transpose(_Move):
    def _perm(self, ndim):
        return [int(p) for p in self.node.attrs.get("perm", list(range(ndim))[::-1])]

    def move(self, codes):
        perm = self._perm(codes.ndim)
        if perm[0] != 0:
            raise EdgeDFAError(f"node {self.name!r}: Transpose perm {perm} moves the batch axis")
        return codes.transpose(perm)

    def unmove(self, codes, in_shape):
        return codes.transpose(np.argsort(self._perm(codes.ndim)))


def _axes(node, ndim):
    return sorted(int(a) % ndim for a in node.attrs.get("axes", []))


@register("Squeeze")
class Squeeze(_Move):
    def move(self, codes):
        axes = _axes(self.node, codes.ndim) or [i for i, s in enumerate(codes.shape) if s == 1 and i]
        if 0 in axes:
            raise EdgeDFAError(f"node {self.name!r}: Squeeze of the batch axis")
        return codes.squeeze(tuple(axes))


@register("Unsqueeze")
class Unsqueeze(_Move):
    def move(self, codes):
        axes = _axes(self.node, codes.ndim + len(self.node.attrs.get("axes", [])))
        out = codes
        for a in axes:
            out = np.expand_dims(out, a)
        return out


@register("Gather")
class Gather(_Move):
    """Constant indices along a non-batch axis (attrs ``axis`` with the batch at 0, ``indices``:
    an int removes the axis, a list of distinct ints keeps it); the error goes back to the
    gathered places, zeros elsewhere (exact: no place is read twice)."""

    def move(self, codes):
        axis = int(self.node.attrs["axis"])
        if axis == 0:
            raise EdgeDFAError(f"node {self.name!r}: Gather along the batch axis")
        return np.take(codes, self.node.attrs["indices"], axis=axis)

    def unmove(self, codes, in_shape):
        axis, idx = int(self.node.attrs["axis"]), self.node.attrs["indices"]
        out = np.zeros(in_shape, dtype=codes.dtype)
        where = [slice(None)] * len(in_shape)
        where[axis] = idx
        out[tuple(where)] = codes
        return out


@register("Add")
class Add(Layer):
    """Element-wise sum of activations: aligned exactly, then requantized to a static format.
    ``signs`` (attr, default all +1): an operand with -1 is subtracted (ONNX Sub of two data
    tensors); its code is negated exactly, and so is the error it receives (§7)."""

    changes_scale = True

    def infer_shape(self):
        return tuple(np.broadcast_shapes(*self.in_shapes))

    @property
    def signs(self) -> list:
        return list(self.node.attrs.get("signs") or [1] * len(self.in_shapes))

    def _wide(self, xs):
        return exact_sum([x if s > 0 else QTensor(-np.asarray(x.codes, np.int64), x.fmt)
                          for x, s in zip(xs, self.signs)])

    def forward(self, xs, train=False):
        acc = self._wide(xs)
        y = requantize(acc.codes, acc.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            observe(self, "out", acc, self.out_fmt, y)
        return QTensor(y, self.out_fmt), [x.codes.shape for x in xs]

    def calibrate(self, xs):
        self.out_fmt = calibrated_format(self._wide(xs), self.num)

    def backward(self, cache, dy, need_dx):
        return [QTensor(s * unbroadcast(dy.codes, shape), dy.fmt) for shape, s in zip(cache, self.signs)], {}


def unbroadcast(codes, shape):
    """Sum an error over the axes its input was broadcast along (exact: int64 codes)."""
    while codes.ndim > len(shape):
        codes = codes.sum(axis=0)
    for ax, s in enumerate(shape):
        if s == 1 and codes.shape[ax] != 1:
            codes = codes.sum(axis=ax, keepdims=True)
    return codes


class Product(Layer):
    """A product of two activations (``_wide``: the wide result of the codes), requantized to a
    format of its own (calibrated, or moved by the exponent unit); both inputs cached."""

    changes_scale = True

    def _wide(self, xs) -> QTensor:
        raise NotImplementedError

    def forward(self, xs, train=False):
        wide = self._wide(xs)
        y = requantize(wide.codes, wide.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        if train:
            observe(self, "out", wide, self.out_fmt, y)
        return QTensor(y, self.out_fmt), (list(xs) if train else None)

    def calibrate(self, xs):
        self.out_fmt = calibrated_format(self._wide(xs), self.num)


@register("Mul")
class Mul(Product):
    """Element-wise product of two activations (a gate; ``x * sigmoid(x)``, PyTorch's SiLU):
    the exact product of the codes, requantized to a format of its own. Each input's error is
    dy times the other input, exact, summed over the axes that input was broadcast along, then
    its top err_bits kept (§9.4)."""

    def infer_shape(self):
        return tuple(np.broadcast_shapes(*self.in_shapes))

    def _wide(self, xs) -> QTensor:
        a, b = xs
        frac = a.fmt.frac_bits + b.fmt.frac_bits
        return QTensor(np.asarray(a.codes, np.int64) * np.asarray(b.codes, np.int64), FixedFormat.with_frac(48, frac))

    def backward(self, cache, dy, need_dx):
        outs = []
        for i, x in enumerate(cache):
            if not need_dx[i]:
                outs.append(None)
                continue
            other = cache[1 - i]
            wide = unbroadcast(dy.codes * np.asarray(other.codes, np.int64), x.codes.shape)
            outs.append(narrow_wide(wide, dy.fmt.frac_bits + other.fmt.frac_bits, self.num.err_bits,
                                    self.num.err_rounding))
        return outs, {}


@register("Concat")
class Concat(Layer):
    """Concatenation along a non-batch axis; inputs brought to one static format."""

    changes_scale = True

    def _axis(self):
        return int(self.node.attrs.get("axis", 1))

    def infer_shape(self):
        ax = self._axis()
        ax = ax - 1 if ax > 0 else ax + len(self.in_shapes[0])
        shape = list(self.in_shapes[0])
        shape[ax] = sum(s[ax] for s in self.in_shapes)
        return tuple(shape)

    def forward(self, xs, train=False):
        parts = [requantize(x.codes, x.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
                 for x in xs]
        return QTensor(np.concatenate(parts, axis=self._axis()), self.out_fmt), [x.codes.shape for x in xs]

    def calibrate(self, xs):
        self.refresh_format([x.fmt for x in xs])

    def managed_formats(self):
        return {}  # follows its inputs: ap_fixed<A, max I of the inputs>

    def refresh_format(self, in_fmts):
        if in_fmts and all(f is not None for f in in_fmts):
            self.out_fmt = FixedFormat(self.num.act_bits, max(f.int_bits for f in in_fmts))

    def backward(self, cache, dy, need_dx):
        ax = self._axis()
        bounds = np.cumsum([s[ax] for s in cache])[:-1]
        return [QTensor(p, dy.fmt) for p in np.split(dy.codes, bounds, axis=ax)], {}
