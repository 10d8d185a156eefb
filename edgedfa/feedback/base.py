"""What every feedback projector shares: its settings, its values, the registry, the base class.

Feedback is its own kind of state: generated from the seed by the datapath PRNG (§5), never
touched by the optimizer. ``regenerate=True`` is the datapath that rebuilds it on every
projection (no feedback memory, as DF-LNPU does; ``hdl_models`` counts that), ``False`` the
one that stores it. Both give the same bits, so the engine draws a regenerated matrix once
and keeps it (up to ``KEEP_BYTES``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor, narrow_dynamic
from ..prng import PURPOSE_FEEDBACK, stream_id
from ..registry import Registry

VALUE_KINDS = ("uniform", "binary", "ternary")
KEEP_BYTES = 32 << 20  # a regenerated feedback matrix up to this size is generated once per run


@dataclass(frozen=True)
class FeedbackSpec:
    """How a module receives the output error: projector kind, values, sparsity, storage."""

    kind: str = "dense"  # dense | sparse | channel | (registered conv kinds)
    values: str = "uniform"  # uniform | binary | ternary
    k: int = 1  # non-zeros per target unit (sparse)
    bits: int = 8  # width of uniform values
    regenerate: bool = True
    options: tuple = ()  # extra (key, value) pairs for registered kinds

    def __post_init__(self):
        if self.values not in VALUE_KINDS:
            raise EdgeDFAError(f"feedback values {self.values!r}; expected one of {', '.join(VALUE_KINDS)}")
        if self.k < 1:
            raise EdgeDFAError(f"feedback sparsity k={self.k}; must be >= 1")
        if not 2 <= self.bits <= 16:
            raise EdgeDFAError(f"feedback bits={self.bits}; must be in 2..16")

    def option(self, key, default=None):
        return dict(self.options).get(key, default)


def feedback_values(w: np.ndarray, values: str, bits: int) -> np.ndarray:
    """Signed integer feedback values from 32-bit words (§10.1)."""
    w = w.astype(np.int64)
    if values == "binary":
        return np.where(w >> 31, 1, -1)
    if values == "ternary":
        top = w >> 30
        return np.where(top == 3, 1, np.where(top == 0, -1, 0))
    return (w >> (32 - bits)) - (1 << (bits - 1))


def value_bits(spec: FeedbackSpec) -> int:
    """Bits of one stored feedback value: the uniform width, 2 (ternary) or 1 (binary)."""
    return spec.bits if spec.values == "uniform" else 2 if spec.values == "ternary" else 1


def value_frac(spec: FeedbackSpec) -> int:
    """Fraction bits of the feedback values: uniform values lie in [-1, 1), the others are +-1."""
    return (spec.bits - 1) if spec.values == "uniform" else 0


def half_log2(n: int) -> int:
    """ceil(log2(n) / 2): the shift that scales a sum of n unit terms back to unit size."""
    return (max(int(n), 1) - 1).bit_length() // 2 + ((max(int(n), 1) - 1).bit_length() % 2)


_PROJECTORS = Registry("feedback kind", "kind")
register_projector = _PROJECTORS.register


def projector_kinds() -> tuple:
    """The registered feedback kinds."""
    return tuple(_PROJECTORS.names())


def make_projector(spec: FeedbackSpec, layer_index: int, seed: int, target_shape, source_shape):
    """A projector from an error shaped ``source_shape`` (per sample; an int C means the
    output error's C classes) to ``target_shape`` (every kind is registered by ``edgedfa.feedback``)."""
    return _PROJECTORS.get(spec.kind)(spec, layer_index, seed, tuple(target_shape), source_shape)


def as_shape(source_shape) -> tuple:
    """A per-sample shape from an int (C classes) or a sequence."""
    return (int(source_shape),) if np.ndim(source_shape) == 0 else tuple(int(s) for s in source_shape)


class Projector:
    """Base: a source error e (B, *source_shape) -> error at the target (B, *target_shape),
    narrowed to err_bits. The source is the output error (C classes) unless a module takes
    its feedback from another tensor's error (``error_from``); kinds other than ``dilated``
    read it flattened, as ``n_classes`` values."""

    kind = ""

    def __init__(self, spec, layer_index, seed, target_shape, source_shape):
        self.spec, self.index, self.seed = spec, int(layer_index), int(seed)
        self.source_shape = as_shape(source_shape)
        self.target_shape, self.n_classes = tuple(target_shape), int(np.prod(self.source_shape))
        self.n_target = int(np.prod(self.target_shape))
        self.gain_shift = int(spec.option("gain_shift", 0))  # extra 2^-s on the projection (§10.2)
        self._stored = None if spec.regenerate else self.generate()
        self._kept = None  # a regenerated matrix the engine keeps (``matrix``)

    def stream(self, purpose=PURPOSE_FEEDBACK) -> int:
        return stream_id(self.index, purpose)

    def generate(self):
        raise NotImplementedError

    def stored_matrix(self):
        """The feedback as it would sit in memory (regenerated projectors build it anyway)."""
        return self._stored if self._stored is not None else self.generate()

    def frac_bits(self) -> int:
        """Fraction bits of the feedback values, chosen for unit gain."""
        raise NotImplementedError

    def project_wide(self, e: QTensor, fb) -> np.ndarray:
        raise NotImplementedError

    def matrix(self):
        """The feedback a projection reads: the stored one, or, when regenerated, the same
        values from the seed; the engine keeps a regenerated one of up to ``KEEP_BYTES``
        instead of drawing it again at every projection (same bits; the hardware's
        regeneration is what ``hdl_models`` models and counts)."""
        if self._stored is not None:
            return self._stored
        if self._kept is not None:
            return self._kept
        fb = self.generate()
        if sum(np.asarray(a).nbytes for a in (fb if isinstance(fb, tuple) else (fb,))) <= KEEP_BYTES:
            self._kept = fb
        return fb

    def project(self, e: QTensor, err_bits: int, rounding, acc_bits=32) -> QTensor:
        fb = self.matrix()
        acc = self.project_wide(e, fb)
        fmt = FixedFormat.with_frac(acc_bits, e.fmt.frac_bits + self.frac_bits() + self.gain_shift)
        out = narrow_dynamic(acc, fmt, err_bits, rounding)
        return QTensor(self.spread(out.codes), out.fmt)

    def spread(self, codes) -> np.ndarray:
        """Narrowed codes (B, rows) laid out as the target (B, *target_shape)."""
        return codes.reshape((-1,) + self.target_shape)

    def memory_bits(self) -> int:
        raise NotImplementedError

    def macs_per_sample(self) -> int:
        raise NotImplementedError
