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

from .data import read_npz
from .errors import EdgeDFAError
from .fixed import FixedFormat, dequantize
from .model import IntModel, graph_from_json, graph_to_json
from .numerics import Numerics, legacy_fields
from .schema import check_value
from .train import TrainConfig

FILE = "checkpoint.npz"


# --------------------------------------------------------------------------- metadata

def numerics_to_dict(num: Numerics) -> dict:
    """Numerics as JSON-ready values (modes by name), in field order."""
    return {f.name: _plain(getattr(num, f.name)) for f in fields(num)}


def _plain(v):
    return v.value if isinstance(v, enum.Enum) else v


def numerics_from_dict(d: dict) -> Numerics:
    """Stored numerics; a field the writer did not know keeps the meaning it had then."""
    names = {f.name for f in fields(Numerics)}
    stored = {**legacy_fields(d), **{k: v for k, v in d.items() if k in names}}
    return Numerics().with_overrides(stored, "checkpoint numerics")


def train_config_from_meta(meta: dict) -> TrainConfig:
    """The stored training settings, each checked as a config file's would be (``algo`` may
    also name a plan that came from [[modules]])."""
    names = {f.name for f in fields(TrainConfig)}
    kw = {}
    for k, v in meta["train"].items():
        if k == "algo" and isinstance(v, str):
            kw[k] = v
        elif k in names:
            kw[k] = check_value(TrainConfig, k, v, "checkpoint [train]")
    return TrainConfig(**kw)


def new_model(graph, meta: dict, backend=None) -> IntModel:
    """The IntModel that stored metadata (numerics as a dict or Numerics, seed, per-layer
    settings) describe, before its integer state is loaded."""
    num = meta["numerics"]
    num = num if isinstance(num, Numerics) else numerics_from_dict(num)
    return IntModel(graph, num, int(meta["seed"]), meta.get("layer_numerics"), backend)


# --------------------------------------------------------------------------- writing

def checkpoint_arrays(model: IntModel, plan, cfg: TrainConfig, progress: dict, modules_table=None,
                      trainer=None, run: dict | None = None) -> dict:
    """Everything needed to resume bit-exactly and to export: the model's integer state, the
    trainer's (``trainer.state_arrays()``), the configuration, the progress and ``run`` (the
    run's settings document, data fingerprint, version, ...)."""
    meta = {"format": "edgedfa-checkpoint", "version": 1, "formats": model.formats(),
            "numerics": numerics_to_dict(model.numerics), "layer_numerics": model.layer_numerics,
            "seed": model.seed, "train": asdict(cfg), "plan": plan.describe(), "progress": progress,
            **(run or {})}
    arrays = dict(model.state_arrays())
    if trainer is not None:
        arrays.update(trainer.state_arrays())
    arrays["meta_json"] = np.array(json.dumps(meta, default=_json_default))
    arrays["graph_json"] = np.array(graph_to_json(model.graph))
    if modules_table:
        arrays["modules_json"] = np.array(json.dumps(modules_table))
    return arrays


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    return _plain(v) if isinstance(v, enum.Enum) else str(v)


