"""Datasets: the embedded UCI digits, user .npz files, and their validation."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .errors import EdgeDFAError
from .prng import PURPOSE_AUX, PURPOSE_SHUFFLE, stream_id, words

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
        return int(max(y.max() for y in (self.y_train, self.y_test) if len(y))) + 1

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
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


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


def _standardized(ds: Dataset, name: str, per_feature: bool, shape=None) -> Dataset:
    """Zero mean, unit variance from the training split's statistics (per input feature,
    constant features left at 0, or one pair for every value), optionally reshaped."""
    axis = 0 if per_feature else None
    mu, sd = ds.x_train.mean(axis=axis), ds.x_train.std(axis=axis)
    sd = np.where(sd > 0, sd, 1.0)
    shape = ds.x_train.shape[1:] if shape is None else shape
    f = lambda x: ((x - mu) / sd).reshape((-1,) + tuple(shape))  # noqa: E731
    return Dataset(name, f(ds.x_train), ds.y_train, f(ds.x_test), ds.y_test)


def digits_std() -> Dataset:
    """The digits with every pixel standardized (rare pixels reach about +-20)."""
    return _standardized(digits(), "digits-std", per_feature=True)


def digits_seq() -> Dataset:
    """The digits read pixel by pixel: 64 steps of one standardized value."""
    return _standardized(digits(), "digits-seq", per_feature=False, shape=(64, 1))


SIGNAL_SEED = 1729
SIGNAL_CLASSES = ("sine", "square", "triangle", "sawtooth", "chirp", "pulses")


def _uniform(seed: int, draw: int, shape) -> np.ndarray:
    """Uniform (0, 1) values from the datapath PRNG (stream 0/aux, one step per draw)."""
    return (words(seed, stream_id(0, PURPOSE_AUX), draw, shape).astype(np.float64) + 0.5) / 2.0**32


def _normal(seed: int, draw: int, shape) -> np.ndarray:
    """Standard normal values by Box-Muller from two uniform draws."""
    u1, u2 = _uniform(seed, 2 * draw, shape), _uniform(seed, 2 * draw + 1, shape)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _waveform(kind: int, t, f, phase):
    """One period-``1/f`` waveform of class ``kind`` at times ``t`` (in windows)."""
    ph = (f * t + phase) % 1.0
    if kind == 0:
        return np.sin(2 * np.pi * ph)
    if kind == 1:
        return np.where(ph < 0.5, 1.0, -1.0)
    if kind == 2:
        return 4.0 * np.abs(ph - 0.5) - 1.0
    if kind == 3:
        return 2.0 * ph - 1.0
    if kind == 4:  # the frequency sweeps from f/2 to 3f/2 over the window
        return np.sin(2 * np.pi * (0.5 * f * t + 0.5 * f * t * t + phase))
    d = np.minimum(ph, 1.0 - ph) / f  # narrow Gaussian pulses, f per window
    return 2.0 * np.exp(-0.5 * (d * f / 0.08) ** 2) - 0.5


def signal(n_train: int = 3000, n_test: int = 1000, length: int = 128, seed: int = SIGNAL_SEED) -> Dataset:
    """Six noisy waveforms to tell apart: 1-D signals of ``length`` samples, standardized.

    Sample i has class i mod 6 (sine, square, triangle, sawtooth, chirp, pulse train);
    f ~ U(2, 8) periods per window, phase ~ U(0, 1), amplitude a ~ U(0.5, 2), offset ~
    N(0, 0.5^2), white noise of standard deviation a * U(0.1, 0.5);
    x[k] = offset + a * wave(k / length) + noise[k]. Stratified 3000/1000 split, then one
    mean and standard deviation from the training split for every value. Every random
    number comes from the datapath PRNG, so the data never change between releases.
    """
    n = n_train + n_test
    y = np.arange(n) % len(SIGNAL_CLASSES)
    u = _uniform(seed, 0, (n, 4))
    f, phase, amp = 2.0 + 6.0 * u[:, 0], u[:, 1], 0.5 + 1.5 * u[:, 2]
    sigma = amp * (0.1 + 0.4 * u[:, 3])
    t = np.arange(length) / length
    x = np.empty((n, length))
    for c in range(len(SIGNAL_CLASSES)):
        m = y == c
        x[m] = _waveform(c, t[None, :], f[m, None], phase[m, None])
    x = 0.5 * _normal(seed, 1, n)[:, None] + amp[:, None] * x + sigma[:, None] * _normal(seed, 2, (n, length))
    tr, te = stratified_split(y, n_test / n, seed)
    return _standardized(Dataset("signal", x[tr], y[tr], x[te], y[te]), "signal", per_feature=False)


BUILTIN = {"digits": digits, "shifted-digits": shifted_digits, "digits-std": digits_std,
           "digits-seq": digits_seq, "signal": signal}


def select_dataset(path: str | None = None, name: str | None = None, recorded: str | None = None) -> Dataset:
    """The data a command names: a .npz file, else a built-in by name, else the one a run
    recorded, else the digits."""
    if path:
        return load_npz(path)
    if not name and recorded and os.path.isabs(str(recorded)):  # a run trained on a file
        return load_npz(str(recorded))
    name = name or recorded or "digits"
    if name not in BUILTIN:
        raise EdgeDFAError(f"dataset {name!r} is not built in; pass --data FILE.npz")
    return BUILTIN[name]()

MAX_CLASSES = 1 << 16  # a label beyond this is a mistake, not a class: the output layer would not fit
HOLDOUT_SEED = 4242  # fixed: the documented validation split of a training split never changes


def holdout(ds: Dataset, fraction: float = 0.2, seed: int = HOLDOUT_SEED) -> Dataset:
    """A validation split carved out of ``ds``'s training split: train on the rest, "test" on
    the held-out part; for choosing settings without looking at the real test split."""
    if not 0.0 < fraction < 1.0:
        raise EdgeDFAError(f"holdout fraction must lie in (0, 1), got {fraction}")
    tr, va = stratified_split(ds.y_train, fraction, seed)
    return Dataset(f"{ds.name}-holdout", ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va])


def read_npz(path: str, what: str = ".npz file") -> dict:
    """The arrays of an .npz archive; EdgeDFAError when the file is none (never unpickles)."""
    if not os.path.exists(path):
        raise EdgeDFAError(f"{path}: no such file")
    if os.path.isdir(path):
        raise EdgeDFAError(f"{path}: is a directory, not a {what}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise EdgeDFAError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if magic != b"PK\x03\x04":
        raise EdgeDFAError(f"{path}: not a readable {what} (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except MemoryError as exc:
        raise EdgeDFAError(f"{path}: an array of the archive does not fit in memory") from exc
    except Exception as exc:  # zip/npy format errors of every kind; object arrays (pickles)
        reason = "it holds Python objects, which are never loaded" if "pickle" in str(exc) else exc
        raise EdgeDFAError(f"{path}: not a readable {what} ({reason})") from exc


def load_npz(path: str) -> Dataset:
    """A user dataset: x_train, y_train, x_test, y_test; validated with errors naming the key."""
    return from_arrays(read_npz(path, "dataset (.npz)"), os.path.basename(path), path)


def from_arrays(arrays: dict, name: str, path: str = "data") -> Dataset:
    """A Dataset from the four arrays, each checked (``path`` names them in errors)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
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
        if len(y) and y.max() >= MAX_CLASSES:
            raise EdgeDFAError(f"{path}: y_{part} has label {y.max():g}; labels are 0..C-1 with at most"
                               f" {MAX_CLASSES} classes")
    n_tr = int(np.prod(arrays["x_train"].shape[1:]))
    n_te = int(np.prod(arrays["x_test"].shape[1:]))
    if n_tr != n_te:  # shapes may differ: both are reshaped to the model input
        raise EdgeDFAError(f"{path}: x_train samples {arrays['x_train'].shape[1:]} have {n_tr} values but"
                           f" x_test samples {arrays['x_test'].shape[1:]} have {n_te}")
    if len(arrays["y_train"]) == 0:
        raise EdgeDFAError(f"{path}: x_train is empty")
    return Dataset(name, arrays["x_train"].astype(np.float64), arrays["y_train"].astype(np.int64),
                   arrays["x_test"].astype(np.float64), arrays["y_test"].astype(np.int64))


