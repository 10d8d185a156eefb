"""Hypothesis strategies of the command-line fuzz harness: argument lists, TOML configs, .npz data
files and checkpoints, each valid, mutated or hostile.

A strategy draws a description (plain values); the harness writes files from it in a fresh
directory per example. Paths in argument lists are symbolic (``@RUN``, ``@DATA``, ...) and the
harness maps them to that directory's files.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from edgedfa import config, schema

# --------------------------------------------------------------------------- argument lists

FILES = ("@RUN", "@CK", "@DATA", "@CFG", "@ONNX", "@NEW", "@FILE", "@MISSING", "@DIR")
COMMANDS = ("train", "eval", "export", "emulate", "info")
FLAGS = ("--arch", "--model", "--data", "--dataset", "--algo", "--feedback-sparsity", "--feedback-kind",
         "--feedback-values", "--stored-feedback", "--bits", "--config", "--epochs", "--batch-size", "--lr-shift",
         "--seed", "--backend", "--out", "--resume", "--force", "--print-config", "--holdout", "--json",
         "--format", "-o", "--steps", "--array", "--clock-mhz", "--version", "--help", "--nonsense", "-x")
WORDS = ("mlp", "cnn", "gru", "lstm", "rnn", "bp", "dfa", "sdfa", "hybrid", "modular", "int", "qdq", "float",
         "digits", "shifted-digits", "dense", "sparse", "channel", "dilated", "binary", "ternary", "fast",
         "4x4", "0x3", "16x16x2", "inf", "nan", "-0", "1e309", "", " ", "é", "\x00", "--", "-")


def numbers():
    return st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 2, 4, 8, 16, 24, 25, 31, 32, 2**31, 2**63, -2**63,
                                                            10**30]),
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.2, 0.5, 1.0, 0.0]))


tokens = st.one_of(st.sampled_from(FLAGS), st.sampled_from(FILES), st.sampled_from(WORDS),
                   numbers().map(str), st.text(max_size=6))


@st.composite
def argument_lists(draw):
    """A command and up to eight more tokens, biased towards flags followed by a value."""
    argv = [draw(st.sampled_from(COMMANDS + ("", "--version")))]
    for _ in range(draw(st.integers(0, 8))):
        argv.append(draw(st.sampled_from(FLAGS)) if draw(st.booleans()) else draw(tokens))
        if draw(st.booleans()):
            argv.append(draw(tokens))
    if argv[0] in ("eval", "export", "emulate", "info") and draw(st.booleans()):
        argv.insert(1, draw(st.sampled_from(FILES)))
    return [a for a in argv if a != ""] or ["--version"]


# --------------------------------------------------------------------------- TOML configs

def _valid_value(e):
    """A strategy of values the setting accepts."""
    s = e.spec
    if e.kind is bool:
        base = st.booleans()
    elif isinstance(e.kind, type) and issubclass(e.kind, __import__("enum").Enum):
        base = st.sampled_from(list(e.kind.__members__))
    elif e.kind is str:
        base = st.sampled_from(s.options()) if s.options() else st.sampled_from(["x.onnx", "d.npz"])
    elif e.kind is list:
        base = st.lists(st.integers(int(s.lo or 1), min(int(s.hi or 50), 50)), max_size=3, unique=True).map(sorted)
    elif e.kind is float:
        base = st.floats(s.lo, s.hi, allow_nan=False)
    elif e.kind is int:
        base = st.integers(int(s.lo) if s.lo is not None else -5, int(s.hi) if s.hi is not None else 50)
    else:
        base = st.just({})
    return st.one_of(base, st.just(schema.NONE)) if e.optional else base


def _wrong_value():
    return st.one_of(st.booleans(), st.text(max_size=5), numbers(), st.lists(st.integers(-3, 3), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def config_docs(draw):
    """A settings document: drawn from the declarations (valid values), some mutated."""
    doc = {}
    for name in ("numerics", "train", "data", "hardware", "model"):
        section = config.SECTIONS[name]
        entries = [e for cls in section.classes for e in schema.entries(cls)]
        picked = draw(st.lists(st.sampled_from(entries), max_size=4, unique_by=lambda e: e.name))
        table = {}
        for e in picked:
            mutate = draw(st.integers(0, 9)) == 0
            table[e.name] = draw(_wrong_value() if mutate else _valid_value(e))
        if table:
            doc[name] = table
    if draw(st.integers(0, 5)) == 0:
        doc.setdefault(draw(st.sampled_from(["numerics", "train", "nonsense"])), {})[draw(st.text(max_size=6))] = 1
    if draw(st.integers(0, 5)) == 0:
        doc["layers"] = {draw(st.sampled_from(["dense1", "dense5", "conv1", "nope"])): {"weight_bits": draw(numbers())}}
    if draw(st.integers(0, 6)) == 0:
        doc["modules"] = [{"nodes": draw(st.lists(st.sampled_from(["dense1", "relu2", "dense3", "relu4", "dense5", "x"]),
                                                  max_size=5)), "source": draw(st.sampled_from(["dfa", "bp", "zz"]))}]
    # keep training short: the harness bounds the steps, this bounds the work per step
    doc.setdefault("train", {}).setdefault("epochs", 1)
    return doc


@st.composite
def config_texts(draw):
    """TOML text: a written document, then maybe cut, spliced with junk, or not text at all."""
    text = config.toml_dumps(draw(config_docs()))
    how = draw(st.integers(0, 7))
    if how == 0:
        text = text[:draw(st.integers(0, len(text)))]
    elif how == 1:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=8)) + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    if how == 2:
        data = draw(st.binary(max_size=64))
    return data


# --------------------------------------------------------------------------- .npz data

@st.composite
def npz_arrays(draw):
    """The four arrays of a small dataset, then maybe mutated (dtype, shape, values, keys)."""
    n_tr, n_te = draw(st.integers(1, 40)), draw(st.integers(0, 12))
    per = draw(st.sampled_from([(64,), (8, 8), (1, 8, 8), (8, 8, 1), (12,), (3, 4)]))
    classes = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = {"x_train": rng.normal(size=(n_tr,) + per), "y_train": rng.integers(0, classes, n_tr),
              "x_test": rng.normal(size=(n_te,) + per), "y_test": rng.integers(0, classes, n_te)}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(arrays)))
        arrays[key] = draw(_mutated(arrays[key]))
    if draw(st.integers(0, 9)) == 0:
        arrays.pop(draw(st.sampled_from(sorted(arrays))))
    return arrays


MUTATIONS = (
    lambda a: a.astype(np.float32), lambda a: a.astype(np.int8), lambda a: a.astype(bool),
    lambda a: a.astype(np.uint64), lambda a: a.reshape(-1), lambda a: a[:0], lambda a: a[: max(len(a) - 1, 0)],
    lambda a: np.full(a.shape, np.nan), lambda a: np.full(a.shape, np.inf), lambda a: a * 1e300,
    lambda a: a.astype(str), lambda a: a.astype(np.int64) + 250, lambda a: a.astype(np.int64) - 5,
    lambda a: a.astype(complex), lambda a: np.zeros((0,)), lambda a: np.array(3.0), lambda a: a.astype(np.float16),
    lambda a: a.astype(np.int64) * 2**40, lambda a: np.swapaxes(a[..., None], 0, -1))


def _mutated(a):
    def apply(f):
        with np.errstate(all="ignore"):
            return f(a)
    return st.sampled_from(MUTATIONS).map(apply)


# --------------------------------------------------------------------------- checkpoints

@st.composite
def checkpoint_mutations(draw):
    """How to damage a copy of a real checkpoint: bytes, arrays or metadata."""
    return draw(st.lists(st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.floats(0, 1)),
        st.tuples(st.just("drop"), st.sampled_from(["meta_json", "graph_json", "param/dense1/W", "param/dense5/B",
                                                    "modules_json", "trainer/saturation/dense1/W"])),
        st.tuples(st.just("reshape"), st.sampled_from(["param/dense1/W", "param/dense3/B"])),
        st.tuples(st.just("meta"), st.sampled_from(["progress", "formats", "numerics", "train", "seed", "run",
                                                    "layer_numerics", "format", "plan"]), _wrong_value()),
        st.tuples(st.just("meta_sub"), st.sampled_from(["progress.epoch", "progress.batch", "progress.step",
                                                        "progress.history", "train.batch_size", "train.algo",
                                                        "numerics.weight_bits", "formats.dense1",
                                                        "run.settings", "progress.partial"]), _wrong_value()),
        st.tuples(st.just("graph"), st.sampled_from(["nodes", "input_shape", "output_name", "meta"]), _wrong_value()),
        st.tuples(st.just("meta_del"), st.sampled_from(["train.algo", "train.batch_size", "progress.epoch",
                                                        "progress.history", "formats.input", "formats.dense1",
                                                        "numerics.weight_bits", "run.settings", "run.data", "seed",
                                                        "plan", "progress.step", "run.settings.train"])),
    ), min_size=1, max_size=2))


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