def _atomic(path: str, prefix: str, suffix: str, write) -> None:
    """``write(tmp)`` a file next to ``path``, then rename it into place: never half-written.
    The file gets the mode the umask gives new files (mkstemp alone would make it 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
                    modules_table=None, trainer=None, run: dict | None = None, name: str = FILE) -> str:
    """``out_dir/checkpoint.npz`` (or ``name``); returns its path."""
    path = os.path.join(out_dir, name)
    atomic_savez(path, **checkpoint_arrays(model, plan, cfg, progress, modules_table, trainer, run))
    return path


# --------------------------------------------------------------------------- reading

def read_checkpoint(path: str) -> dict:
    """Raw checkpoint contents, validated; errors name the file and the missing piece."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE)
    if not os.path.exists(path):
        raise EdgeDFAError(f"{path}: no such checkpoint")
    arrays = read_npz(path, "checkpoint")
    for key in ("meta_json", "graph_json"):
        if key not in arrays:
            raise EdgeDFAError(f"{path}: not an edgedfa checkpoint (no {key})")
    try:
        meta = json.loads(str(arrays.pop("meta_json")))
        graph_json = str(arrays.pop("graph_json"))
        modules = json.loads(str(arrays.pop("modules_json"))) if "modules_json" in arrays else None
    except (json.JSONDecodeError, ValueError) as exc:
        raise EdgeDFAError(f"{path}: corrupt checkpoint metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "edgedfa-checkpoint":
        raise EdgeDFAError(f"{path}: not an edgedfa checkpoint (metadata format {_field(meta, 'format')!r})")
    bad = _check_meta(meta) or ([] if modules is None or isinstance(modules, list) else ["modules_json"])
    if bad:
        raise EdgeDFAError(f"{path}: corrupt checkpoint metadata ({', '.join(bad)} missing or of the wrong kind)")
    return {"path": path, "meta": meta, "graph_json": graph_json, "modules": modules, "arrays": arrays}


# what each piece of the metadata is: a type, or a table of its own pieces
_COUNT = ("count",)
META_SHAPE = {"formats": dict, "numerics": dict, "layer_numerics": dict, "seed": _COUNT, "train": dict, "plan": list,
              "run": (dict, type(None)),
              "progress": {"epoch": _COUNT, "step": _COUNT, "batch": _COUNT, "samples": _COUNT, "seconds": float,
                           "history": list, "changes": list, "partial": (dict, type(None)), "best": (dict, type(None)),
                           "saturation": dict}}
REQUIRED = ("formats", "numerics", "seed", "train", "progress", "progress.epoch", "progress.step")
PARTIAL_SHAPE = {"correct": _COUNT, "seen": _COUNT, "loss_sum": float, "seconds": float}


def _check_meta(meta: dict, shape: dict = META_SHAPE, prefix: str = "") -> list:
    """Names of metadata entries of the wrong kind (missing optional ones are fine)."""
    bad = []
    for key, kind in shape.items():
        if key not in meta:
            if prefix + key in REQUIRED:
                bad.append(prefix + key)
            continue
        v = meta[key]
        if isinstance(kind, dict):
            bad += [prefix + key] if not isinstance(v, dict) else _check_meta(v, kind, f"{prefix}{key}.")
        elif not _is(v, kind):
            bad.append(prefix + key)
    partial = meta.get("partial") if prefix == "progress." else None
    if isinstance(partial, dict):
        bad += [f"progress.partial.{k}" for k, kind in PARTIAL_SHAPE.items() if not _is(partial.get(k), kind)]
    history = meta.get("history", []) if prefix == "progress." else []
    if isinstance(history, list) and any(not isinstance(h, dict) for h in history):
        bad.append("progress.history")
    return bad


def _is(v, kind) -> bool:
    if kind is _COUNT:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, kind)


def graph_meta(ck: dict) -> dict:
    """The graph's metadata in a checkpoint read by ``read_checkpoint`` (arch, dataset), or {}."""
    try:
        meta = json.loads(ck["graph_json"]).get("meta", {})
    except (ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _field(meta, key):
    return meta.get(key) if isinstance(meta, dict) else None


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
    """The model a checkpoint holds; a checkpoint whose pieces do not fit together is an
    EdgeDFAError naming the file, never a crash deep inside."""
    meta, arrays = ck["meta"], ck["arrays"]
    try:
        _check_param_arrays(json.loads(ck["graph_json"]), arrays)
        graph = graph_from_json(ck["graph_json"], _float_params(arrays, meta["formats"]))
        model = new_model(graph, meta, backend)
        model.load_state(arrays, meta["formats"])
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"{ck['path']}: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise EdgeDFAError(f"{ck['path']}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc
    model.checkpoint_meta = meta
    return model


def _check_param_arrays(graph: dict, arrays: dict) -> None:
    """Every parameter the graph names is stored, with the shape the graph gives it."""
    for node in graph["nodes"]:
        for pname, shape in node["param_shapes"].items():
            key = f"param/{node['name']}/{pname}"
            if key not in arrays or list(arrays[key].shape) != list(shape):
                have = list(arrays[key].shape) if key in arrays else "nothing"
                raise EdgeDFAError(f"parameter {key} has shape {have}, the graph says {list(shape)}")


def load_checkpoint(path: str, backend=None) -> IntModel:
    """A trained model from checkpoint.npz (or its run directory)."""
    return model_from_checkpoint(read_checkpoint(path), backend)
