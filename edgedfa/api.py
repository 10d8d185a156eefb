"""Library entry points behind the CLI: build, fit (the epoch loop), evaluate, load."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .credit import make_plan, plan_from_config
from .data import Dataset, check_labels
from .fixed import QTensor
from .loss import cross_entropy
from .model import IntModel
from .numerics import Numerics
from .progress import Progress, Rate, bar
from .scaling import epoch_report
from .train import TrainConfig, Trainer, batch_order

BEST = "best.npz"  # the checkpoint of the epoch with the best validation accuracy

__all__ = ["build_model", "make_trainer", "fit", "evaluate", "accuracy", "save_run", "load_checkpoint", "load_onnx",
           "describe_arch"]


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
        quiet: bool = False, modules_table=None, start: dict | None = None, hooks=None, *,
        val: Dataset | None = None, should_stop=None, run: dict | None = None, state: dict | None = None) -> dict:
    """Train ``model`` in place; write checkpoint.npz and metrics.json to ``out_dir`` after every
    epoch (and best.npz when ``val``, a validation split, reaches its best accuracy).

    ``start`` and ``state`` continue a run: the progress and the arrays of its checkpoint, at an
    epoch's end or in the middle of one. ``should_stop()`` is asked after every batch: when it
    says so, the state after that batch is saved and the metrics say ``interrupted``. ``run``
    (settings, data fingerprint, version, command) goes into the checkpoint and the metrics.
    """
    loop = _Loop(model, data, cfg, modules_table, val, start, state)
    return loop.run(out_dir, quiet, hooks, should_stop, run or {})


class _Loop:
    """The epoch loop's state: data in the model's shape, the trainer and the progress."""

    def __init__(self, model, data, cfg, modules_table, val, start, state):
        check_labels(data, model.n_classes, "data")
        self.model, self.data, self.cfg, self.val, self.modules_table = model, data, cfg, val, modules_table
        self.x_train = model.reshape_input(data.x_train, "x_train")
        self.x_test = model.reshape_input(data.x_test, "x_test") if len(data.x_test) else data.x_test
        if val is not None:
            check_labels(val, model.n_classes, "validation data")
            self.x_val = model.reshape_input(val.x_test, "validation x")
        if model.in_fmt is None:
            model.calibrate(self.x_train[: max(cfg.batch_size * 8, 256)])
        self.trainer = make_trainer(model, cfg, modules_table)
        self.cfg = self.trainer.cfg  # every default resolved for the model's numerics
        if start and "saturation" in start:  # checkpoints before the trainer kept its own arrays
            self.trainer.saturation = start["saturation"]
        self.trainer.load_state(state or {})
        self.xq = model.quantize_input(self.x_train)
        self.p = {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "seconds": 0.0, "history": [],
                  "changes": [], "partial": None, "best": None, **{k: v for k, v in (start or {}).items()
                                                                   if k != "saturation"}}
        self.n_batches = max(1, -(-len(self.x_train) // cfg.batch_size))

    def run(self, out_dir, quiet, hooks, should_stop, run) -> dict:
        pbar = Progress(quiet)
        p, cfg = self.p, self.cfg
        rate = Rate((cfg.epochs - p["epoch"]) * len(self.x_train) - p["batch"] * cfg.batch_size)
        rate_done = 0
        for epoch in range(p["epoch"], cfg.epochs):
            stopped, rate_done = self._epoch(epoch, pbar, should_stop, rate, rate_done)
            if not stopped:
                self._end_epoch(epoch, pbar, out_dir, run)
                for h in hooks or ():
                    h(epoch, self.model)
            if stopped or (should_stop is not None and epoch + 1 < cfg.epochs and should_stop()):
                return self._save(out_dir, run, interrupted=True)
        return self.metrics(run)

    def _epoch(self, epoch, pbar, should_stop, rate, done):
        """The batches of one epoch from where the progress stands; (stopped early, samples done)."""
        p, cfg, y_all = self.p, self.cfg, self.data.y_train
        order = batch_order(self.model.seed, epoch, len(self.x_train))
        shift = cfg.shift_at(epoch)
        part = p["partial"] or {"correct": 0, "seen": 0, "loss_sum": 0.0, "seconds": 0.0}
        for b in range(p["batch"], self.n_batches):
            t0 = time.perf_counter()
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            y = y_all[idx]
            logits, _ = self.trainer.step(QTensor(self.xq.codes[idx], self.xq.fmt), y, p["step"], shift)
            p["step"] += 1
            part["correct"] += int((logits.codes.argmax(axis=1) == y).sum())
            part["seen"] += len(idx)
            part["loss_sum"] += cross_entropy(logits.value(), y) * len(idx)
            dt = time.perf_counter() - t0
            part["seconds"] += dt
            p["seconds"] += dt
            p["samples"] += len(idx)
            p["batch"], p["partial"], done = b + 1, part, done + len(idx)
            if b % 8 == 0 or b == self.n_batches - 1:
                pbar.update(f"epoch {epoch + 1}/{cfg.epochs} {bar((b + 1) / self.n_batches)} "
                            f"loss {part['loss_sum'] / part['seen']:.3f} acc {part['correct'] / part['seen']:.3f}"
                            f"  {rate.text(done)}")
            if b + 1 < self.n_batches and should_stop is not None and should_stop():
                return True, done
        return False, done

    def _end_epoch(self, epoch, pbar, out_dir, run) -> None:
        """Accuracies after an epoch, its history entry, the best epoch; the checkpoint."""
        p, part, model = self.p, self.p["partial"], self.model
        entry = {"epoch": epoch + 1, "train_accuracy": accuracy(model, self.x_train, self.data.y_train),
                 "test_accuracy": accuracy(model, self.x_test, self.data.y_test),
                 "loss": part["loss_sum"] / max(part["seen"], 1), "seconds": part["seconds"],
                 "scaling": epoch_report(model.layers), "formats": model.formats()}
        if self.val is not None:
            entry["val_accuracy"] = accuracy(model, self.x_val, self.val.y_test)
        changed = {k: v for c in p["changes"] if c["epoch"] == epoch for k, v in c["settings"].items()}
        if changed:
            entry["settings_changed"] = changed
        p["history"].append(entry)
        p["epoch"], p["batch"], p["partial"] = epoch + 1, 0, None
        best = self.val is not None and (p["best"] is None or entry["val_accuracy"] > p["best"]["val_accuracy"])
        if best:
            p["best"] = {k: entry[k] for k in ("epoch", "val_accuracy", "test_accuracy")}
        val = f" val {entry['val_accuracy']:.3f}" if self.val is not None else ""
        pbar.update(f"epoch {epoch + 1}/{self.cfg.epochs} {bar(1.0)} loss {entry['loss']:.3f} "
                    f"train {entry['train_accuracy']:.3f}{val} test {_acc(entry['test_accuracy'])}"
                    f" ({entry['seconds']:.1f}s)", final=True)
        self._save(out_dir, run, best=best)

    def _save(self, out_dir, run, interrupted=False, best=False) -> dict:
        metrics = self.metrics(run)
        if interrupted:
            metrics["interrupted"] = {"epoch": self.p["epoch"] + (1 if self.p["batch"] else 0),
                                      "batch": self.p["batch"], "batches": self.n_batches, "step": self.p["step"]}
        if out_dir:
            save_run(out_dir, self.model, self.trainer, self.cfg, self.p, metrics, self.modules_table, run, best)
        return metrics

    def metrics(self, run) -> dict:
        p, model, trainer, cfg = self.p, self.model, self.trainer, self.cfg
        hist = p["history"]
        last = hist[-1] if hist else {}
        out = {"test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
               "history": hist, "samples_per_second": p["samples"] / p["seconds"] if p["seconds"] else None,
               "algo": trainer.plan.algo, "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
               "lr_shift": cfg.lr_shift, "lr_decay_epochs": cfg.decay_epochs(), "update_rule": model.numerics.rule, "scaling_policy": model.numerics.policy,
               "formats": model.formats(), "saturation": _saturation_report(model, trainer),
               "scaling": last.get("scaling", {}),
               "plan": trainer.plan.describe(), "dataset": self.data.name,
               "arch": model.graph.meta.get("arch", model.graph.name), "steps": p["step"]}
        if self.val is not None:
            best = p["best"] or {}
            out.update({"val_accuracy": last.get("val_accuracy"), "best_epoch": best.get("epoch"),
                        "best_val_accuracy": best.get("val_accuracy"), "best_test_accuracy": best.get("test_accuracy")})
        if p["changes"]:
            out["settings_changes"] = p["changes"]
        out.update({k: v for k, v in run.items() if k != "settings"})
        if "settings" in run:
            out["settings"] = run["settings"]
        return out


def _acc(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def save_run(out_dir, model, trainer, cfg, progress, metrics, modules_table=None, run=None, best=False) -> None:
    """checkpoint.npz (best.npz too when ``best``) and metrics.json of a run, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    path = save_checkpoint(out_dir, model, trainer.plan, cfg, progress, modules_table, trainer, {"run": run or {}})
    if best:
        shutil.copyfile(path, os.path.join(out_dir, ".best.tmp"))
        os.replace(os.path.join(out_dir, ".best.tmp"), os.path.join(out_dir, BEST))
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, default=_json_value))


