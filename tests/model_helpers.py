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


def grows_back_while_training(model, layer, x, y, steps: int = 10, batch: int = 4, lr_shift: int = 7) -> None:
    """``steps`` BP steps on (x, y): bit-exact with hdl_models (on a copy), then in the engine;
    ``layer``'s managed output format, set too narrow by the caller, has moved and grown."""
    from edgedfa.api import make_trainer
    from edgedfa.cosim import emulate
    from edgedfa.train import TrainConfig
    from hdl_models.hwconfig import HwConfig

    narrow = layer.out_fmt
    cfg = TrainConfig(batch_size=batch, algo="bp")
    r = emulate(model, x, y, steps, HwConfig(rows=4, cols=4), train_cfg=cfg)  # trains a copy
    assert r["bit_exact"], r["first_mismatch"]
    trainer = make_trainer(model, cfg)
    for step in range(steps):
        trainer.step(model.quantize_input(x[batch * step:batch * (step + 1)]), y[batch * step:batch * (step + 1)],
                     step, lr_shift)
    assert int(layer.state.get("moves:out", 0)) > 0 and layer.out_fmt.int_bits > narrow.int_bits
