"""The training workloads of ``edgedfa bench``: MNIST-shaped random data at the sizes users
train, and the built-in architectures on the embedded digits, each built the way
``edgedfa train`` builds it (the same defaults, resolved by ``config.resolve_run``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import arch
from ..api import build_model, make_trainer
from ..config import resolve_run
from ..data import Dataset, digits
from ..fixed import QTensor

RANDOM_SAMPLES = 2048  # random MNIST-shaped training samples (batches cycle through them)


@dataclass(frozen=True)
class Workload:
    """One model, batch and data set to train."""

    name: str
    title: str  # the row's label in the tables
    arch: str  # built-in architecture whose defaults apply
    batch: int  # None: the architecture's default batch size
    data: str  # "random" (MNIST-shaped) or "digits"
    sample_shape: tuple = ()
    hidden: int | None = None  # recurrent width when not the built-in default


WORKLOADS = {w.name: w for w in (
    Workload("mlp-b32", "MLP 784-256-256-10, batch 32", "mlp", 32, "random", (784,)),
    Workload("mlp-b128", "MLP 784-256-256-10, batch 128", "mlp", 128, "random", (784,)),
    Workload("cnn-b64", "CNN conv3x3(32)-pool-conv3x3(64)-pool-fc, 1x28x28, batch 64", "cnn", 64, "random",
             (1, 28, 28)),
    Workload("gru-b64", "GRU-128 over 40 steps of 1 input, batch 64", "gru", 64, "random", (40, 1), 128),
    Workload("digits-mlp", "digits: `--arch mlp` defaults", "mlp", None, "digits"),
    Workload("digits-cnn", "digits: `--arch cnn` defaults", "cnn", None, "digits"),
    Workload("digits-rnn", "digits: `--arch rnn` defaults", "rnn", None, "digits"),
    Workload("digits-gru", "digits: `--arch gru` defaults", "gru", None, "digits"),
    Workload("digits-lstm", "digits: `--arch lstm` defaults", "lstm", None, "digits"),
)}
QUICK = ("mlp-b32", "digits-mlp")


def dataset(w: Workload, seed: int = 0) -> Dataset:
    """Random uniform [0, 1) inputs with random labels 0..9, or the digits."""
    if w.data == "digits":
        return digits()
    rng = np.random.default_rng(seed)
    x = rng.random((RANDOM_SAMPLES,) + w.sample_shape)
    y = rng.integers(0, 10, RANDOM_SAMPLES)
    return Dataset(f"random{list(w.sample_shape)}", x, y, x[:256], y[:256])


def graph(w: Workload, ds: Dataset, seed: int = 0):
    """The workload's Graph (float initial weights from the datapath PRNG)."""
    if w.hidden is not None:
        seq, n_in = ds.sample_shape
        return arch.recurrent(w.arch, seed, seq, n_in, hidden=w.hidden, n_classes=ds.n_classes)
    return arch.build(w.arch, seed, ds.sample_shape, ds.n_classes)


@dataclass
class Engine:
    """A calibrated model, its trainer and the quantized training inputs."""

    model: object
    trainer: object
    codes: np.ndarray
    labels: np.ndarray
    batch: int
    shift: int
    settings: object

    def step(self, s: int) -> None:
        """Training step ``s`` on the ``s``-th batch (cycling through the data)."""
        lo = (s * self.batch) % (len(self.labels) - self.batch + 1)
        xq = QTensor(self.codes[lo:lo + self.batch], self.model.in_fmt)
        self.trainer.step(xq, self.labels[lo:lo + self.batch], s, self.shift)


def engine(w: Workload, algo: str, ds: Dataset, seed: int = 0) -> Engine:
    """The workload as ``edgedfa train --arch A --algo ALGO [--batch-size B]`` builds it."""
    train = {"algo": algo, "seed": seed, **({"batch_size": w.batch} if w.batch else {})}
    run = resolve_run({"model": {"arch": w.arch}, "train": train})
    model = build_model(graph(w, ds, seed), run.numerics, seed, run.layer_numerics)
    x = model.reshape_input(ds.x_train, "x_train")
    batch = run.train.batch_size
    model.calibrate(x[: max(batch * 8, 256)])
    trainer = make_trainer(model, run.train, run.modules)
    codes = model.quantize_input(x).codes
    return Engine(model, trainer, codes, np.asarray(ds.y_train), batch, trainer.cfg.shift_at(0), run)
