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
