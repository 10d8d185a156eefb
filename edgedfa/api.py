"""Library entry points behind the CLI: build, fit, checkpoint, load."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields

import numpy as np

from .credit import make_plan, plan_from_config
from .data import Dataset, check_labels
from .errors import EdgeDFAError
from .fixed import FixedFormat, dequantize
from .numerics import Numerics
from .model import IntModel, graph_from_json
from .train import (Progress, TrainConfig, Trainer, accuracy, atomic_savez, atomic_write_text, bar,
                    batch_order, checkpoint_arrays)
from .loss import cross_entropy


def build_model(graph, numerics: Numerics, seed: int, layer_numerics=None, backend=None) -> IntModel:
    return IntModel(graph, numerics, seed, layer_numerics, backend)


def make_trainer(model: IntModel, cfg: TrainConfig, modules_table=None) -> Trainer:
    if modules_table:
        plan = plan_from_config(model.graph, modules_table, "config")
    else:
        plan = make_plan(model.graph, cfg.algo, cfg.feedback_sparsity, cfg.feedback_values,
                         cfg.feedback_regenerate, cfg.feedback_kind)
    return Trainer(model, plan, cfg)


def _saturation_report(model: IntModel, trainer: Trainer) -> dict:
    out = {}
    for layer in model.layers:
        if not layer.trainable:
            continue
        entry = {}
        for name, t in layer.params.items():
            at_limit = int(np.count_nonzero((t.codes == t.fmt.max_code) | (t.codes == t.fmt.min_code)))
            entry[name] = {"clipped_updates": int(trainer.saturation[layer.name].get(name, 0)),
                           "at_limit": at_limit, "size": int(t.codes.size),
                           "fraction_at_limit": at_limit / max(1, t.codes.size)}
        out[layer.name] = entry
    return out


def fit(model: IntModel, data: Dataset, cfg: TrainConfig, out_dir: str | None = None,
        quiet: bool = False, modules_table=None, start: dict | None = None, hooks=None) -> dict:
    """Train ``model`` in place; write metrics.json and checkpoint.npz per epoch to out_dir."""
    check_labels(data, model.n_classes, "data")
    x_train = model.reshape_input(data.x_train, "x_train")
    x_test = model.reshape_input(data.x_test, "x_test") if len(data.x_test) else data.x_test
    if model.in_fmt is None:
        model.calibrate(x_train[: max(cfg.batch_size * 8, 256)])
    trainer = make_trainer(model, cfg, modules_table)
    xq_all = model.quantize_input(x_train)
    progress = dict(start or {"epoch": 0, "step": 0, "history": [], "seconds": 0.0})
    if start and "saturation" in start:
        trainer.saturation = start["saturation"]
    pbar = Progress(quiet)
    n = len(x_train)
    n_batches = max(1, -(-n // cfg.batch_size))
    metrics = None
    for epoch in range(progress["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        order = batch_order(model.seed, epoch, n)
        shift = cfg.shift_at(epoch)
        correct = seen = 0
        loss_sum = 0.0
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            y = data.y_train[idx]
            logits, _ = trainer.step(type(xq_all)(xq_all.codes[idx], xq_all.fmt), y, progress["step"], shift)
            progress["step"] += 1
            correct += int((logits.codes.argmax(axis=1) == y).sum())
            seen += len(idx)
            loss_sum += cross_entropy(logits.value(), y) * len(idx)
            if b % 8 == 0 or b == n_batches - 1:
                pbar.update(f"epoch {epoch + 1}/{cfg.epochs} {bar((b + 1) / n_batches)} "
                            f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
        seconds = time.perf_counter() - t0
        progress["seconds"] += seconds
        train_acc = accuracy(model, x_train, data.y_train)
        test_acc = accuracy(model, x_test, data.y_test) if len(data.y_test) else float("nan")
        progress["history"].append({"epoch": epoch + 1, "train_accuracy": train_acc, "test_accuracy": test_acc,
                                    "loss": loss_sum / max(seen, 1), "seconds": seconds})
        progress["epoch"] = epoch + 1
        pbar.update(f"epoch {epoch + 1}/{cfg.epochs} {bar(1.0)} loss {loss_sum / max(seen, 1):.3f} "
                    f"train {train_acc:.3f} test {test_acc:.3f} ({seconds:.1f}s)", final=True)
        metrics = _metrics(model, trainer, cfg, progress, n, data)
        if out_dir:
            save_run(out_dir, model, trainer, cfg, progress, metrics, modules_table)
        if hooks:
            for h in hooks:
                h(epoch, model)
    if metrics is None:
        metrics = _metrics(model, trainer, cfg, progress, n, data)
        if out_dir:
            save_run(out_dir, model, trainer, cfg, progress, metrics, modules_table)
    return metrics


def _metrics(model, trainer, cfg, progress, n, data) -> dict:
    hist = progress["history"]
    last = hist[-1] if hist else {}
    samples = n * len(hist)
    return {"test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
            "history": hist, "samples_per_second": samples / progress["seconds"] if progress["seconds"] else None,
            "algo": trainer.plan.algo, "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "lr_shift": cfg.lr_shift, "formats": model.formats(), "saturation": _saturation_report(model, trainer),
            "plan": trainer.plan.describe(), "dataset": data.name, "arch": model.graph.meta.get("arch", model.graph.name),
            "steps": progress["step"]}


def save_run(out_dir, model, trainer, cfg, progress, metrics, modules_table=None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    prog = dict(progress, saturation=trainer.saturation)
    arrays = checkpoint_arrays(model, trainer.plan, cfg, prog)
    if modules_table:
        arrays["modules_json"] = np.array(json.dumps(modules_table))
    atomic_savez(os.path.join(out_dir, "checkpoint.npz"), **arrays)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, default=float))


def read_checkpoint(path: str) -> dict:
    """Raw checkpoint contents, validated; errors name the file and the missing piece."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
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


