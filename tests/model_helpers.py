"""A graph made into an integer model and calibrated on seeded normal samples (the layer
tests' common start)."""

from __future__ import annotations

import numpy as np

from edgedfa.model import IntModel
from edgedfa.numerics import Numerics


def calibrated(graph, bits: int, seed: int, scale: float = 1.0, **num) -> IntModel:
    """IntModel at ``bits`` (``num`` overrides), calibrated on 32 samples of N(0, scale)."""
    model = IntModel(graph, Numerics.from_bits(bits, **num), seed)
    model.calibrate(np.random.default_rng(seed + 1).normal(0, scale, (32,) + tuple(graph.input_shape)))
    return model


def emulates_bit_exact(model, x, y, algo: str, steps: int = 2, batch: int = 4) -> dict:
    """``steps`` training steps of ``algo`` through hdl_models on a 4x4 array, asserted
    bit-exact with the engine; the emulation report."""
    from edgedfa.cosim import emulate
    from edgedfa.train import TrainConfig
    from hdl_models.hwconfig import HwConfig

    r = emulate(model, x, y, steps, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=batch, algo=algo))
    assert r["bit_exact"], r["first_mismatch"]
    return r
