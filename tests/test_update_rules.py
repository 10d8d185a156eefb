"""Update rules (datapath §12): normalized updates in the engine and in hdl_models."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedfa import arch, data
from edgedfa.api import make_trainer
from edgedfa.fixed import FixedFormat
from edgedfa.fixed import QTensor
from edgedfa.numerics import Numerics
from edgedfa.update import update_shift
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from edgedfa.cosim import emulate
from hdl_models.hwconfig import HwConfig


def test_normalized_shift_uses_the_gradient_block_exponent():
    num = Numerics.from_bits(8, update_norm_bits=2)
    p = QTensor(np.zeros(3, dtype=np.int64), FixedFormat(8, 1))
    g = QTensor(np.array([5, -300, 17]), FixedFormat(32, 3))
    assert update_shift(p, g, 9, num, lr_base=9) == (300).bit_length() - 2
    assert update_shift(p, g, 11, num, lr_base=9) == (300).bit_length() - 2 + 2  # two decays
    plain = Numerics.from_bits(8)
    assert update_shift(p, g, 9, plain) == g.fmt.frac_bits - p.fmt.frac_bits + 9


def test_normalized_update_bounds_the_step():
    ds = data.digits()
    model = IntModel(arch.mlp(0, 64, (32,), 10), Numerics.from_bits(8, update_norm_bits=2), 0)
    model.calibrate(ds.x_train[:256])
    before = {n: l.params["W"].codes.copy() for n, l in zip([n.name for n in model.graph.nodes], model.layers)
              if l.trainable}
    tr = make_trainer(model, TrainConfig(algo="bp"))
    tr.step(model.quantize_input(ds.x_train[:32]), ds.y_train[:32], 0, tr.cfg.shift_at(0))
    for name, w0 in before.items():
        step = np.abs(model.layer(name).params["W"].codes - w0)
        assert 0 < step.max() <= 4  # largest update: 2 bits before stochastic rounding


@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), bits=st.integers(6, 12), m=st.integers(1, 4),
       algo=st.sampled_from(["bp", "dfa", "sdfa"]))
def test_normalized_update_bit_exact_with_hdl(seed, bits, m, algo):
    model = IntModel(arch.mlp(seed, 6, (8,), 3), Numerics.from_bits(bits, update_norm_bits=m), seed)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 1, (48, 6)), rng.integers(0, 3, 48)
    model.calibrate(x)
    report = emulate(model, x, y, 2, HwConfig(rows=4, cols=8), train_cfg=TrainConfig(algo=algo, batch_size=16))
    assert report["bit_exact"], report.get("first_mismatch")


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_normalized_update_bit_exact_recurrent(kind):
    model = IntModel(arch.recurrent(kind, 1, seq=4, n_in=3, hidden=6, n_classes=3),
                     Numerics.from_bits(8, update_norm_bits=2, weight_int_bits=1), 1)
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (32, 4, 3)), rng.integers(0, 3, 32)
    model.calibrate(x)
    report = emulate(model, x, y, 2, HwConfig(rows=4, cols=8), train_cfg=TrainConfig(algo="bp", batch_size=16))
    assert report["bit_exact"], report.get("first_mismatch")


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), m=st.integers(1, 4), norm=st.sampled_from([None, 2]),
       algo=st.sampled_from(["bp", "sdfa"]))
def test_momentum_bit_exact_with_hdl(seed, m, norm, algo):
    model = IntModel(arch.mlp(seed, 6, (8,), 3), Numerics.from_bits(8, momentum_shift=m, update_norm_bits=norm), seed)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0, 1, (64, 6)), rng.integers(0, 3, 64)
    model.calibrate(x)
    report = emulate(model, x, y, 3, HwConfig(rows=4, cols=8), train_cfg=TrainConfig(algo=algo, batch_size=16))
    assert report["bit_exact"], report.get("first_mismatch")