def fingerprint(ds: Dataset) -> dict:
    """What identifies a dataset: shapes, classes and a hash of every value and label."""
    h = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(getattr(ds, key))
        h.update(f"{key}{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    return {"name": ds.name, "x_train": list(ds.x_train.shape), "x_test": list(ds.x_test.shape),
            "classes": ds.n_classes, "sha256": h.hexdigest()}


def fingerprint_differences(old: dict, new: dict) -> list:
    """What differs between two fingerprints, in words (shapes and classes before the hash)."""
    out = [f"{k} {_shape(new.get(k))} (the run's: {_shape(old.get(k))})"
           for k in ("x_train", "x_test", "classes") if old.get(k) != new.get(k)]
    if not out and old.get("sha256") != new.get("sha256"):
        out.append("the values differ (same shapes and classes, another content hash)")
    return out


def _shape(v) -> str:
    return f"({', '.join(map(str, v))})" if isinstance(v, list) else str(v)


def label_gaps(ds: Dataset) -> str | None:
    """Words on labels that do not run 0..C-1 without a gap, or None."""
    present = np.unique(np.concatenate([ds.y_train, ds.y_test]))
    missing = ds.n_classes - len(present)
    if missing == 0:
        return None
    return (f"labels are not 0..C-1 without gaps: {len(present)} distinct labels, largest {ds.n_classes - 1};"
            f" the model gets {ds.n_classes} outputs, {missing} of them for labels that never occur")


def check_labels(ds: Dataset, n_classes: int, where: str) -> None:
    """Labels must index the model's outputs."""
    for part, y in (("y_train", ds.y_train), ("y_test", ds.y_test)):
        if len(y) and y.max() >= n_classes:
            raise EdgeDFAError(f"{where}: {part} has label {int(y.max())} but the model has {n_classes} outputs (labels 0..{n_classes - 1})")
