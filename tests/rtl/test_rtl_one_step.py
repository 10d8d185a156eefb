"""One training step end to end: `emulate` runs a small MLP's step through hdl_models (bit-exact
with the engine), and every requantization, narrowing, GEMM, sparse projection and update of
that step is replayed through the RTL units, bit for bit and cycle by cycle."""

from __future__ import annotations

import numpy as np
import pytest

from edgedfa import arch
from edgedfa.layers.base import Numerics
from edgedfa.model import IntModel
from edgedfa.train import TrainConfig
from hdl_models.hwconfig import HwConfig
from replay import emulate, recording, replay

pytestmark = pytest.mark.rtl


def one_step(seed: int, num: dict, cfg: dict) -> dict:
    model = IntModel(arch.mlp(seed, 12, (10,), 5), Numerics.from_bits(8, **num), seed)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0.0, 1.0, (32, 12)), rng.integers(0, 5, 32)
    model.calibrate(x)
    with recording() as calls:
        report = emulate(model, x, y, 1, HwConfig(rows=4, cols=4), train_cfg=TrainConfig(batch_size=8, **cfg))
    assert report["bit_exact"], report["first_mismatch"]
    return calls


@pytest.mark.parametrize("num, cfg", [  # the RTL update unit implements the SGD rule (§12)
    (dict(update_rule="sgd"), dict(algo="sdfa", feedback_sparsity=2, feedback_values="binary", lr_shift=2)),
    (dict(momentum_shift=3, update_norm_bits=4),
     dict(algo="sdfa", feedback_sparsity=3, feedback_values="uniform", feedback_regenerate=False, lr_shift=2)),
], ids=["sdfa-binary-regenerated", "sdfa-uniform-stored-momentum-normalized"])
def test_one_step_replayed_through_rtl(units, num, cfg):
    calls = one_step(3, num, cfg)
    # the step took the paths asked for: stored or regenerated feedback, momentum, normalized shift
    assert all((c["stored"] is None) == cfg.get("feedback_regenerate", True) for c in calls["project"])
    assert all(c["momentum_shift"] == num.get("momentum_shift") and c["norm_bits"] == num.get("update_norm_bits")
               for c in calls["update"])
    done = {kind: n for kind, n, _ in replay(units, calls)}
    # every kind of work the step does went through its RTL unit
    assert set(done) == {"requant", "narrow", "gemm", "project", "update"}, done
    assert done["update"] == 4 and done["project"] == 1
