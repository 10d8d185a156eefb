"""Integer GEMM with an explicit accumulator width and overflow mode.

Backends: ``reference`` (numpy int64, one step per k), ``fast`` (the int8 dot-product
units, or exact BLAS, under a checked bound; numba otherwise), ``int8`` (as ``fast``, the
int8 units at any size: tests, small products). All give identical bits; ``fast`` is the
default.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import MAX_WIDTH, Overflow
from . import reference

BACKENDS = ("reference", "fast", "int8")
_default = {"name": "fast"}


def set_default_backend(name: str) -> None:
    """Choose the backend used when a call passes none."""
    if name not in BACKENDS:
        raise EdgeDFAError(f"unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
    _default["name"] = name


def default_backend() -> str:
    return _default["name"]


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def gemm(a, b, acc_bits: int = 32, overflow=Overflow.AP_WRAP, init=None, backend=None):
    """Integer ``a @ b`` (+ ``init``) through a signed ``acc_bits``-bit accumulator.

    Accumulation order is ``init`` first, then k ascending; ``overflow`` is applied after
    every addition (docs/datapath.md §4). Inputs are integer codes; output is int64.
    """
    overflow = Overflow.parse(overflow)
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise EdgeDFAError(f"gemm: shapes {a.shape} and {b.shape} do not multiply")
    for name, x in (("a", a), ("b", b)) + ((("init", np.asarray(init)),) if init is not None else ()):
        if x.dtype.kind not in "biu":
            raise EdgeDFAError(f"gemm: {name} holds {x.dtype} values; pass integer codes")
    if isinstance(acc_bits, bool) or not isinstance(acc_bits, (int, np.integer)) \
            or not 2 <= acc_bits <= MAX_WIDTH + 14:
        raise EdgeDFAError(f"gemm: accumulator width {acc_bits!r} outside 2..{MAX_WIDTH + 14}")
    acc_bits = int(acc_bits)
    out_shape = (a.shape[0], b.shape[1])
    if init is not None and not _broadcasts_to(np.shape(init), out_shape):
        raise EdgeDFAError(f"gemm: init of shape {np.shape(init)} does not fit the output {out_shape}")
    name = backend or _default["name"]
    if name == "reference":
        return reference.gemm(a, b, acc_bits, overflow, init)
    if name in ("fast", "int8"):
        from . import fast

        return fast.gemm(a, b, acc_bits, overflow, init, min_macs=0 if name == "int8" else None)
    raise EdgeDFAError(f"unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
