"""edgedfa: fixed-point on-device training with direct feedback alignment."""

import os as _os

# Our GEMMs are small: BLAS threads cost far more than they give (measured: 36 ms vs
# 0.014 ms for a 32x64x256 product on 2 busy cores). Users can still override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

from .errors import EdgeDFAError
from .version import __version__

# The fixed-point names load on first use (PEP 562): `import edgedfa` stays free of numpy, so
# the CLI's handler for Ctrl-C is in place before any slow import (a SIGINT during numpy's
# import used to print a traceback instead of "edgedfa: interrupted").
_FIXED = ("FixedFormat", "Overflow", "Rounding", "apply_overflow", "dequantize", "quantize", "requantize",
          "round_shift")


def __getattr__(name):
    if name in _FIXED:
        from . import fixed

        return getattr(fixed, name)
    raise AttributeError(f"module 'edgedfa' has no attribute {name!r}")


__all__ = [
    "EdgeDFAError", "FixedFormat", "Overflow", "Rounding", "apply_overflow", "dequantize",
    "quantize", "requantize", "round_shift", "load_onnx", "load_checkpoint", "fit",
]


def load_onnx(path, data=None, **kwargs):
    """Import an ONNX file as an integer model (calibrated on ``data`` when given)."""
    from .api import load_onnx as _load

    return _load(path, data=data, **kwargs)


def load_checkpoint(path):
    """Load a trained model from ``checkpoint.npz``."""
    from .checkpoint import load_checkpoint as _load

    return _load(path)


def fit(model="mlp", data=None, *, out=None, config=None, resume=None, force=False, quiet=True,
        backend=None, should_stop=None, **settings):
    """Train as ``edgedfa train`` does, from Python; returns the run's outcome.

    ``model``: a built-in architecture ("mlp", "cnn", "rnn", "gru", "lstm") or an ONNX file.
    ``data``: None (the embedded digits), a built-in dataset's name, an ``.npz`` file, a
    ``Dataset`` or a dict of the arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.
    ``settings``: any key of docs/config.md by name (``algo="dfa", epochs=5, bits=6,
    holdout=0.2``); ``config``: a TOML file of them (keywords win). The run is written to
    ``out`` (default: a new ``runs/<timestamp>``) with checkpoint.npz, metrics.json,
    model.onnx and config.toml; ``resume`` continues a run. The outcome has ``status``
    ("done", "interrupted" or "nothing"), ``out``, ``model`` and ``metrics``.

    Example (README.md)::

        run = edgedfa.fit("cnn", algo="hybrid", epochs=5, out="runs/cnn")
        print(run.metrics["test_accuracy"], run.model.run(x).shape)
    """
    from . import session
    from .data import Dataset, from_arrays

    doc = session.keyword_settings(settings)
    if resume is None:
        key = "onnx" if str(model).lower().endswith(".onnx") else "arch"
        doc.setdefault("model", {})[key] = str(model)
    dataset = None
    if isinstance(data, Dataset):
        dataset = from_arrays(vars(data), data.name, f"data {data.name!r}")
    elif isinstance(data, dict):
        dataset = from_arrays(data, "arrays")
    elif data is not None:
        doc.setdefault("data", {})["path" if str(data).endswith(".npz") else "dataset"] = str(data)
    req = session.Request(doc, config, out, resume, force, quiet, backend, dataset=dataset,
                          should_stop=should_stop, warn=_warn)
    return session.train(req)


def _warn(text):
    import warnings

    warnings.warn(text, stacklevel=3)
