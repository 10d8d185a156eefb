"""Model state in and out: ``checkpoint.npz``, written atomically, read back exactly.

A checkpoint holds the integer state (parameter codes in their storage dtype, optimizer
state), every static format, the numerics, the seed, the graph's structure (JSON), the
training configuration, the credit plan and the progress: enough to resume bit-exactly and
to export. The numerics are stored as plain values (``numerics_to_dict``); an ONNX export
records them the same way so that ``edgedfa.onnx.export.load_exported`` can restore the
exact integer model (``new_model`` + ``IntModel.load_state``, as here).
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import asdict, fields

import numpy as np

from .errors import EdgeDFAError
from .fixed import FixedFormat, dequantize
from .model import IntModel, graph_from_json, graph_to_json
from .numerics import Numerics
from .train import TrainConfig

FILE = "checkpoint.npz"


# --------------------------------------------------------------------------- metadata

def numerics_to_dict(num: Numerics) -> dict:
    """Numerics as JSON-ready values (modes by name), in field order."""
    return {f.name: _plain(getattr(num, f.name)) for f in fields(num)}


def _plain(v):
    return v.value if isinstance(v, enum.Enum) else v


def numerics_from_dict(d: dict) -> Numerics:
    names = {f.name for f in fields(Numerics)}
    return Numerics().with_overrides({k: v for k, v in d.items() if k in names}, "checkpoint numerics")


def train_config_from_meta(meta: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in meta["train"].items() if k in names})


def new_model(graph, meta: dict, backend=None) -> IntModel:
    """The IntModel that stored metadata (numerics as a dict or Numerics, seed, per-layer
    settings) describe, before its integer state is loaded."""
    num = meta["numerics"]
    num = num if isinstance(num, Numerics) else numerics_from_dict(num)
    return IntModel(graph, num, int(meta["seed"]), meta.get("layer_numerics"), backend)


# --------------------------------------------------------------------------- writing

def checkpoint_arrays(model: IntModel, plan, cfg: TrainConfig, progress: dict, modules_table=None) -> dict:
    """Everything needed to resume bit-exactly and to export."""
    meta = {"format": "edgedfa-checkpoint", "version": 1, "formats": model.formats(),
            "numerics": numerics_to_dict(model.numerics), "layer_numerics": model.layer_numerics,
            "seed": model.seed, "train": asdict(cfg), "plan": plan.describe(), "progress": progress}
    arrays = dict(model.state_arrays())
    arrays["meta_json"] = np.array(json.dumps(meta))
    arrays["graph_json"] = np.array(graph_to_json(model.graph))
    if modules_table:
        arrays["modules_json"] = np.array(json.dumps(modules_table))
    return arrays


def _atomic(path: str, prefix: str, suffix: str, write) -> None:
    """``write(tmp)`` a file next to ``path``, then rename it into place: never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_savez(path: str, **arrays) -> None:
    """An .npz written atomically."""
    _atomic(path, ".ckpt-", ".npz", lambda tmp: np.savez(tmp, **arrays))


def atomic_write(path: str, data, prefix: str = ".tmp-", suffix: str = "") -> None:
    """Text or bytes written atomically."""
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"

    def write(tmp):
        with open(tmp, mode) as fh:
            fh.write(data)

    _atomic(path, prefix, suffix, write)


def save_checkpoint(out_dir: str, model: IntModel, plan, cfg: TrainConfig, progress: dict,
                    modules_table=None) -> str:
    """``out_dir/checkpoint.npz``; returns its path."""
    path = os.path.join(out_dir, FILE)
    atomic_savez(path, **checkpoint_arrays(model, plan, cfg, progress, modules_table))
    return path


# --------------------------------------------------------------------------- reading

def read_checkpoint(path: str) -> dict:
    """Raw checkpoint contents, validated; errors name the file and the missing piece."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE)
    if not os.path.exists(path):
        raise EdgeDFAError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise EdgeDFAError(f"{path}: not a readable checkpoint ({exc})") from exc
    for key in ("meta_json", "graph_json"):
        if key not in arrays:
            raise EdgeDFAError(f"{path}: not an edgedfa checkpoint (no {key})")
    try:
        meta = json.loads(str(arrays.pop("meta_json")))
    except json.JSONDecodeError as exc:
        raise EdgeDFAError(f"{path}: corrupt checkpoint metadata ({exc})") from exc
    return {"path": path, "meta": meta, "graph_json": str(arrays.pop("graph_json")),
            "modules": json.loads(str(arrays.pop("modules_json"))) if "modules_json" in arrays else None,
            "arrays": arrays}


def _float_params(arrays: dict, formats: dict) -> dict:
    """Node -> {param: float values} of the stored codes (the graph's parameters)."""
    params = {}
    for key, codes in arrays.items():
        if key.startswith("param/"):
            prefix, pname = key.rsplit("/", 1)  # node names may hold "/" (TorchScript: /rnn/GRU)
            node = prefix[len("param/"):]
            params.setdefault(node, {})[pname] = dequantize(codes, FixedFormat.parse(formats[node][pname]))
    return params


def model_from_checkpoint(ck: dict, backend=None) -> IntModel:
    meta, arrays = ck["meta"], ck["arrays"]
    graph = graph_from_json(ck["graph_json"], _float_params(arrays, meta["formats"]))
    model = new_model(graph, meta, backend)
    model.load_state(arrays, meta["formats"])
    model.checkpoint_meta = meta
    return model


def load_checkpoint(path: str, backend=None) -> IntModel:
    """A trained model from checkpoint.npz (or its run directory)."""
    return model_from_checkpoint(read_checkpoint(path), backend)
