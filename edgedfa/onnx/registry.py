"""Op handlers keyed by ONNX op type and the version (``since_version``) of its schema.

A handler turns one ONNX node into canonical Graph nodes; register one per op and version
with ``@register("Conv", 1, 11, 22)``. Registering a key twice is an error.
"""

from __future__ import annotations

import onnx.defs

from ..errors import EdgeDFAError
from ..registry import Registry
from .ir import FUSED_DOMAIN

_HANDLERS = Registry("ONNX op handler")  # keys "<op type>-<schema version>"


def register(op_type: str, *versions: int):
    """Register the decorated handler for ``op_type`` at each schema version given."""
    if not versions:
        raise EdgeDFAError(f"register({op_type!r}) needs at least one opset version")
    return _HANDLERS.register(*(f"{op_type}-{int(v)}" for v in versions))


def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The ``since_version`` of ``op_type`` as a model importing ``opset`` sees it (1 for the
    ops the import passes fuse)."""
    if domain == FUSED_DOMAIN:
        return 1
    if domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except Exception:  # no such op at this opset
        return None


def lookup(op_type: str, opset: int, domain: str = ""):
    """The handler for ``op_type`` in a model of ``opset``, or None."""
    version = schema_version(op_type, opset, domain)
    prefix = f"{FUSED_DOMAIN}." if domain == FUSED_DOMAIN else ""
    return None if version is None else _HANDLERS.find(f"{prefix}{op_type}-{version}")


def register_fused(op_type: str):
    """Register the handler of an op the import passes write in the FUSED_DOMAIN."""
    return _HANDLERS.register(f"{FUSED_DOMAIN}.{op_type}-1")


def supported() -> dict:
    """Op type -> sorted schema versions with a handler (ONNX ops: not the fused ones)."""
    out: dict = {}
    for key in _HANDLERS.names():
        if key.startswith(f"{FUSED_DOMAIN}."):
            continue
        op, v = key.rsplit("-", 1)
        out.setdefault(op, []).append(int(v))
    return {op: sorted(vs) for op, vs in sorted(out.items())}


def supported_text() -> str:
    return ", ".join(f"{op} (opset versions {', '.join(map(str, vs))})"
                     for op, vs in supported().items())
