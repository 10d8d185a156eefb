"""Integer layers, one module per layer kind, registered by canonical op name."""

import importlib

_MODULES = ("dense", "activations", "nonlinear", "shape", "conv", "pool", "recurrent")


def ensure_loaded() -> None:
    """Import every layer module that exists (each registers its ops)."""
    for name in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
