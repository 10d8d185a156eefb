"""Op handlers keyed by ONNX op type and the version (``since_version``) of its schema.

A handler turns one ONNX node into canonical Graph nodes; register one per op and version
with ``@register("Conv", 1, 11, 22)``. Registering a key twice is an error.
"""

from __future__ import annotations

import onnx.defs

from ..errors import EdgeDFAError
from ..registry import Registry

_HANDLERS = Registry("ONNX op handler")  # keys "<op type>-<schema version>"


def register(op_type: str, *versions: int):
    """Register the decorated handler for ``op_type`` at each schema version given."""
    if not versions:
        raise EdgeDFAError(f"register({op_type!r}) needs at least one opset version")
    return _HANDLERS.register(*(f"{op_type}-{int(v)}" for v in versions))


def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The ``since_version`` of ``op_type`` as a model importing ``opset`` sees it."""
    if domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except Exception:  # no such op at this opset
        return None


def lookup(op_type: str, opset: int, domain: str = ""):
    """The handler for ``op_type`` in a model of ``opset``, or None."""
    version = schema_version(op_type, opset, domain)
    return None if version is None else _HANDLERS.find(f"{op_type}-{version}")


def supported() -> dict:
    """Op type -> sorted schema versions with a handler."""
    out: dict = {}
    for key in _HANDLERS.names():
        op, v = key.rsplit("-", 1)
        out.setdefault(op, []).append(int(v))
    return {op: sorted(vs) for op, vs in sorted(out.items())}


def supported_text() -> str:
    return ", ".join(f"{op} (opset versions {', '.join(map(str, vs))})"
                     for op, vs in supported().items())
