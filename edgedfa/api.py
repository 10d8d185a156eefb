"""Library entry points behind the CLI: build, fit (the epoch loop), evaluate, load."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .credit import make_plan, plan_from_config
from .data import Dataset, check_labels
from .loss import cross_entropy
from .model import IntModel
from .numerics import Numerics
from .train import TrainConfig, Trainer, batch_order

__all__ = ["build_model", "make_trainer", "fit", "evaluate", "accuracy", "save_run", "load_checkpoint", "load_onnx"]


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
    """checkpoint.npz and metrics.json of a run, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(out_dir, model, trainer.plan, cfg, dict(progress, saturation=trainer.saturation), modules_table)
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, default=float))


def accuracy(model: IntModel, x, y) -> float:
    if len(y) == 0:
        return float("nan")
    return float((model.predict(x) == y).mean())


def evaluate(model: IntModel, data: Dataset) -> dict:
    """Accuracy and mean cross-entropy of the engine's logits on both splits (None when empty)."""
    check_labels(data, model.n_classes, "eval data")
    res = {}
    for part, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        logits = model.run(x)
        res[f"{part}_accuracy"] = float((logits.argmax(axis=1) == y).mean()) if len(y) else None
        res[f"{part}_loss"] = cross_entropy(logits, y) if len(y) else None
    res["samples"] = int(len(data.y_test))
    return res


class Progress:
    """One status line on stderr, rewritten in place; silent when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def update(self, text: str, final: bool = False):
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def bar(frac: float, width: int = 24) -> str:
    n = int(round(frac * width))
    return "[" + "#" * n + "." * (width - n) + "]"


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
