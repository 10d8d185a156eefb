"""Datasets: the embedded UCI digits, user .npz files, and their validation."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .errors import EdgeDFAError
from .prng import PURPOSE_SHUFFLE, stream_id, words

DIGITS_SPLIT_SEED = 20161  # fixed: the documented train/test split never changes
DIGITS_TEST_FRACTION = 0.2


@dataclass
class Dataset:
    """Float inputs (batch first) and integer labels, train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def _digits_raw():
    with resources.files("edgedfa").joinpath("digits.csv.gz").open("rb") as fh:
        table = np.loadtxt(gzip.open(fh), delimiter=",")
    return table[:, :64] / 16.0, table[:, 64].astype(np.int64)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Per-class split by the datapath PRNG: (train indices, test indices), both sorted."""
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        order = idx[np.argsort(words(seed, stream_id(0, PURPOSE_SHUFFLE), int(c), len(idx)), kind="stable")]
        n_test = int(round(len(idx) * test_fraction))
        test.extend(order[:n_test])
        train.extend(order[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def digits(shape=(64,)) -> Dataset:
    """The UCI digits (1,797 8x8 images, values 0..1), fixed stratified 80/20 split."""
    x, y = _digits_raw()
    tr, te = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    x = x.reshape((-1,) + tuple(shape))
    return Dataset("digits", x[tr], y[tr], x[te], y[te])


def shifted_digits(canvas: int = 16, seed: int = 7) -> Dataset:
    """Each digit pasted at a random (seeded, PRNG) position of a canvas x canvas image."""
    base = digits((8, 8))
    out = []
    for part, x in (("train", base.x_train), ("test", base.x_test)):
        pos = words(seed, stream_id(0, PURPOSE_SHUFFLE), 1 if part == "train" else 2, (len(x), 2))
        pos = (pos.astype(np.int64) * (canvas - 7)) >> 32
        img = np.zeros((len(x), 1, canvas, canvas))
        for i, (r, c) in enumerate(pos):
            img[i, 0, r:r + 8, c:c + 8] = x[i]
        out.append(img)
    return Dataset("shifted-digits", out[0], base.y_train, out[1], base.y_test)


BUILTIN = {"digits": digits, "shifted-digits": shifted_digits}


def select_dataset(path: str | None = None, name: str | None = None, recorded: str | None = None) -> Dataset:
    """The data a command names: a .npz file, else a built-in by name, else the one a run
    recorded, else the digits."""
    if path:
        return load_npz(path)
    name = name or recorded or "digits"
    if name not in BUILTIN:
        raise EdgeDFAError(f"dataset {name!r} is not built in; pass --data FILE.npz")
    return BUILTIN[name]()

HOLDOUT_SEED = 4242  # fixed: the documented validation split of a training split never changes


def holdout(ds: Dataset, fraction: float = 0.2, seed: int = HOLDOUT_SEED) -> Dataset:
    """A validation split carved out of ``ds``'s training split: train on the rest, "test" on
    the held-out part; for choosing settings without looking at the real test split."""
    if not 0.0 < fraction < 1.0:
        raise EdgeDFAError(f"holdout fraction must lie in (0, 1), got {fraction}")
    tr, va = stratified_split(ds.y_train, fraction, seed)
    return Dataset(f"{ds.name}-holdout", ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va])


def load_npz(path: str) -> Dataset:
    """A user dataset: x_train, y_train, x_test, y_test; validated with errors naming the key."""
    if not os.path.exists(path):
        raise EdgeDFAError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip/npy format errors of every kind
        raise EdgeDFAError(f"{path}: not a readable .npz file ({exc})") from exc
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise EdgeDFAError(f"{path}: missing key(s) {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'none'})")
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim < 2:
            raise EdgeDFAError(f"{path}: x_{part} has shape {x.shape}; expected (N, ...) with a batch axis")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise EdgeDFAError(f"{path}: x_{part} has dtype {x.dtype}; expected real numbers")
        if not np.isfinite(x.astype(np.float64)).all():
            bad = int((~np.isfinite(x.astype(np.float64))).sum())
            raise EdgeDFAError(f"{path}: x_{part} holds {bad} NaN or infinite value(s)")
        if y.ndim != 1 or len(y) != len(x):
            raise EdgeDFAError(f"{path}: y_{part} has shape {y.shape}; expected ({len(x)},) to match x_{part}")
        if not np.issubdtype(y.dtype, np.integer):
            if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                raise EdgeDFAError(f"{path}: y_{part} must hold integer class labels, got dtype {y.dtype}")
        if len(y) and y.min() < 0:
            raise EdgeDFAError(f"{path}: y_{part} has label {int(y.min())} < 0; labels are 0..C-1")
    n_tr = int(np.prod(arrays["x_train"].shape[1:]))
    n_te = int(np.prod(arrays["x_test"].shape[1:]))
    if n_tr != n_te:  # shapes may differ: both are reshaped to the model input
        raise EdgeDFAError(f"{path}: x_train samples {arrays['x_train'].shape[1:]} have {n_tr} values but"
                           f" x_test samples {arrays['x_test'].shape[1:]} have {n_te}")
    if len(arrays["y_train"]) == 0:
        raise EdgeDFAError(f"{path}: x_train is empty")
    return Dataset(os.path.basename(path), arrays["x_train"].astype(np.float64), arrays["y_train"].astype(np.int64),
                   arrays["x_test"].astype(np.float64), arrays["y_test"].astype(np.int64))


def check_labels(ds: Dataset, n_classes: int, where: str) -> None:
    """Labels must index the model's outputs."""
    for part, y in (("y_train", ds.y_train), ("y_test", ds.y_test)):
        if len(y) and y.max() >= n_classes:
            raise EdgeDFAError(f"{where}: {part} has label {int(y.max())} but the model has {n_classes} outputs (labels 0..{n_classes - 1})")