def numerics_from_dict(d: dict) -> Numerics:
    names = {f.name for f in fields(Numerics)}
    return Numerics().with_overrides({k: v for k, v in d.items() if k in names}, "checkpoint numerics")


def model_from_checkpoint(ck: dict, backend=None) -> IntModel:
    meta, arrays = ck["meta"], ck["arrays"]
    fmts = meta["formats"]
    params = {}
    for key, codes in arrays.items():
        if key.startswith("param/"):
            prefix, pname = key.rsplit("/", 1)  # node names may hold "/" (TorchScript: /rnn/GRU)
            node = prefix[len("param/"):]
            params.setdefault(node, {})[pname] = dequantize(codes, FixedFormat.parse(fmts[node][pname]))
    graph = graph_from_json(ck["graph_json"], params)
    model = IntModel(graph, numerics_from_dict(meta["numerics"]), meta["seed"], meta.get("layer_numerics"), backend)
    model.load_state(arrays, fmts)
    model.checkpoint_meta = meta
    return model


def load_checkpoint(path: str, backend=None) -> IntModel:
    """A trained model from checkpoint.npz (or its run directory)."""
    return model_from_checkpoint(read_checkpoint(path), backend)


def train_config_from_meta(meta: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in meta["train"].items() if k in names})


def load_onnx(path: str, data=None, numerics: Numerics | None = None, seed: int = 0,
              layer_numerics=None, backend=None) -> IntModel:
    """Import an ONNX graph and quantize it (formats calibrated on ``data`` when given).

    An edgedfa ``float`` export loaded without numerics overrides gives back the exported
    integer model exactly (formats, numerics and seed from its metadata).
    """
    from .onnx import load_graph

    if numerics is None and layer_numerics is None:
        from .onnx.export import load_exported

        restored = load_exported(path, backend)
        if restored is not None:
            return restored
    model = IntModel(load_graph(path), numerics or Numerics(), seed, layer_numerics, backend)
    if data is not None:
        model.calibrate(np.asarray(data, dtype=np.float64))
    return model