def _json_value(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def accuracy(model: IntModel, x, y) -> float | None:
    """Fraction of samples classified right; None without samples."""
    if len(y) == 0:
        return None
    return float((model.predict(x) == y).mean())


def evaluate(model: IntModel, data: Dataset, quiet: bool = True, batch: int = 512) -> dict:
    """Accuracy and mean cross-entropy of the engine's logits on both splits (None when empty)."""
    check_labels(data, model.n_classes, "eval data")
    pbar, total = Progress(quiet), len(data.y_train) + len(data.y_test)
    rate, done, res = Rate(total), 0, {}
    for part, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        chunks = []
        for lo in range(0, len(y), batch):
            chunks.append(model.run(x[lo:lo + batch]))
            done += len(chunks[-1])
            pbar.update(f"eval {part} {bar(done / total)} {rate.text(done)}")
        logits = np.concatenate(chunks) if chunks else None
        res[f"{part}_accuracy"] = float((logits.argmax(axis=1) == y).mean()) if len(y) else None
        res[f"{part}_loss"] = cross_entropy(logits, y) if len(y) else None
    pbar.update(f"eval {bar(1.0)} {total} samples", final=True)
    res["samples"] = int(len(data.y_test))
    return res


def describe_arch(arch: str, bits: int = 8, dataset: str = "digits") -> str:
    """``edgedfa info --arch``: a built-in architecture sized for a built-in dataset: its layers
    and shapes, parameter count and integer formats at ``bits`` (calibrated on the data)."""
    from .arch import build
    from .data import select_dataset
    from .onnx.describe import describe

    ds = select_dataset(None, dataset)
    graph = build(arch, 0, ds.sample_shape, ds.n_classes)
    model = build_model(graph, Numerics.from_bits(bits), 0)
    model.calibrate(model.reshape_input(ds.x_train[:256]))
    count = sum(int(np.size(v)) for n in graph.nodes for v in n.params.values())
    lines = [describe(graph), f"parameters: {count:,}",
             f"integer formats at --bits {bits} (activations calibrated on {ds.name}):",
             f"  input: {model.in_fmt}"]
    for layer in model.layers:
        fmts = ", ".join(f"{k} {v}" for k, v in layer.param_formats().items())
        lines.append(f"  {layer.name}: {fmts + ', ' if fmts else ''}output {layer.out_fmt}")
    return "\n".join(lines)


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
