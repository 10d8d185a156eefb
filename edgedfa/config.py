"""--config FILE.toml: numerics, per-layer overrides, training, modules, hardware.

```toml
[numerics]            # every Numerics field, plus bits = N (the --bits default)
bits = 8
acc_bits = 32
update_rounding = "STOCHASTIC"

[layers.dense1]       # per-layer overrides of [numerics]
weight_bits = 12

[train]               # TrainConfig fields: algo, epochs, batch_size, lr_shift, ...
lr_shift = 4

[[modules]]           # optional explicit credit-assignment plan (docs/algorithms.md)
nodes = ["dense1", "relu2"]
source = "dfa"
feedback = { kind = "sparse", k = 1, values = "binary" }

[hardware]            # read by `edgedfa emulate`
array = "16x16"
clock_mhz = 200
```
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from .errors import EdgeDFAError
from .numerics import Numerics
from .train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("numerics", "layers", "train", "modules", "hardware")

# Defaults per architecture, measured in docs/benchmarks.md.
ARCH_DEFAULTS = {
    "mlp": {"epochs": 30, "lr_shift": 4, "lr_decay_epochs": [21]},
    "cnn": {"epochs": 40, "lr_shift": 5, "lr_decay_epochs": [28]},
    "rnn": {"epochs": 30, "lr_shift": 4, "lr_decay_epochs": [20]},
    "gru": {"epochs": 30, "lr_shift": 4, "lr_decay_epochs": [20]},
    "lstm": {"epochs": 30, "lr_shift": 4, "lr_decay_epochs": [20]},
    "model": {"epochs": 20, "lr_shift": 5, "lr_decay_epochs": []},
}


# Numerics defaults per architecture (overridden by [numerics] and --bits): conv nets and
# recurrent nets need more weight range than their initial values show, and BPTT's small
# gradients need normalized updates (datapath §12; measured in benchmarks.md).
ARCH_NUMERICS = {
    "cnn": {"weight_headroom": 2, "momentum_shift": 3},  # momentum 7/8: lr_shift 5 (4 collapses DFA)
    "rnn": {"weight_int_bits": 1, "update_norm_bits": 2},
    "gru": {"weight_int_bits": 1, "update_norm_bits": 2},
    "lstm": {"weight_int_bits": 1, "update_norm_bits": 2, "momentum_shift": 3},  # momentum: LSTM only
}


def load_config(path: str) -> dict:
    """Parse and check the top-level structure of a config file."""
    try:
        with open(path, "rb") as fh:
            cfg = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise EdgeDFAError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeDFAError(f"{path}: not valid TOML ({exc})") from exc
    bad = [k for k in cfg if k not in SECTIONS]
    if bad:
        raise EdgeDFAError(f"{path}: unknown section(s) {bad}; expected {', '.join(SECTIONS)}")
    cfg["_path"] = path
    return cfg


@dataclass
class RunSettings:
    numerics: Numerics
    layer_numerics: dict
    train: TrainConfig
    modules: list | None
    hardware: dict


def resolve_run(cfg: dict | None, args) -> RunSettings:
    """Merge built-in defaults < config file < command-line flags."""
    cfg = cfg or {}
    where = cfg.get("_path", "config")
    arch = "model" if getattr(args, "model", None) else (getattr(args, "arch", None) or "mlp")
    num_table = {**ARCH_NUMERICS.get(arch, {}), **cfg.get("numerics", {})}
    bits = args.bits if getattr(args, "bits", None) is not None else num_table.pop("bits", 8)
    num_table.pop("bits", None)
    numerics = Numerics.from_bits(bits).with_overrides(num_table, f"{where} [numerics]")
    layers = cfg.get("layers", {})
    if not isinstance(layers, dict) or any(not isinstance(v, dict) for v in layers.values()):
        raise EdgeDFAError(f"{where}: [layers] must hold one table per layer name")
    from .model import LAYER_OPTIONS

    for name, table in layers.items():  # validate keys now, layer names once the model exists
        numerics.with_overrides({k: v for k, v in table.items() if k not in LAYER_OPTIONS},
                                f"{where} [layers.{name}]")
    train_kw = dict(ARCH_DEFAULTS.get(arch, {}))
    names = {f.name for f in fields(TrainConfig)}
    for k, v in cfg.get("train", {}).items():
        if k not in names:
            raise EdgeDFAError(f"{where} [train]: unknown key {k!r}; expected one of {', '.join(sorted(names))}")
        train_kw[k] = v
    flags = {"algo": "algo", "epochs": "epochs", "batch_size": "batch_size", "seed": "seed",
             "feedback_sparsity": "feedback_sparsity", "lr_shift": "lr_shift", "feedback_values": "feedback_values",
             "feedback_kind": "feedback_kind"}
    for attr, key in flags.items():
        v = getattr(args, attr, None)
        if v is not None:
            train_kw[key] = v
    if getattr(args, "stored_feedback", False):
        train_kw["feedback_regenerate"] = False
    tc = TrainConfig(**train_kw)
    _check_train(tc, where)
    modules = cfg.get("modules")
    if modules is not None and not isinstance(modules, list):
        raise EdgeDFAError(f"{where}: [[modules]] must be an array of tables")
    return RunSettings(numerics, layers, tc, modules, dict(cfg.get("hardware", {})))


def _check_train(tc: TrainConfig, where: str) -> None:
    for key, lo in (("epochs", 0), ("batch_size", 1), ("feedback_sparsity", 1)):
        v = getattr(tc, key)
        if not isinstance(v, int) or v < lo:
            raise EdgeDFAError(f"{key} = {v!r}: must be an integer >= {lo}")
    if not isinstance(tc.lr_shift, int) or not 0 <= tc.lr_shift <= 30:
        raise EdgeDFAError(f"lr_shift = {tc.lr_shift!r}: must be an integer in 0..30")
    if not isinstance(tc.seed, int) or tc.seed < 0:
        raise EdgeDFAError(f"seed = {tc.seed!r}: must be a non-negative integer")
